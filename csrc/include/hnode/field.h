// Field evaluation from a FieldSpec (hnode_fast/fields/spec.py) and its vector-Jacobian
// product. Header-only, host + device, templated on the scalar type.
//
// Layout of the activation buffer ``acts`` written by eval_field (size acts_size()):
//   [h0 (n_in)] then per layer l [pre_l (n_out_l)] [post_l (n_out_l)], then [flux (n_terms)],
//   each of the first blocks padded to a multiple of 4 values (act_pad).
// vjp_field reads it back (so a VJP needs the eval of the same point first) and uses a
// scratch ``gbuf`` of 2 * max_width values.
//
// Dense weights are read through ``paramsT``: a copy of ``params`` in which every dense
// weight block (n_out, n_in) row-major is stored transposed (n_in, n_out), so the forward
// matvec is a sequence of axpys over contiguous memory (vectorisable without reassociation;
// per output unit the sum runs over inputs in order, as a row dot would).
#pragma once

#include <math.h>
#include <string.h>

#include "hnode/macros.h"

HNODE_NAMESPACE_BEGIN

namespace fm {
HNODE_HD_INLINE double tanh_(double x) { return ::tanh(x); }
HNODE_HD_INLINE float tanh_(float x) { return ::tanhf(x); }
HNODE_HD_INLINE double exp_(double x) { return ::exp(x); }
HNODE_HD_INLINE float exp_(float x) { return ::expf(x); }
HNODE_HD_INLINE double expm1_(double x) { return ::expm1(x); }
HNODE_HD_INLINE float expm1_(float x) { return ::expm1f(x); }
HNODE_HD_INLINE double log_(double x) { return ::log(x); }
HNODE_HD_INLINE float log_(float x) { return ::logf(x); }
HNODE_HD_INLINE double log1p_(double x) { return ::log1p(x); }
HNODE_HD_INLINE float log1p_(float x) { return ::log1pf(x); }
HNODE_HD_INLINE double sqrt_(double x) { return ::sqrt(x); }
HNODE_HD_INLINE float sqrt_(float x) { return ::sqrtf(x); }
HNODE_HD_INLINE double abs_(double x) { return ::fabs(x); }
HNODE_HD_INLINE float abs_(float x) { return ::fabsf(x); }
// NaN-propagating max / min (torch.maximum / torch.minimum semantics)
template <class T>
HNODE_HD_INLINE T maxn(T a, T b) { return (a > b || a != a) ? a : b; }
template <class T>
HNODE_HD_INLINE T minn(T a, T b) { return (a < b || a != a) ? a : b; }
template <class T>
HNODE_HD_INLINE bool isfin(T x) { return x - x == x - x; }  // false for inf and NaN
}  // namespace fm

// tanh without a library call, branch-free so loops over units vectorise:
// tanh|x| = m / (m + 2) with m = e^(2|x|) - 1 computed without cancellation as
// (2^k - 1) + 2^k * r * q(r), where 2|x| = k ln2 + r (Cody-Waite, |r| <= ln2/2), the 2^k scale is
// built in the exponent bits, and q(r) = (e^r - 1)/r is its degree-12 Taylor polynomial evaluated
// by Estrin's scheme (short dependency chains). Max error 4.5 ulp over [-20, 20] and tiny |x|
// (libm: ~2 ulp), exact 0 at 0, +-1 beyond |x| = 20, NaN in -> NaN out.
HNODE_HD_INLINE double tanh_fast(double x) {
  const double ax = fm::abs_(x);
  double y = 2.0 * ax;
  y = y > 40.0 ? 40.0 : y;
  const double shifter = 6755399441055744.0;  // 1.5 * 2^52
  double kd = y * 1.4426950408889634 + shifter;
  unsigned long long kb;
  memcpy(&kb, &kd, 8);
  kd -= shifter;
  const double r = (y - kd * 0.6931471803691238) - kd * 1.9082149292705877e-10;
  const double r2 = r * r, r4 = r2 * r2, r8 = r4 * r4;
  const double a0 = 1.0 + r * (1.0 / 2.0);
  const double a1 = 1.0 / 6.0 + r * (1.0 / 24.0);
  const double a2 = 1.0 / 120.0 + r * (1.0 / 720.0);
  const double a3 = 1.0 / 5040.0 + r * (1.0 / 40320.0);
  const double a4 = 1.0 / 362880.0 + r * (1.0 / 3628800.0);
  const double a5 = 1.0 / 39916800.0 + r * (1.0 / 479001600.0);
  const double a6 = 1.0 / 6227020800.0;
  const double b0 = a0 + r2 * a1, b1 = a2 + r2 * a3, b2 = a4 + r2 * a5;
  const double q = (b0 + r4 * b1) + r8 * (b2 + r4 * a6);
  const unsigned long long sb = (kb + 1023ULL) << 52;
  double sc;
  memcpy(&sc, &sb, 8);
  const double m = (sc - 1.0) + sc * (r * q);
  const double t = m / (m + 2.0);
  return x < 0.0 ? -t : t;
}
// float: the same algorithm in single precision (no double arithmetic, which is 2-64x slower
// than float on GPUs): 2|x| clamped to 20 (tanh rounds to 1 beyond |x| = 9.02), Cody-Waite
// with Cephes' ln2 split (k * hi exact), q(r) to degree 7 (truncation < 2^-25 for |r| <= ln2/2).
// Max error ~3 ulp (float) over the whole range, exact 0 at 0, NaN in -> NaN out.
HNODE_HD_INLINE float tanh_fast(float x) {
  const float ax = fm::abs_(x);
  float y = 2.0f * ax;
  y = y > 20.0f ? 20.0f : y;
  const float shifter = 12582912.0f;  // 1.5 * 2^23
  float kf = y * 1.44269504f + shifter;
  unsigned int kb;
  memcpy(&kb, &kf, 4);
  kf -= shifter;
  const float r = (y - kf * 0.693359375f) + kf * 2.12194440e-4f;
  const float r2 = r * r, r4 = r2 * r2;
  const float a0 = 1.0f + r * 0.5f;
  const float a1 = 1.66666672e-1f + r * 4.16666679e-2f;
  const float a2 = 8.33333377e-3f + r * 1.38888892e-3f;
  const float a3 = 1.98412701e-4f + r * 2.48015876e-5f;
  const float q = (a0 + r2 * a1) + r4 * (a2 + r2 * a3);
  const unsigned int sb = (kb + 127u) << 23;
  float sc;
  memcpy(&sc, &sb, 4);
  const float m = (sc - 1.0f) + sc * (r * q);
  const float t = m / (m + 2.0f);
  return x < 0.0f ? -t : t;
}

// HNODE_GPU_LOOPS: the loop forms used on the GPU (one thread per trajectory, values in local
// memory): the dense forward matvec register-blocked over output units (see dense_forward).
// On by default in nvcc's device pass; the CPU build "gpuloops" (csrc/cpu/kernels_gpuloops.cpp)
// turns it on for the host so the CPU tests run this code too (bitwise equal to the host form:
// per output unit the sum runs over the inputs in the same order).
#if defined(__CUDA_ARCH__) && !defined(HNODE_GPU_LOOPS)
#define HNODE_GPU_LOOPS 1
#endif
#ifndef HNODE_GPU_LOOPS
#define HNODE_GPU_LOOPS 0
#endif

// A parameter-gradient vector with its entries ``s`` apart: the GPU adjoint keeps one partial
// gradient per thread, interleaved (entry i of thread t at p[i * n_thr + t]) so a warp's
// updates of one entry are one coalesced access. ``T*`` is the contiguous case.
template <class T>
struct StridedGrad {
  T* p;
  long long s;
  HNODE_HD_INLINE T& operator[](long long i) const { return p[i * s]; }
  HNODE_HD_INLINE StridedGrad operator+(long long o) const { return StridedGrad{p + o * s, s}; }
};

enum { SPEC_HEADER = 12, SPEC_LAYER_COLS = 8, SPEC_TERM_COLS = 6 };
// FieldSpec header fields (hnode_fast/fields/spec.py writes them; tests/test_types.py checks the
// two lists agree)
enum {
  HDR_VERSION = 0,
  HDR_D = 1,
  HDR_K = 2,
  HDR_NFEAT = 3,
  HDR_L = 4,
  HDR_NTERMS = 5,
  HDR_CONST_OFF = 6,
  HDR_NIN = 7,
  HDR_NOUT = 8,
  HDR_MAXW = 9,
  HDR_P = 10
};
// columns of a layer row
enum { LCOL_NIN = 0, LCOL_NOUT = 1, LCOL_FMT = 2, LCOL_WOFF = 3, LCOL_BOFF = 4, LCOL_ACT = 5, LCOL_RP = 6, LCOL_COL = 7 };
enum { ACT_IDENTITY = 0, ACT_TANH = 1, ACT_RELU = 2, ACT_ELU = 3, ACT_SOFTPLUS = 4, ACT_SILU = 5, ACT_SIGMOID = 6 };
enum { TERM_CONSTANT = 0, TERM_LINEAR = 1, TERM_MASS_ACTION = 2, TERM_MM = 3, TERM_HILL = 4, TERM_INPUT = 5 };
enum { TFLAG_CONSUME = 1, TFLAG_REPRESS = 2 };

template <class T>
struct FieldView {
  const int* ints = nullptr;
  const T* params = nullptr;   // (P,) as compiled
  const T* paramsT = nullptr;  // params with dense weight blocks transposed
  int D = 0, K = 0, n_feat = 0, L = 0, n_terms = 0, const_off = 0, n_in = 0, n_out = 0, max_width = 0, P = 0;
  const int* layers = nullptr;
  const int* terms = nullptr;
  const int* in_idx = nullptr;
  const int* out_idx = nullptr;
};

template <class T>
HNODE_HD inline FieldView<T> make_field_view(const int* ints, const T* params, const T* paramsT) {
  FieldView<T> v;
  v.ints = ints;
  v.params = params;
  v.paramsT = paramsT;
  v.D = ints[HDR_D];
  v.K = ints[HDR_K];
  v.n_feat = ints[HDR_NFEAT];
  v.L = ints[HDR_L];
  v.n_terms = ints[HDR_NTERMS];
  v.const_off = ints[HDR_CONST_OFF];
  v.n_in = ints[HDR_NIN];
  v.n_out = ints[HDR_NOUT];
  v.max_width = ints[HDR_MAXW];
  v.P = ints[HDR_P];
  v.layers = ints + SPEC_HEADER;
  v.terms = v.layers + SPEC_LAYER_COLS * v.L;
  v.in_idx = v.terms + SPEC_TERM_COLS * v.n_terms;
  v.out_idx = v.in_idx + v.n_in;
  return v;
}

// Size of the activation buffer (see the top of the file).
// Blocks of the activation buffer are padded to multiples of 4 so the activation loop runs
// whole vectors (the padding lanes hold zeros and are never read back).
HNODE_HD_INLINE int act_pad(int n) { return (n + 3) & ~3; }

HNODE_HD inline int acts_size(const int* ints) {
  const int L = ints[HDR_L];
  int n = act_pad(ints[HDR_NIN]) + ints[HDR_NTERMS];
  for (int l = 0; l < L; ++l) n += 2 * act_pad(ints[SPEC_HEADER + SPEC_LAYER_COLS * l + LCOL_NOUT]);
  return n > 0 ? n : 1;
}

HNODE_HD inline int grad_scratch_size(const int* ints) { return 2 * (ints[HDR_MAXW] > 0 ? ints[HDR_MAXW] : 1); }

template <class T>
HNODE_HD_INLINE T activate(int code, T x) {
  switch (code) {
    case ACT_TANH: return tanh_fast(x);
    case ACT_RELU: return x > T(0) ? x : T(0);
    case ACT_ELU: return x > T(0) ? x : fm::expm1_(x);
    case ACT_SOFTPLUS: return x > T(20) ? x : fm::log1p_(fm::exp_(x));
    case ACT_SILU: return x / (T(1) + fm::exp_(-x));
    case ACT_SIGMOID: return T(1) / (T(1) + fm::exp_(-x));
    default: return x;
  }
}

// d act / d pre, given pre and post
template <class T>
HNODE_HD_INLINE T activate_grad(int code, T pre, T post) {
  switch (code) {
    case ACT_TANH: return T(1) - post * post;
    case ACT_RELU: return pre > T(0) ? T(1) : T(0);
    case ACT_ELU: return pre > T(0) ? T(1) : fm::exp_(pre);
    case ACT_SOFTPLUS: {
      if (pre > T(20)) return T(1);
      T z = fm::exp_(pre);
      return z / (z + T(1));
    }
    case ACT_SILU: {
      T s = T(1) / (T(1) + fm::exp_(-pre));
      return s * (T(1) + pre * (T(1) - s));
    }
    case ACT_SIGMOID: return post * (T(1) - post);
    default: return T(1);
  }
}

template <class T>
HNODE_HD_INLINE T term_flux(int kind, int flags, const T* p, T za, T zb, T uk) {
  switch (kind) {
    case TERM_CONSTANT: return p[0];
    case TERM_LINEAR: return p[0] * za;
    case TERM_MASS_ACTION: return p[0] * za * zb;
    case TERM_MM: return p[0] * za / (p[1] + za);
    case TERM_HILL: {
      T x = za > T(0) ? za : T(0);
      T r = x > T(0) ? fm::exp_(p[2] * fm::log_(x / p[1])) : T(0);
      if (flags & TFLAG_REPRESS) return p[0] / (T(1) + r);
      return p[0] * r / (T(1) + r);
    }
    case TERM_INPUT: return p[0] * uk;
    default: return T(0);
  }
}

// Four consecutive values from a 16-byte aligned address: one 128-bit load on the GPU
// (float4, or two double2), a plain copy on the host (the gpuloops CPU build runs this path).
HNODE_HD_INLINE void load4(const float* HNODE_RESTRICT p, float* HNODE_RESTRICT o) {
#if defined(__CUDA_ARCH__)
  const float4 q = *reinterpret_cast<const float4*>(p);
  o[0] = q.x, o[1] = q.y, o[2] = q.z, o[3] = q.w;
#else
  memcpy(o, p, 4 * sizeof(float));
#endif
}
HNODE_HD_INLINE void load4(const double* HNODE_RESTRICT p, double* HNODE_RESTRICT o) {
#if defined(__CUDA_ARCH__)
  const double2 q0 = reinterpret_cast<const double2*>(p)[0], q1 = reinterpret_cast<const double2*>(p)[1];
  o[0] = q0.x, o[1] = q0.y, o[2] = q1.x, o[3] = q1.y;
#else
  memcpy(o, p, 4 * sizeof(double));
#endif
}

// pre[i0 .. i0+NB) = W[i, :] . hin + bias for one block of NB output units, the NB sums held
// in registers across the whole input loop: per input j one load of hin[j] and the NB weights
// of the transposed row WT[j] (as NB/4 vector loads when the rows are 16-byte aligned), instead
// of a load and a store of pre[i] per four multiply-adds. Same arithmetic either way.
template <class T, int NB>
HNODE_HD_INLINE void dense_block(const T* HNODE_RESTRICT WT, const T* HNODE_RESTRICT hin,
                                 const T* HNODE_RESTRICT bias, int nin, int nout, int i0, T* HNODE_RESTRICT pre) {
  T acc[NB];
#pragma unroll
  for (int b = 0; b < NB; ++b) acc[b] = T(0);
  const T* HNODE_RESTRICT w = WT + i0;
  const bool vec = NB % 4 == 0 && (nout & 3) == 0 && (reinterpret_cast<unsigned long long>(w) & 15) == 0;
  if (vec) {
#pragma unroll 2
    for (int j = 0; j < nin; ++j, w += nout) {
      const T h = hin[j];
      T wv[NB];
#pragma unroll
      for (int b = 0; b < NB; b += 4) load4(w + b, wv + b);
#pragma unroll
      for (int b = 0; b < NB; ++b) acc[b] += wv[b] * h;
    }
  } else {
#pragma unroll 2
    for (int j = 0; j < nin; ++j, w += nout) {
      const T h = hin[j];
#pragma unroll
      for (int b = 0; b < NB; ++b) acc[b] += w[b] * h;
    }
  }
#pragma unroll
  for (int b = 0; b < NB; ++b) pre[i0 + b] = acc[b] + bias[i0 + b];
}

// Dense layer pre-activation, the GPU loop form: blocks of 8, then 4, then single output units.
// Per unit: 0, then + W[i, j] h[j] for j in order, then + bias[i] -- the host form's order.
template <class T>
HNODE_HD_INLINE void dense_forward_blocked(const T* HNODE_RESTRICT WT, const T* HNODE_RESTRICT hin,
                                           const T* HNODE_RESTRICT bias, int nin, int nout, T* HNODE_RESTRICT pre) {
  int i = 0;
  for (; i + 8 <= nout; i += 8) dense_block<T, 8>(WT, hin, bias, nin, nout, i, pre);
  for (; i + 4 <= nout; i += 4) dense_block<T, 4>(WT, hin, bias, nin, nout, i, pre);
  for (; i < nout; ++i) dense_block<T, 1>(WT, hin, bias, nin, nout, i, pre);
}

template <class T>
HNODE_HD void eval_terms(const FieldView<T>& v, const T* HNODE_RESTRICT z, const T* HNODE_RESTRICT u,
                         T* HNODE_RESTRICT dz, T* HNODE_RESTRICT flux);

// dz = f(z, u). ``u`` may be null when K == 0. ``acts`` of acts_size() values.
template <class T>
HNODE_HD void eval_field(const FieldView<T>& v, const T* HNODE_RESTRICT z, const T* HNODE_RESTRICT u,
                         T* HNODE_RESTRICT dz, T* HNODE_RESTRICT acts) {
  const int D = v.D;
  const T* cst = v.params + v.const_off;
  for (int d = 0; d < D; ++d) dz[d] = cst[d];
  T* p = acts;
  if (v.L > 0) {
    T* h0 = p;
    for (int k = 0; k < v.n_in; ++k) {
      const int idx = v.in_idx[k];
      h0[k] = idx < D ? z[idx] : u[idx - D];
    }
    const T* hin = h0;
    p += act_pad(v.n_in);
    for (int l = 0; l < v.L; ++l) {
      const int* row = v.layers + SPEC_LAYER_COLS * l;
      const int nin = row[LCOL_NIN], nout = row[LCOL_NOUT], fmt = row[LCOL_FMT], w_off = row[LCOL_WOFF], b_off = row[LCOL_BOFF],
              act = row[LCOL_ACT];
      const int npad = act_pad(nout);
      T* HNODE_RESTRICT pre = p;
      T* HNODE_RESTRICT post = p + npad;
      const T* HNODE_RESTRICT bias = v.params + b_off;
      if (fmt == 0 && HNODE_GPU_LOOPS) {
        dense_forward_blocked<T>(v.paramsT + w_off, hin, bias, nin, nout, pre);
      } else if (fmt == 0) {
        const T* HNODE_RESTRICT WT = v.paramsT + w_off;
        for (int i = 0; i < nout; ++i) pre[i] = T(0);
        int j = 0;
        // four inputs per pass; per unit the additions still run over j in order
        for (; j + 4 <= nin; j += 4) {
          const T h0 = hin[j], h1 = hin[j + 1], h2 = hin[j + 2], h3 = hin[j + 3];
          const T* HNODE_RESTRICT w0 = WT + (long)j * nout;
          const T* HNODE_RESTRICT w1 = w0 + nout;
          const T* HNODE_RESTRICT w2 = w1 + nout;
          const T* HNODE_RESTRICT w3 = w2 + nout;
          for (int i = 0; i < nout; ++i) {
            T acc = pre[i];
            acc += w0[i] * h0;
            acc += w1[i] * h1;
            acc += w2[i] * h2;
            acc += w3[i] * h3;
            pre[i] = acc;
          }
        }
        for (; j < nin; ++j) {
          const T hj = hin[j];
          const T* HNODE_RESTRICT w = WT + (long)j * nout;
          for (int i = 0; i < nout; ++i) pre[i] += w[i] * hj;
        }
        for (int i = 0; i < nout; ++i) pre[i] += bias[i];
      } else {
        const int* rp = v.ints + row[LCOL_RP];
        const int* col = v.ints + row[LCOL_COL];
        const T* vals = v.params + w_off;
        for (int i = 0; i < nout; ++i) {
          T acc = T(0);
          for (int k = rp[i]; k < rp[i + 1]; ++k) acc += vals[k] * hin[col[k]];
          pre[i] = acc + bias[i];
        }
      }
      for (int i = nout; i < npad; ++i) pre[i] = T(0);
      if (act == ACT_IDENTITY) {
        for (int i = 0; i < nout; ++i) post[i] = pre[i];
      } else if (act == ACT_TANH) {
        for (int i = 0; i < npad; ++i) post[i] = tanh_fast(pre[i]);
      } else {
        for (int i = 0; i < nout; ++i) post[i] = activate<T>(act, pre[i]);
      }
      hin = post;
      p += 2 * npad;
    }
    for (int i = 0; i < v.n_out; ++i) dz[v.out_idx[i]] += hin[i];
  }
  if (v.n_terms > 0) eval_terms<T>(v, z, u, dz, p);
}

// The mechanistic terms' fluxes into flux (n_terms) and their sums into dz (after the rest).
template <class T>
HNODE_HD void eval_terms(const FieldView<T>& v, const T* HNODE_RESTRICT z, const T* HNODE_RESTRICT u,
                         T* HNODE_RESTRICT dz, T* HNODE_RESTRICT flux) {
  for (int q = 0; q < v.n_terms; ++q) {
    const int* tr = v.terms + SPEC_TERM_COLS * q;
    const int kind = tr[0], a = tr[1], b = tr[2], dst = tr[3], flags = tr[4], p_off = tr[5];
    const T za = (a >= 0 && kind != TERM_INPUT) ? z[a] : T(0);
    const T zb = b >= 0 ? z[b] : T(0);
    const T uk = kind == TERM_INPUT ? u[a] : T(0);
    const T fl = term_flux<T>(kind, flags, v.params + p_off, za, zb, uk);
    flux[q] = fl;
    if (dst >= 0) dz[dst] += fl;
  }
  for (int q = 0; q < v.n_terms; ++q) {
    const int* tr = v.terms + SPEC_TERM_COLS * q;
    if (tr[4] & TFLAG_CONSUME) {
      if (tr[1] >= 0) dz[tr[1]] -= flux[q];
      if (tr[2] >= 0) dz[tr[2]] -= flux[q];
    }
  }
}

// ``GP`` as a local variable: ``T* restrict`` for a contiguous gradient, the type itself else.
template <class GP>
struct GradPtr {
  using type = GP;
};
template <class T>
struct GradPtr<T*> {
  using type = T* HNODE_RESTRICT;
};

// gz += J_z^T a ; gp += J_p^T a, at the point whose eval_field filled ``acts``.
// ``gp``: a ``T*`` (contiguous) or a ``StridedGrad<T>`` (the GPU adjoint's interleaved partials).
template <class T, class GP = T*>
HNODE_HD void vjp_field(const FieldView<T>& v, const T* HNODE_RESTRICT z, const T* HNODE_RESTRICT u,
                        const T* HNODE_RESTRICT acts, const T* HNODE_RESTRICT a, T* HNODE_RESTRICT gz, GP gp,
                        T* HNODE_RESTRICT gbuf) {
  using GR = typename GradPtr<GP>::type;
  const int D = v.D;
  GR gc = gp + v.const_off;
  for (int d = 0; d < D; ++d) gc[d] += a[d];
  int tot = act_pad(v.n_in);
  for (int l = 0; l < v.L; ++l) tot += 2 * act_pad(v.layers[SPEC_LAYER_COLS * l + LCOL_NOUT]);
  if (v.n_terms > 0) {
    for (int q = 0; q < v.n_terms; ++q) {
      const int* tr = v.terms + SPEC_TERM_COLS * q;
      const int kind = tr[0], ia = tr[1], ib = tr[2], dst = tr[3], flags = tr[4], p_off = tr[5];
      T gf = dst >= 0 ? a[dst] : T(0);
      if (flags & TFLAG_CONSUME) {
        if (ia >= 0) gf -= a[ia];
        if (ib >= 0) gf -= a[ib];
      }
      const T* pp = v.params + p_off;
      GR gpp = gp + p_off;
      switch (kind) {
        case TERM_CONSTANT: gpp[0] += gf; break;
        case TERM_LINEAR: {
          const T za = z[ia];
          gpp[0] += gf * za;
          gz[ia] += gf * pp[0];
          break;
        }
        case TERM_MASS_ACTION: {
          const T za = z[ia], zb = z[ib];
          gpp[0] += gf * za * zb;
          gz[ia] += gf * pp[0] * zb;
          gz[ib] += gf * pp[0] * za;
          break;
        }
        case TERM_MM: {
          const T za = z[ia];
          const T den = pp[1] + za;
          gpp[0] += gf * za / den;
          gpp[1] -= gf * pp[0] * za / (den * den);
          gz[ia] += gf * pp[0] * pp[1] / (den * den);
          break;
        }
        case TERM_HILL: {
          const T za = z[ia];
          const T x = za > T(0) ? za : T(0);
          const bool pos = x > T(0);
          const T lg = pos ? fm::log_(x / pp[1]) : T(0);
          const T r = pos ? fm::exp_(pp[2] * lg) : T(0);
          const T opr = T(1) + r;
          T dfdr;
          if (flags & TFLAG_REPRESS) {
            gpp[0] += gf / opr;
            dfdr = -pp[0] / (opr * opr);
          } else {
            gpp[0] += gf * r / opr;
            dfdr = pp[0] / (opr * opr);
          }
          if (pos) {
            const T gr = gf * dfdr;
            gpp[1] -= gr * r * pp[2] / pp[1];
            gpp[2] += gr * r * lg;
            gz[ia] += gr * r * pp[2] / x;
          }
          break;
        }
        case TERM_INPUT: gpp[0] += gf * u[ia]; break;
        default: break;
      }
    }
  }
  if (v.L <= 0) return;
  T* g = gbuf;
  T* g2 = gbuf + v.max_width;
  for (int i = 0; i < v.n_out; ++i) g[i] = a[v.out_idx[i]];
  int off = tot;  // end of the last layer's block
  for (int l = v.L - 1; l >= 0; --l) {
    const int* row = v.layers + SPEC_LAYER_COLS * l;
    const int nin = row[LCOL_NIN], nout = row[LCOL_NOUT], fmt = row[LCOL_FMT], w_off = row[LCOL_WOFF], b_off = row[LCOL_BOFF],
              act = row[LCOL_ACT];
    off -= 2 * act_pad(nout);
    const T* pre = acts + off;
    const T* post = pre + act_pad(nout);
    const T* hin = l == 0 ? acts : acts + off - act_pad(nin);
    if (act == ACT_TANH) {
      for (int i = 0; i < nout; ++i) g[i] *= T(1) - post[i] * post[i];
    } else if (act != ACT_IDENTITY) {
      for (int i = 0; i < nout; ++i) g[i] *= activate_grad<T>(act, pre[i], post[i]);
    }
    GR gb = gp + b_off;
    for (int i = 0; i < nout; ++i) gb[i] += g[i];
    for (int j = 0; j < nin; ++j) g2[j] = T(0);
    if (fmt == 0) {
      const T* HNODE_RESTRICT W = v.params + w_off;
      GR gW = gp + w_off;
      int i = 0;
      for (; i + 4 <= nout; i += 4) {
        const T gi0 = g[i], gi1 = g[i + 1], gi2 = g[i + 2], gi3 = g[i + 3];
        const T* HNODE_RESTRICT w0 = W + (long)i * nin;
        const T* HNODE_RESTRICT w1 = w0 + nin;
        const T* HNODE_RESTRICT w2 = w1 + nin;
        const T* HNODE_RESTRICT w3 = w2 + nin;
        GR gw0 = gW + (long)i * nin;
        GR gw1 = gw0 + nin;
        GR gw2 = gw1 + nin;
        GR gw3 = gw2 + nin;
        for (int j = 0; j < nin; ++j) {
          const T hj = hin[j];
          gw0[j] += gi0 * hj;
          gw1[j] += gi1 * hj;
          gw2[j] += gi2 * hj;
          gw3[j] += gi3 * hj;
          T acc = g2[j];
          acc += w0[j] * gi0;
          acc += w1[j] * gi1;
          acc += w2[j] * gi2;
          acc += w3[j] * gi3;
          g2[j] = acc;
        }
      }
      for (; i < nout; ++i) {
        const T gi = g[i];
        const T* HNODE_RESTRICT w = W + (long)i * nin;
        GR gw = gW + (long)i * nin;
        for (int j = 0; j < nin; ++j) {
          gw[j] += gi * hin[j];
          g2[j] += w[j] * gi;
        }
      }
    } else {
      const int* rp = v.ints + row[LCOL_RP];
      const int* col = v.ints + row[LCOL_COL];
      const T* vals = v.params + w_off;
      GR gvals = gp + w_off;
      for (int i = 0; i < nout; ++i) {
        const T gi = g[i];
        for (int k = rp[i]; k < rp[i + 1]; ++k) {
          gvals[k] += gi * hin[col[k]];
          g2[col[k]] += vals[k] * gi;
        }
      }
    }
    T* t = g;
    g = g2;
    g2 = t;
  }
  for (int k = 0; k < v.n_in; ++k) {
    const int idx = v.in_idx[k];
    if (idx < D) gz[idx] += g[k];
  }
}

HNODE_NAMESPACE_END  // namespace hnode
