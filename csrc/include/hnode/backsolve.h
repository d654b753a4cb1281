// backsolve_one: the continuous (backsolve) adjoint of one trajectory, a mirror of
// hnode_fast/reference/backsolve.py (with the loop of reference/engine.py, per_sample).
//
// In reversed time tau = -t the augmented state Z = [y, a] (2D values) obeys
//     dy/dtau = -f(y, u),   da/dtau = a^T df/dy,
// integrated by the same adaptive DP5 (scipy rules, error norm over all 2D values) from
// tau = -t_end (y = y(t_end), a = dL/dy(t_end)) to tau = -t0, stopping at -t_j (j < T-1:
// a += dL/dy(t_j)), at -dose_time (doses before t_end: y -= amount) and at -switch_time.
// Inputs are the left limits u(t-) at the forward time of the step start. The parameter
// gradient g += h b_i (a_i^T df/dtheta)(y_i) over the stages with b_i != 0 of ACCEPTED steps
// (outside the error norm). grad_y0 = a(t0) + dL/dy(t0); NaN when the backward solve fails.
#pragma once

#include <math.h>

#include "hnode/dopri5.h"
#include "hnode/field.h"
#include "hnode/macros.h"
#include "hnode/solve.h"
#include "hnode/tableau.h"

HNODE_NAMESPACE_BEGIN

// Scratch of one thread for backsolve_one: D = states, K = inputs, A = acts_size,
// G = grad_scratch_size, P = params; plus a double buffer of stops_size() breakpoints.
template <class T>
struct BsWork {
  T *z, *znew, *K, *zs, *z1, *f1, *scale, *u, *acts, *gbuf, *gdummy, *cot;
  double* stops;
  int A;
  static HNODE_HD long long size(int D, int K, int A, int G, long long P) {
    const long long N = 2LL * D;
    return 2 * N + 7 * N + 4 * N + (K > 0 ? K : 1) + 7LL * A + G + (P > 0 ? P : 1) + D;
  }
  static HNODE_HD long long stops_size(int n_out, int n_ev, int n_sw) {
    const long long n = (long long)(n_out > 0 ? n_out - 1 : 0) + n_ev + n_sw;
    return n > 0 ? n : 1;
  }
  HNODE_HD void bind(T* p, double* sp, int D, int nK, int A_, int G, long long P) {
    const long long N = 2LL * D;
    A = A_;
    z = p; p += N;
    znew = p; p += N;
    K = p; p += 7 * N;
    zs = p; p += N;
    z1 = p; p += N;
    f1 = p; p += N;
    scale = p; p += N;
    u = p; p += (nK > 0 ? nK : 1);
    acts = p; p += 7LL * A_;
    gbuf = p; p += G;
    gdummy = p; p += (P > 0 ? P : 1);
    cot = p;
    stops = sp;
  }
};

// u(t-): the last switch strictly before t (reference Inputs.at(left=True)).
template <class T>
HNODE_HD_INLINE void input_left(const Traj<T>& tr, int K, double t, T* u) {
  if (K <= 0) return;
  int j = -1;
  for (int i = 0; i < tr.n_sw; ++i)
    if (tr.in_t[i] < t) j = i;
  if (j < 0) {
    for (int k = 0; k < K; ++k) u[k] = T(0);
  } else {
    for (int k = 0; k < K; ++k) u[k] = tr.in_v[(long long)j * K + k];
  }
}

// Augmented right-hand side at Z = [y, a]: out = [-f(y, u), a^T df/dy]; acts: the field's
// activations at y (kept for the parameter VJP of accepted steps).
template <class T>
HNODE_HD_INLINE void bs_rhs(const FieldView<T>& v, const T* u, const T* z, T* out, T* acts, BsWork<T>& w) {
  const int D = v.D;
  eval_field<T>(v, z, u, out, acts);
  for (int d = 0; d < D; ++d) {
    out[d] = -out[d];
    out[D + d] = T(0);
  }
  vjp_field<T>(v, z, u, acts, z + D, out + D, w.gdummy, w.gbuf);
}

// Hairer's initial step over the augmented state (dp5_initial_step with bs_rhs).
template <class T>
HNODE_HD double bs_initial_step(const FieldView<T>& v, const T* u, const T* z, const T* f0, double span, T rtol,
                                T atol, BsWork<T>& w) {
  const int N = 2 * v.D;
  T* scale = w.scale;
  T* z1 = w.z1;
  T* f1 = w.f1;
  for (int d = 0; d < N; ++d) scale[d] = atol + fm::abs_(z[d]) * rtol;
  const double d0 = rms_scaled<T>(z, scale, N);
  const double d1 = rms_scaled<T>(f0, scale, N);
  const bool small = (d0 < 1e-5) || (d1 < 1e-5);
  double h0 = small ? 1e-6 : 0.01 * d0 / d1;
  h0 = fm::minn(h0, span);
  if (!(h0 > 0)) h0 = 1e-6;
  const T h0d = (T)h0;
  for (int d = 0; d < N; ++d) z1[d] = z[d] + h0d * f0[d];
  bs_rhs<T>(v, u, z1, f1, w.acts + w.A, w);  // stage-1 slot: overwritten by the next step
  for (int d = 0; d < N; ++d) z1[d] = f1[d] - f0[d];
  const double d2 = rms_scaled<T>(z1, scale, N) / h0;
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

// Breakpoints in reversed time, sorted (+inf for excluded entries); returns their count.
template <class T>
HNODE_HD int bs_build_stops(const Traj<T>& tr, double* s) {
  int n = 0;
  const double t_end = tr.out_t[tr.n_out - 1];
  for (int j = 0; j + 1 < tr.n_out; ++j) s[n++] = -tr.out_t[j];
  for (int e = 0; e < tr.n_ev; ++e) {
    const double et = tr.ev_t[e];
    s[n++] = (fm::isfin(et) && et < t_end) ? -et : INFINITY;
  }
  for (int i = 0; i < tr.n_sw; ++i) {
    const double it = tr.in_t[i];
    s[n++] = fm::isfin(it) ? -it : INFINITY;
  }
  for (int i = 1; i < n; ++i) {  // insertion sort (short lists)
    const double x = s[i];
    int j = i - 1;
    while (j >= 0 && s[j] > x) {
      s[j + 1] = s[j];
      --j;
    }
    s[j + 1] = x;
  }
  return n;
}

// The jump at a stop tau: y -= the doses at -tau; then, where -t_j == tau (j < T-1),
// a += dL/dy(t_j) and y is reset to the forward output y_fwd(t_j) if it is finite (re-anchoring,
// as torchdiffeq's odeint_adjoint: the forward output is the pre-dose left limit, so the dose
// is subtracted first). g_out and y_fwd: output j at + j * g_stride.
template <class T>
HNODE_HD_INLINE void bs_jump(const Traj<T>& tr, int D, double tau, T* z, const T* g_out, const T* y_fwd,
                             long long g_stride, T* delta) {
  const double t = -tau;
  bool any = false;
  for (int e = 0; e < tr.n_ev; ++e) any |= (tr.ev_t[e] == t);
  if (any) {
    for (int d = 0; d < D; ++d) delta[d] = T(0);
    for (int e = 0; e < tr.n_ev; ++e)
      if (tr.ev_t[e] == t) delta[tr.ev_s[e]] += -tr.ev_a[e];
    for (int d = 0; d < D; ++d) z[d] = z[d] + delta[d];
  }
  for (int j = 0; j + 1 < tr.n_out; ++j) {
    if (-tr.out_t[j] == tau) {
      const T* g = g_out + j * g_stride;
      for (int d = 0; d < D; ++d) z[D + d] = z[D + d] + g[d];
      const T* yj = y_fwd + j * g_stride;
      bool fin = true;
      for (int d = 0; d < D; ++d) fin &= fm::isfin(yj[d]);
      if (fin)
        for (int d = 0; d < D; ++d) z[d] = yj[d];
    }
  }
}

// The backward solve of one trajectory. yT: the final forward state (D); g_out: incoming
// gradient of the outputs, output j at g_out + j * g_stride (non-finite values already
// replaced); y_fwd: the forward outputs, same layout (the state is re-anchored to them). Accumulates into gp (P); writes g_y0 (D) and stats [n_steps, n_rejected, nfe,
// status] of the backward solve (stats may be null). Returns the status.
template <class T>
HNODE_HD int backsolve_one(const FieldView<T>& v, const SolveCfg& cfg, const Traj<T>& tr, const T* yT,
                           const T* g_out, const T* y_fwd, long long g_stride, BsWork<T>& w, T* gp, T* g_y0,
                           long long* stats) {
  const int D = v.D, K = v.K, A = w.A, N = 2 * D;
  if (tr.n_out <= 1) {
    for (int d = 0; d < D; ++d) g_y0[d] = g_out[d];
    if (stats) stats[0] = stats[1] = stats[2] = stats[3] = 0;
    return STATUS_OK;
  }
  const DPCoef<T> C;
  double bw[6];  // b_i * h is formed in double, as the reference does
  for (int i = 0; i < 6; ++i) bw[i] = DP5<double>::b(i);
  const T rtol = (T)cfg.rtol, atol = (T)cfg.atol;
  const int n_stops = bs_build_stops<T>(tr, w.stops);
  const double* stops = w.stops;
  SolveState s;  // in reversed time: s.t = -t runs from -t_end to -t0
  s.t = -tr.out_t[tr.n_out - 1];
  s.t_end = -tr.out_t[0];
  T* z = w.z;
  T* Kb = w.K;
  const T* g_last = g_out + (long long)(tr.n_out - 1) * g_stride;
  for (int d = 0; d < D; ++d) {
    z[d] = yT[d];
    z[D + d] = g_last[d];
  }
  if (count_le(stops, n_stops, s.t) > 0 && stops[count_le(stops, n_stops, s.t) - 1] == s.t)
    bs_jump<T>(tr, D, s.t, z, g_out, y_fwd, g_stride, w.zs);
  s.ptr = count_le(stops, n_stops, s.t);
  s.need_init = s.t < s.t_end;
  bool active = s.need_init, reached = false;
  while (active) {
    input_left<T>(tr, K, -s.t, w.u);
    if (s.need_init) {
      bs_rhs<T>(v, w.u, z, Kb, w.acts, w);
      const double h0 = bs_initial_step<T>(v, w.u, z, Kb, solve_seg_end(stops, n_stops, s) - s.t, rtol, atol, w);
      if (!solve_init_done<T>(s, N, Kb, h0)) break;
    }
    const double seg_end = solve_seg_end(stops, n_stops, s);
    if (!solve_prepare_step(stops, n_stops, s)) break;
    const double h = s.h;
    const T hd = (T)h;
    for (int st = 1; st < 6; ++st) {
      dp5_stage_arg<T>(C, N, st, z, Kb, hd, w.zs);
      bs_rhs<T>(v, w.u, w.zs, Kb + st * N, w.acts + (long long)st * A, w);
    }
    dp5_new_state<T>(C, N, z, Kb, hd, w.znew);
    bs_rhs<T>(v, w.u, w.znew, Kb + 6 * N, w.acts + 6LL * A, w);
    const double err = dp5_error_norm<T>(C, N, Kb, z, w.znew, h, rtol, atol);
    const bool accept = solve_control(s, err);
    if (accept) {
      // parameter quadrature over the stages with b_i != 0 (stage 0 is z itself)
      for (int i = 0; i < 6; ++i) {
        if (bw[i] == 0.0) continue;
        const T* zi = z;
        if (i > 0) {
          dp5_stage_arg<T>(C, N, i, z, Kb, hd, w.zs);
          zi = w.zs;
        }
        const T wi = (T)(h * bw[i]);
        for (int d = 0; d < D; ++d) w.cot[d] = zi[D + d] * wi;
        vjp_field<T>(v, zi, w.u, w.acts + (long long)i * A, w.cot, w.f1, gp, w.gbuf);
      }
      for (int d = 0; d < N; ++d) {
        z[d] = w.znew[d];
        Kb[d] = Kb[6 * N + d];
      }
      for (long long i = 0; i < A; ++i) w.acts[i] = w.acts[6LL * A + i];
    }
    if (accept && s.t >= s.t_end) {
      reached = true;
      break;
    }
    if (accept && s.t >= seg_end) {
      if (next_stop(stops, n_stops, s.ptr) == s.t) bs_jump<T>(tr, D, s.t, z, g_out, y_fwd, g_stride, w.zs);
      s.ptr = count_le(stops, n_stops, s.t);
      s.need_init = true;
    }
    active = solve_within_limits(cfg, s);
  }
  for (int d = 0; d < D; ++d) g_y0[d] = reached ? z[D + d] + g_out[d] : (T)NAN;
  if (stats) {
    stats[0] = s.n_steps;
    stats[1] = s.n_rej;
    stats[2] = s.nfe;
    stats[3] = s.status;
  }
  return s.status;
}

HNODE_NAMESPACE_END  // namespace hnode
