// Dormand-Prince 5(4) pieces mirroring hnode_fast/reference/dopri5.py (scipy RK45 rules):
// one step with FSAL, the error norm, the controller, Hairer's initial step, dense output.
// Times and step sizes are double; state arithmetic and norms in T.
#pragma once

#include <math.h>

#include "hnode/field.h"
#include "hnode/macros.h"
#include "hnode/tableau.h"

HNODE_NAMESPACE_BEGIN

constexpr double DP_SAFETY = 0.9;
constexpr double DP_MIN_FACTOR = 0.2;
constexpr double DP_MAX_FACTOR = 10.0;
constexpr double DP_ERROR_EXPONENT = -1.0 / 5.0;

// The tableau as plain arrays of T (built once per solve: indexing constexpr functions with
// runtime indices would rebuild their local tables at every call).
template <class T>
struct DPCoef {
  T a[6][5], b[6], e[7], p[7][4];
  HNODE_HD DPCoef() {
    for (int i = 0; i < 6; ++i) {
      for (int j = 0; j < 5; ++j) a[i][j] = DP5<T>::a(i, j);
      b[i] = DP5<T>::b(i);
    }
    for (int i = 0; i < 7; ++i) {
      e[i] = DP5<T>::e(i);
      for (int j = 0; j < 4; ++j) p[i][j] = DP5<T>::p(i, j);
    }
  }
};

// RMS of x / scale over n values, in T, returned as double (reference rms_rows).
template <class T>
HNODE_HD_INLINE double rms_scaled(const T* x, const T* scale, int n) {
  T ss = T(0);
  for (int i = 0; i < n; ++i) {
    const T q = x[i] / scale[i];
    ss += q * q;
  }
  return (double)(fm::sqrt_(ss) / (T)::sqrt((double)n));
}

// Stage argument s (1..5) of a step: ys = y + h * sum_j a[s][j] K_j.
template <class T>
HNODE_HD_INLINE void dp5_stage_arg(const DPCoef<T>& C, int D, int s, const T* y, const T* K, T hd, T* ys) {
  for (int d = 0; d < D; ++d) {
    T acc = K[d] * C.a[s][0];
    for (int j = 1; j < s; ++j) acc = acc + K[j * D + d] * C.a[s][j];
    ys[d] = y[d] + acc * hd;
  }
}

// The step's new state: ynew = y + h * sum_j b_j K_j.
template <class T>
HNODE_HD_INLINE void dp5_new_state(const DPCoef<T>& C, int D, const T* y, const T* K, T hd, T* ynew) {
  for (int d = 0; d < D; ++d) {
    T acc = K[d] * C.b[0];
    for (int j = 2; j < 6; ++j) acc = acc + K[j * D + d] * C.b[j];
    ynew[d] = y[d] + hd * acc;
  }
}

// One DP5 step: K[0] = f(y) given; fills K[1..6] (K[6] = f(y_new)), ynew, and the stage
// activations acts_s (stride A) when acts_stride > 0 (else acts reused for every stage).
// ys: scratch (D). Evaluates the field 6 times.
template <class T>
HNODE_HD void dp5_step(const DPCoef<T>& C, const FieldView<T>& v, const T* u, const T* y, double h, T* K, T* ynew, T* ys,
                       T* acts, int acts_stride) {
  const int D = v.D;
  const T hd = (T)h;
  for (int s = 1; s < 6; ++s) {
    dp5_stage_arg<T>(C, D, s, y, K, hd, ys);
    eval_field<T>(v, ys, u, K + s * D, acts + s * acts_stride);
  }
  dp5_new_state<T>(C, D, y, K, hd, ynew);
  eval_field<T>(v, ynew, u, K + 6 * D, acts + 6 * acts_stride);
}

// Error norm (double): RMS(h * sum E_i K_i / (atol + rtol * max(|y|, |ynew|))).
template <class T>
HNODE_HD double dp5_error_norm(const DPCoef<T>& C, int D, const T* K, const T* y, const T* ynew, double h, T rtol, T atol) {
  const T hd = (T)h;
  T ss = T(0);
  for (int d = 0; d < D; ++d) {
    T e = K[d] * C.e[0];
    for (int j = 2; j < 7; ++j) e = e + K[j * D + d] * C.e[j];
    e = e * hd;
    const T sc = atol + fm::maxn(fm::abs_(y[d]), fm::abs_(ynew[d])) * rtol;
    const T q = e / sc;
    ss += q * q;
  }
  return (double)(fm::sqrt_(ss) / (T)::sqrt((double)D));
}

// Hairer's initial step (reference initial_step), in two halves around its one field evaluation.
// First half: scale, d0, d1 (out), h0 (returned) and y1 = y + h0 f0, the evaluation's argument.
template <class T>
HNODE_HD double dp5_initial_step_a(int D, const T* y, const T* f0, double span, T rtol, T atol, T* y1, T* scale,
                                   double* d1_out) {
  for (int d = 0; d < D; ++d) scale[d] = atol + fm::abs_(y[d]) * rtol;
  const double d0 = rms_scaled<T>(y, scale, D);
  const double d1 = rms_scaled<T>(f0, scale, D);
  const bool small = (d0 < 1e-5) || (d1 < 1e-5);
  double h0 = small ? 1e-6 : 0.01 * d0 / d1;
  h0 = fm::minn(h0, span);
  if (!(h0 > 0)) h0 = 1e-6;
  const T h0d = (T)h0;
  for (int d = 0; d < D; ++d) y1[d] = y[d] + h0d * f0[d];
  *d1_out = d1;
  return h0;
}

// Second half, given f1 = f(y1): the initial step. y1 is overwritten (scratch).
template <class T>
HNODE_HD double dp5_initial_step_b(int D, const T* f0, const T* f1, double span, double h0, double d1, T* y1,
                                   const T* scale) {
  for (int d = 0; d < D; ++d) y1[d] = f1[d] - f0[d];
  const double d2 = rms_scaled<T>(y1, scale, D) / h0;
  const bool tiny = (d1 <= 1e-15) && (d2 <= 1e-15);
  double h1;
  if (tiny) {
    h1 = h0 * 1e-3;
    h1 = (h1 < 1e-6) ? 1e-6 : h1;
  } else {
    double m = fm::maxn(d1, d2);
    m = (m < 1e-300) ? 1e-300 : m;
    h1 = ::pow(0.01 / m, 1.0 / 5.0);
  }
  return fm::minn(fm::minn(100 * h0, h1), span);
}

// The whole heuristic for one trajectory; f1, y1, scale: scratch (D); acts: scratch.
template <class T>
HNODE_HD double dp5_initial_step(const FieldView<T>& v, const T* u, const T* y, const T* f0, double span, T rtol,
                                 T atol, T* y1, T* f1, T* scale, T* acts) {
  double d1 = 0.0;
  const double h0 = dp5_initial_step_a<T>(v.D, y, f0, span, rtol, atol, y1, scale, &d1);
  eval_field<T>(v, y1, u, f1, acts);
  return dp5_initial_step_b<T>(v.D, f0, f1, span, h0, d1, y1, scale);
}

// Dense output coefficients c_i(x) = sum_j P[i][j] x^(j+1) (in T) for x = (tq - t) / h.
template <class T>
HNODE_HD_INLINE void dp5_dense_coefs(const DPCoef<T>& C, double x, T* c) {
  const T xp0 = (T)x, xp1 = (T)(x * x), xp2 = (T)(x * x * x), xp3 = (T)::pow(x, 4.0);
  for (int i = 0; i < 7; ++i)
    c[i] = xp0 * C.p[i][0] + xp1 * C.p[i][1] + xp2 * C.p[i][2] + xp3 * C.p[i][3];
}

template <class T>
HNODE_HD_INLINE void dp5_dense(const DPCoef<T>& C, int D, const T* K, const T* y, double h, double x, T* out) {
  T c[7];
  dp5_dense_coefs<T>(C, x, c);
  const T hd = (T)h;
  for (int d = 0; d < D; ++d) {
    T acc = K[d] * c[0];
    for (int j = 1; j < 7; ++j) acc = acc + K[j * D + d] * c[j];
    out[d] = y[d] + hd * acc;
  }
}

// d/dt of dp5_dense at x = (t - t_n) / h: sum_j K_j sum_m (m + 1) x^m P[j][m] (h cancels).
template <class T>
HNODE_HD_INLINE void dp5_dense_slope(const DPCoef<T>& C, int D, const T* K, double x, T* out) {
  const T x1 = (T)(2.0 * x), x2 = (T)(3.0 * x * x), x3 = (T)(4.0 * x * x * x);
  T c[7];
  for (int i = 0; i < 7; ++i) c[i] = C.p[i][0] + x1 * C.p[i][1] + x2 * C.p[i][2] + x3 * C.p[i][3];
  for (int d = 0; d < D; ++d) {
    T acc = K[d] * c[0];
    for (int j = 1; j < 7; ++j) acc = acc + K[j * D + d] * c[j];
    out[d] = acc;
  }
}

HNODE_NAMESPACE_END  // namespace hnode
