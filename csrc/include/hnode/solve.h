// solve_one: the whole adaptive DP5 solve of one trajectory (mirror of
// hnode_fast/reference/engine.py, step_mode="per_sample"), and adjoint_one: its discrete
// adjoint (reverse pass over the accepted steps recorded by solve_one).
#pragma once

#include <math.h>

#include "hnode/dopri5.h"
#include "hnode/field.h"
#include "hnode/macros.h"

HNODE_NAMESPACE_BEGIN

enum { STATUS_OK = 0, STATUS_MAX_STEPS = 1, STATUS_DT_UNDERFLOW = 2, STATUS_NONFINITE = 3 };
constexpr int NONFINITE_STREAK = 8;

struct SolveCfg {
  double rtol = 1e-6, atol = 1e-8;
  long long max_steps = 10000;
};

// One trajectory's data (all pointers already offset to this trajectory).
template <class T>
struct Traj {
  const T* y0 = nullptr;          // (D,)
  const double* out_t = nullptr;  // (n_out,) strictly increasing
  int n_out = 0;
  const double* stops = nullptr;  // (n_stops,) sorted, +inf padded
  int n_stops = 0;
  const double* ev_t = nullptr;  // (n_ev,) dose times (+inf pads)
  const int* ev_s = nullptr;     // (n_ev,) states
  const T* ev_a = nullptr;       // (n_ev,) amounts
  int n_ev = 0;
  const double* in_t = nullptr;  // (n_sw,) input switch times
  const T* in_v = nullptr;       // (n_sw, K) values
  int n_sw = 0;
  T* out = nullptr;  // output j, state d at out[j * out_stride + d]
  long long out_stride = 0;
  // optional: d/dt of the dense-output interpolant at each output time, same layout as out
  // (row 0 is 0; the gradient with respect to the output times, see hf.odeint)
  T* out_dot = nullptr;
  long long* stats = nullptr;  // [n_steps, n_rejected, nfe, status]
};

// Scratch of one thread: D = states, K = inputs, A = acts_size, G = grad_scratch_size.
template <class T>
struct Work {
  T *y, *ynew, *K, *ys, *y1, *f1, *scale, *u, *acts;  // forward (acts: 7 * A)
  T *gK, *a_new, *a_n, *gY, *gbuf;                    // adjoint
  int A;
  static HNODE_HD long long size(int D, int K, int A, int G) {
    return 7LL * D + 7LL * D + 6LL * D + (K > 0 ? K : 1) + 7LL * A + 7LL * D + 3LL * D + G;
  }
  HNODE_HD void bind(T* p, int D, int nK, int A_, int G) {
    A = A_;
    y = p; p += D;
    ynew = p; p += D;
    K = p; p += 7 * D;
    ys = p; p += D;
    y1 = p; p += D;
    f1 = p; p += D;
    scale = p; p += D;
    u = p; p += (nK > 0 ? nK : 1);
    acts = p; p += 7LL * A_;
    gK = p; p += 7 * D;
    a_new = p; p += D;
    a_n = p; p += D;
    gY = p; p += D;
    gbuf = p;
    (void)G;
  }
};

// Recorder that records nothing (plain forward).
struct NoRecord {
  HNODE_HD_INLINE void step(double, double, const void*, int) {}
  HNODE_HD_INLINE void jump_after_last() {}
};

template <class T>
HNODE_HD_INLINE void input_at(const Traj<T>& tr, int K, double t, T* u) {
  if (K <= 0) return;
  int j = -1;
  for (int i = 0; i < tr.n_sw; ++i)
    if (tr.in_t[i] <= t) j = i;  // non-decreasing: last switch at or before t
  if (j < 0) {
    for (int k = 0; k < K; ++k) u[k] = T(0);
  } else {
    for (int k = 0; k < K; ++k) u[k] = tr.in_v[(long long)j * K + k];
  }
}

template <class T>
HNODE_HD_INLINE void apply_doses(const Traj<T>& tr, int D, double t, T* y, T* delta) {
  bool any = false;
  for (int e = 0; e < tr.n_ev; ++e) any |= (tr.ev_t[e] == t);
  if (!any) return;
  for (int d = 0; d < D; ++d) delta[d] = T(0);
  for (int e = 0; e < tr.n_ev; ++e)
    if (tr.ev_t[e] == t) delta[tr.ev_s[e]] += tr.ev_a[e];
  for (int d = 0; d < D; ++d) y[d] = y[d] + delta[d];
}

HNODE_HD_INLINE double next_stop(const double* stops, int n, int ptr) {
  return ptr < n ? stops[ptr] : INFINITY;
}
HNODE_HD_INLINE int count_le(const double* stops, int n, double t) {
  int c = 0;
  for (int i = 0; i < n; ++i) c += stops[i] <= t;
  return c;
}

// The per-trajectory control state of a solve, advanced by the pieces below. solve_one runs
// them for one trajectory; the CPU lane driver (hnode/lanes.h) runs the same pieces for W
// trajectories in lockstep, batching only the field evaluations.
struct SolveState {
  double t = 0.0, t_end = 0.0, h_abs = 0.0, t_new = 0.0, h = 0.0;
  long long n_steps = 0, n_rej = 0, nfe = 0;
  int ptr = 0, status = STATUS_OK, bad_streak = 0, jo = 1;
  bool need_init = false, fresh = true, rejected = false;
};

// Start: outputs NaN but the first (= y0), y = y0 plus doses at t0. Returns whether any step is
// needed (t0 < t_end).
template <class T>
HNODE_HD bool solve_begin(const Traj<T>& tr, int D, SolveState& s, T* y, T* scratch) {
  s = SolveState();
  s.t = tr.out_t[0];
  s.t_end = tr.out_t[tr.n_out - 1];
  for (int j = 1; j < tr.n_out; ++j)
    for (int d = 0; d < D; ++d) tr.out[j * tr.out_stride + d] = (T)NAN;
  for (int d = 0; d < D; ++d) {
    y[d] = tr.y0[d];
    tr.out[d] = tr.y0[d];
  }
  if (tr.out_dot) {
    for (int d = 0; d < D; ++d) tr.out_dot[d] = T(0);
    for (int j = 1; j < tr.n_out; ++j)
      for (int d = 0; d < D; ++d) tr.out_dot[j * tr.out_stride + d] = (T)NAN;
  }
  // doses at t0 (the reference jumps when any stop equals t0)
  apply_doses<T>(tr, D, s.t, y, scratch);
  s.ptr = count_le(tr.stops, tr.n_stops, s.t);
  s.need_init = s.t < s.t_end;
  return s.need_init;
}

// After the initial-step heuristic (h0 its result, f0 = f(y)): false ends the solve (status set).
template <class T>
HNODE_HD bool solve_init_done(SolveState& s, int D, const T* f0, double h0) {
  s.h_abs = h0;
  s.nfe += 2;
  bool fin = true;
  for (int d = 0; d < D; ++d) fin &= fm::isfin(f0[d]);
  if (!fin) {
    s.status = STATUS_NONFINITE;
    return false;
  }
  s.fresh = true;
  s.rejected = false;
  s.need_init = false;
  return true;
}

// End of the current integration segment: the next of the (sorted, +inf padded) stops, or t_end.
HNODE_HD_INLINE double solve_seg_end(const double* stops, int n_stops, const SolveState& s) {
  return fm::minn(next_stop(stops, n_stops, s.ptr), s.t_end);
}

// Chooses the attempt [t, t_new] (h = t_new - t); false ends the solve (step underflow).
HNODE_HD_INLINE bool solve_prepare_step(const double* stops, int n_stops, SolveState& s) {
  const double seg_end = solve_seg_end(stops, n_stops, s);
  const double min_step = 10.0 * fm::abs_(::nextafter(s.t, INFINITY) - s.t);
  if (s.fresh) s.h_abs = fm::maxn(s.h_abs, min_step);
  if (s.h_abs < min_step) {
    s.status = s.bad_streak > 0 ? STATUS_NONFINITE : STATUS_DT_UNDERFLOW;
    return false;
  }
  s.t_new = s.t + s.h_abs;
  if (s.t_new > seg_end) s.t_new = seg_end;
  s.h = s.t_new - s.t;
  return true;
}

// The step-size controller (scipy RK45 rules) after the attempt [t, t_new] with error norm err:
// the next step size, the non-finite streak, the counts; an accepted step moves t to t_new.
// Returns whether the step is accepted.
HNODE_HD_INLINE bool solve_control(SolveState& s, double err) {
  s.nfe += 6;
  const bool finite = fm::isfin(err);
  const bool accept = finite && err < 1.0;
  const double safe_err = (finite && err > 0) ? err : 1.0;
  const double fac = DP_SAFETY * ::pow(safe_err, DP_ERROR_EXPONENT);
  double grow = err == 0 ? DP_MAX_FACTOR : fm::minn(fac, DP_MAX_FACTOR);
  if (s.rejected) grow = fm::minn(grow, 1.0);
  const double shrink = finite ? fm::maxn(fac, DP_MIN_FACTOR) : DP_MIN_FACTOR;
  const double habs_step = fm::abs_(s.h);
  s.h_abs = accept ? habs_step * grow : habs_step * shrink;
  s.bad_streak = finite ? 0 : s.bad_streak + 1;
  if (accept) {
    s.t = s.t_new;
    ++s.n_steps;
  } else {
    ++s.n_rej;
  }
  s.fresh = accept;
  s.rejected = !accept;
  return accept;
}

// The non-finite streak and max_steps limits; false ends the solve (status set).
HNODE_HD_INLINE bool solve_within_limits(const SolveCfg& cfg, SolveState& s) {
  if (s.bad_streak >= NONFINITE_STREAK) {
    s.status = STATUS_NONFINITE;
    return false;
  }
  if (s.n_steps + s.n_rej >= cfg.max_steps) {
    s.status = STATUS_MAX_STEPS;
    return false;
  }
  return true;
}

// After an attempted step (K[0..6], ynew filled): error control, accepted-step outputs, stops
// and doses, limits. Rec::step(t, t_new, y_n, D) is called for each accepted step (before y
// is updated), Rec::jump_after_last() when doses are applied after it. False ends the solve.
template <class T, class Rec>
HNODE_HD bool solve_after_step(const DPCoef<T>& C, const SolveCfg& cfg, const Traj<T>& tr, int D, SolveState& s,
                               T* y, T* Kb, const T* ynew, T* scratch, Rec& rec) {
  const double t = s.t, t_new = s.t_new, h = s.h;
  const double seg_end = solve_seg_end(tr.stops, tr.n_stops, s);
  const double err = dp5_error_norm<T>(C, D, Kb, y, ynew, h, (T)cfg.rtol, (T)cfg.atol);
  const bool accept = solve_control(s, err);
  if (accept) {
    rec.step(t, t_new, (const void*)y, D);
    while (s.jo < tr.n_out && tr.out_t[s.jo] <= t_new) {
      T* o = tr.out + s.jo * tr.out_stride;
      const double tq = tr.out_t[s.jo];
      if (tq == t_new) {
        for (int d = 0; d < D; ++d) o[d] = ynew[d];
      } else {
        dp5_dense<T>(C, D, Kb, y, h, (tq - t) / h, o);
      }
      if (tr.out_dot) dp5_dense_slope<T>(C, D, Kb, (tq - t) / h, tr.out_dot + s.jo * tr.out_stride);
      ++s.jo;
    }
    for (int d = 0; d < D; ++d) {
      y[d] = ynew[d];
      Kb[d] = Kb[6 * D + d];
    }
  }
  if (accept && s.t >= s.t_end) return false;
  if (accept && s.t >= seg_end) {
    if (next_stop(tr.stops, tr.n_stops, s.ptr) == s.t) {
      bool any = false;
      for (int e = 0; e < tr.n_ev; ++e) any |= (tr.ev_t[e] == s.t);
      if (any) {
        apply_doses<T>(tr, D, s.t, y, scratch);
        rec.jump_after_last();
      }
    }
    s.ptr = count_le(tr.stops, tr.n_stops, s.t);
    s.need_init = true;
  }
  return solve_within_limits(cfg, s);
}

template <class T>
HNODE_HD_INLINE void solve_write_stats(const Traj<T>& tr, const SolveState& s) {
  tr.stats[0] = s.n_steps;
  tr.stats[1] = s.n_rej;
  tr.stats[2] = s.nfe;
  tr.stats[3] = s.status;
}

// The whole solve of one trajectory. Returns status.
template <class T, class Rec>
HNODE_HD int solve_one(const FieldView<T>& v, const SolveCfg& cfg, const Traj<T>& tr, Work<T>& w, Rec& rec) {
  const int D = v.D, K = v.K;
  const DPCoef<T> C;
  const T rtol = (T)cfg.rtol, atol = (T)cfg.atol;
  SolveState s;
  bool active = solve_begin<T>(tr, D, s, w.y, w.ys);
  while (active) {
    input_at<T>(tr, K, s.t, w.u);
    if (s.need_init) {
      eval_field<T>(v, w.y, w.u, w.K, w.acts);
      const double span = solve_seg_end(tr.stops, tr.n_stops, s) - s.t;
      const double h0 = dp5_initial_step<T>(v, w.u, w.y, w.K, span, rtol, atol, w.y1, w.f1, w.scale, w.acts);
      if (!solve_init_done<T>(s, D, w.K, h0)) break;
    }
    if (!solve_prepare_step(tr.stops, tr.n_stops, s)) break;
    dp5_step<T>(C, v, w.u, w.y, s.h, w.K, w.ynew, w.ys, w.acts, 0);
    active = solve_after_step<T>(C, cfg, tr, D, s, w.y, w.K, w.ynew, w.ys, rec);
  }
  solve_write_stats<T>(tr, s);
  return s.status;
}

// Discrete adjoint of solve_one over its n accepted steps (ck_t, ck_tn: step start / end
// times; ck_y: (n, D) states at step starts; ck_jump: doses applied after the step).
// g_out: incoming gradient of the outputs (stride out_stride). Accumulates into gp (P),
// g_y0 (D, overwritten) and g_ev (n_ev, overwritten).
// ``gp``: a ``T*`` or a ``StridedGrad<T>`` (see vjp_field).
template <class T, class GP = T*>
HNODE_HD void adjoint_one(const FieldView<T>& v, const Traj<T>& tr, int n, const double* ck_t, const double* ck_tn,
                          const T* ck_y, const unsigned char* ck_jump, const T* g_out, long long g_stride,
                          Work<T>& w, GP gp, T* g_y0, T* g_ev) {
  const int D = v.D, K = v.K, A = w.A;
  const DPCoef<T> C;
  T* a = w.y;  // adjoint of the current state
  for (int d = 0; d < D; ++d) a[d] = T(0);
  for (int e = 0; e < tr.n_ev; ++e) g_ev[e] = T(0);
  T* Kb = w.K;
  T* Y = w.ynew;  // stage arguments are recomputed one at a time into ys; y_new into ynew
  int jp = tr.n_out - 1;
  const double t_last = n > 0 ? ck_tn[n - 1] : tr.out_t[0];
  while (jp >= 1 && tr.out_t[jp] > t_last) --jp;
  for (int s = n - 1; s >= 0; --s) {
    const double t = ck_t[s], t_new = ck_tn[s];
    const double h = t_new - t;
    const T hd = (T)h;
    const T* yn = ck_y + (long long)s * D;
    if (ck_jump[s]) {
      for (int e = 0; e < tr.n_ev; ++e)
        if (tr.ev_t[e] == t_new) g_ev[e] += a[tr.ev_s[e]];
    }
    input_at<T>(tr, K, t, w.u);
    // recompute the stages with their activations
    eval_field<T>(v, yn, w.u, Kb, w.acts);
    for (int st = 1; st < 6; ++st) {
      dp5_stage_arg<T>(C, D, st, yn, Kb, hd, w.ys);
      eval_field<T>(v, w.ys, w.u, Kb + st * D, w.acts + (long long)st * A);
    }
    dp5_new_state<T>(C, D, yn, Kb, hd, Y);
    for (int i = 0; i < 7 * D; ++i) w.gK[i] = T(0);
    T* an = w.a_n;
    T* anew = w.a_new;
    for (int d = 0; d < D; ++d) {
      an[d] = T(0);
      anew[d] = a[d];
    }
    bool k6 = false;
    while (jp >= 1 && tr.out_t[jp] > t) {
      const double tq = tr.out_t[jp];
      const T* g = g_out + jp * g_stride;
      if (tq == t_new) {
        for (int d = 0; d < D; ++d) anew[d] += g[d];
      } else {
        T c[7];
        dp5_dense_coefs<T>(C, (tq - t) / h, c);
        for (int j = 0; j < 7; ++j) {
          const T hc = hd * c[j];
          for (int d = 0; d < D; ++d) w.gK[j * D + d] += hc * g[d];
        }
        for (int d = 0; d < D; ++d) an[d] += g[d];
        k6 = true;
      }
      --jp;
    }
    if (k6) {
      eval_field<T>(v, Y, w.u, Kb + 6 * D, w.acts + 6LL * A);
      vjp_field<T, GP>(v, Y, w.u, w.acts + 6LL * A, w.gK + 6 * D, anew, gp, w.gbuf);
    }
    for (int d = 0; d < D; ++d) an[d] += anew[d];
    for (int j = 0; j < 6; ++j) {
      if (j == 1) continue;
      const T hb = hd * C.b[j];
      for (int d = 0; d < D; ++d) w.gK[j * D + d] += hb * anew[d];
    }
    for (int st = 5; st >= 1; --st) {
      dp5_stage_arg<T>(C, D, st, yn, Kb, hd, w.ys);
      for (int d = 0; d < D; ++d) w.gY[d] = T(0);
      vjp_field<T, GP>(v, w.ys, w.u, w.acts + (long long)st * A, w.gK + st * D, w.gY, gp, w.gbuf);
      for (int d = 0; d < D; ++d) an[d] += w.gY[d];
      for (int j = 0; j < st; ++j) {
        const T ha = hd * C.a[st][j];
        for (int d = 0; d < D; ++d) w.gK[j * D + d] += ha * w.gY[d];
      }
    }
    vjp_field<T, GP>(v, yn, w.u, w.acts, w.gK, an, gp, w.gbuf);
    for (int d = 0; d < D; ++d) a[d] = an[d];
  }
  // doses at t0
  const double t0 = tr.out_t[0];
  for (int e = 0; e < tr.n_ev; ++e)
    if (tr.ev_t[e] == t0) g_ev[e] += a[tr.ev_s[e]];
  for (int d = 0; d < D; ++d) g_y0[d] = a[d] + g_out[d];
}

HNODE_NAMESPACE_END  // namespace hnode
