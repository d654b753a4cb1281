// Lockstep solves of W trajectories on one CPU thread ("lanes").
//
// One trajectory's field evaluation is a chain of short dependent steps (gather, layer, tanh,
// layer, ...): for a small sparse network the core waits on latency most of the time. Here W
// trajectories advance together: every field evaluation of a DP5 step (or of the initial-step
// heuristic) is done for all W at once by eval_field_lanes, whose values sit in a
// [unit][lane] layout so each weight multiplies a whole vector of lanes. Everything else --
// stage combinations, error control, outputs, stops and doses -- runs per lane through the
// same pieces solve_one uses (hnode/solve.h), so a lane's results are bitwise those of
// solve_one: per unit, the sums of eval_field_lanes run over the same terms in the same order.
// A lane whose trajectory ends takes the next one from the source.
#pragma once

#include "hnode/dopri5.h"
#include "hnode/field.h"
#include "hnode/macros.h"
#include "hnode/solve.h"

HNODE_NAMESPACE_BEGIN

// Scratch values eval_field_lanes needs for W lanes.
HNODE_HD inline int lanes_scratch_size(const int* ints, int W) {
  const int L = ints[HDR_L];
  int n = ints[HDR_NIN];
  for (int l = 0; l < L; ++l) n += ints[SPEC_HEADER + SPEC_LAYER_COLS * l + LCOL_NOUT];
  return (n > 0 ? n : 1) * W + (ints[HDR_NTERMS] > 0 ? ints[HDR_NTERMS] : 1);
}

// Units i .. i+NB of a dense layer for W lanes: pre[(i+r)*W + w] = sum_j WT[j][i+r] h[j][w] +
// bias[i+r], the NB x W accumulators held in registers across the whole input loop and each
// weight broadcast once per block (a GEMM micro-kernel). Per unit the sum runs over j in order
// from 0, then the bias: the order of eval_field's dense loop, so the results are bitwise equal.
template <class T, int W, int NB>
HNODE_HD_INLINE void dense_lanes_block(const T* HNODE_RESTRICT WT, const T* HNODE_RESTRICT hin, const T* HNODE_RESTRICT bias,
                                       int nin, int nout, int i, T* HNODE_RESTRICT pre) {
  T acc[NB][W];
#pragma GCC unroll 8
  for (int r = 0; r < NB; ++r)
#pragma GCC unroll 8
    for (int w = 0; w < W; ++w) acc[r][w] = T(0);
  for (int j = 0; j < nin; ++j) {
    const T* HNODE_RESTRICT hj = hin + j * W;
    const T* HNODE_RESTRICT wj = WT + (long)j * nout + i;
#pragma GCC unroll 8
    for (int r = 0; r < NB; ++r) {
      const T c = wj[r];
#pragma GCC unroll 8
      for (int w = 0; w < W; ++w) acc[r][w] += c * hj[w];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < NB; ++r)
#pragma GCC unroll 8
    for (int w = 0; w < W; ++w) pre[(i + r) * W + w] = acc[r][w] + bias[i + r];
}

// dz[w] = f(z[w], u[w]) for w < W (u[w] may be null when K == 0). s: lanes_scratch_size values.
// The same arithmetic, per unit in the same order, as eval_field (bitwise equal results).
template <class T, int W>
HNODE_HD void eval_field_lanes(const FieldView<T>& v, const T* const* z, const T* const* u, T* const* dz,
                               T* HNODE_RESTRICT s) {
  const int D = v.D;
  const T* cst = v.params + v.const_off;
  for (int w = 0; w < W; ++w)
    for (int d = 0; d < D; ++d) dz[w][d] = cst[d];
  T* p = s;
  if (v.L > 0) {
    T* h0 = p;
    for (int k = 0; k < v.n_in; ++k) {
      const int idx = v.in_idx[k];
      for (int w = 0; w < W; ++w) h0[k * W + w] = idx < D ? z[w][idx] : u[w][idx - D];
    }
    const T* hin = h0;
    p += v.n_in * W;
    for (int l = 0; l < v.L; ++l) {
      const int* row = v.layers + SPEC_LAYER_COLS * l;
      const int nin = row[LCOL_NIN], nout = row[LCOL_NOUT], fmt = row[LCOL_FMT], w_off = row[LCOL_WOFF], b_off = row[LCOL_BOFF],
                act = row[LCOL_ACT];
      T* HNODE_RESTRICT pre = p;
      const T* HNODE_RESTRICT bias = v.params + b_off;
      if (fmt == 0) {
        const T* HNODE_RESTRICT WT = v.paramsT + w_off;  // (nin, nout): the transposed weights
        int i = 0;
        for (; i + 8 <= nout; i += 8) dense_lanes_block<T, W, 8>(WT, hin, bias, nin, nout, i, pre);
        for (; i + 4 <= nout; i += 4) dense_lanes_block<T, W, 4>(WT, hin, bias, nin, nout, i, pre);
        for (; i < nout; ++i) dense_lanes_block<T, W, 1>(WT, hin, bias, nin, nout, i, pre);
      } else {
        const int* rp = v.ints + row[LCOL_RP];
        const int* col = v.ints + row[LCOL_COL];
        const T* vals = v.params + w_off;
        for (int i = 0; i < nout; ++i) {
          T acc[W];
          for (int w = 0; w < W; ++w) acc[w] = T(0);
          for (int k = rp[i]; k < rp[i + 1]; ++k) {
            const T vk = vals[k];
            const T* HNODE_RESTRICT hj = hin + col[k] * W;
            for (int w = 0; w < W; ++w) acc[w] += vk * hj[w];
          }
          for (int w = 0; w < W; ++w) pre[i * W + w] = acc[w] + bias[i];
        }
      }
      if (act == ACT_TANH) {
        for (int i = 0; i < nout * W; ++i) pre[i] = tanh_fast(pre[i]);
      } else if (act != ACT_IDENTITY) {
        for (int i = 0; i < nout * W; ++i) pre[i] = activate<T>(act, pre[i]);
      }
      hin = pre;
      p += nout * W;
    }
    for (int i = 0; i < v.n_out; ++i) {
      const int o = v.out_idx[i];
      for (int w = 0; w < W; ++w) dz[w][o] += hin[i * W + w];
    }
  }
  if (v.n_terms > 0)
    for (int w = 0; w < W; ++w) eval_terms<T>(v, z[w], u[w], dz[w], p);
}

// Scratch values of solve_lanes (buf) for W lanes, given scratch = lanes_scratch_size(ints, W).
HNODE_HD inline long long lanes_work_size(int D, int K, int W, int scratch) {
  // per lane: y, ynew, K (7D), ys, y1, scale, u ; plus dummy z / u / dz and the eval scratch
  return (long long)W * (12LL * D + (K > 0 ? K : 1)) + 2LL * D + (K > 0 ? K : 1) + scratch;
}

// Solves every trajectory the source hands out, W at a time. Src:
//   bool take(int lane, int& b)   the next trajectory index for a lane (false: none left); the
//                                 lane's recorder starts afresh
//   Traj<T> traj(int b)           its data
//   auto& rec(int lane)           the lane's recorder (solve_one's Rec interface)
//   void done(int lane, int b)    called once b's solve ended (stats already written)
template <class T, int W, class Src>
void solve_lanes(const FieldView<T>& v, const SolveCfg& cfg, Src& src, T* buf) {
  const int D = v.D, nK = v.K > 0 ? v.K : 1;
  const DPCoef<T> C;
  const T rtol = (T)cfg.rtol, atol = (T)cfg.atol;
  T *y[W], *ynew[W], *Kb[W], *ys[W], *y1[W], *scale[W], *u[W];
  for (int w = 0; w < W; ++w) {
    y[w] = buf;
    ynew[w] = buf + D;
    Kb[w] = buf + 2 * D;
    ys[w] = buf + 9 * D;
    y1[w] = buf + 10 * D;
    scale[w] = buf + 11 * D;
    u[w] = buf + 12 * D;
    buf += 12 * D + nK;
  }
  T* dummy_z = buf;  // idle lanes evaluate the field at 0 (results unused)
  T* dummy_dz = buf + D;
  T* dummy_u = buf + 2 * D;
  T* es = buf + 2 * D + nK;
  for (int i = 0; i < 2 * D + nK; ++i) buf[i] = T(0);

  int lane_b[W];
  Traj<T> tr[W];
  SolveState st[W];
  double h0[W], d1[W], span[W];
  bool run[W];  // lanes taking part in the current batched evaluation
  for (int w = 0; w < W; ++w) lane_b[w] = -1;
  const T* zin[W];
  const T* uin[W];
  T* dzo[W];

  // batched f at zsel(w) into dsel(w) for lanes with run[w]
  auto eval_batch = [&](auto zsel, auto dsel) {
    for (int w = 0; w < W; ++w) {
      zin[w] = run[w] ? zsel(w) : dummy_z;
      uin[w] = run[w] ? u[w] : dummy_u;
      dzo[w] = run[w] ? dsel(w) : dummy_dz;
    }
    eval_field_lanes<T, W>(v, zin, uin, dzo, es);
  };
  auto finish = [&](int w) {
    solve_write_stats<T>(tr[w], st[w]);
    src.done(w, lane_b[w]);
    lane_b[w] = -1;
  };

  for (;;) {
    int n_active = 0;
    for (int w = 0; w < W; ++w) {
      while (lane_b[w] < 0) {
        int b;
        if (!src.take(w, b)) break;
        lane_b[w] = b;
        tr[w] = src.traj(b);
        if (!solve_begin<T>(tr[w], D, st[w], y[w], ys[w])) finish(w);
      }
      n_active += lane_b[w] >= 0;
    }
    if (n_active == 0) break;
    // initial steps (at the start and after each stop)
    bool any_init = false;
    for (int w = 0; w < W; ++w) {
      run[w] = false;
      if (lane_b[w] < 0) continue;
      input_at<T>(tr[w], v.K, st[w].t, u[w]);
      run[w] = st[w].need_init;
      any_init |= run[w];
    }
    if (any_init) {
      eval_batch([&](int w) { return y[w]; }, [&](int w) { return Kb[w]; });
      for (int w = 0; w < W; ++w) {
        if (!run[w]) continue;
        span[w] = solve_seg_end(tr[w].stops, tr[w].n_stops, st[w]) - st[w].t;
        h0[w] = dp5_initial_step_a<T>(D, y[w], Kb[w], span[w], rtol, atol, y1[w], scale[w], &d1[w]);
      }
      eval_batch([&](int w) { return y1[w]; }, [&](int w) { return ynew[w]; });  // ynew: f1 scratch
      for (int w = 0; w < W; ++w) {
        if (!run[w]) continue;
        const double hi = dp5_initial_step_b<T>(D, Kb[w], ynew[w], span[w], h0[w], d1[w], y1[w], scale[w]);
        if (!solve_init_done<T>(st[w], D, Kb[w], hi)) finish(w);
      }
    }
    // one step attempt per lane
    bool any = false;
    for (int w = 0; w < W; ++w) {
      run[w] = false;
      if (lane_b[w] < 0) continue;
      if (!solve_prepare_step(tr[w].stops, tr[w].n_stops, st[w])) {
        finish(w);
        continue;
      }
      run[w] = true;
      any = true;
    }
    if (!any) continue;
    for (int s = 1; s < 6; ++s) {
      for (int w = 0; w < W; ++w)
        if (run[w]) dp5_stage_arg<T>(C, D, s, y[w], Kb[w], (T)st[w].h, ys[w]);
      eval_batch([&](int w) { return ys[w]; }, [&](int w) { return Kb[w] + s * D; });
    }
    for (int w = 0; w < W; ++w)
      if (run[w]) dp5_new_state<T>(C, D, y[w], Kb[w], (T)st[w].h, ynew[w]);
    eval_batch([&](int w) { return ynew[w]; }, [&](int w) { return Kb[w] + 6 * D; });
    for (int w = 0; w < W; ++w) {
      if (!run[w]) continue;
      if (!solve_after_step<T>(C, cfg, tr[w], D, st[w], y[w], Kb[w], ynew[w], ys[w], src.rec(w)))
        finish(w);
    }
  }
}

HNODE_NAMESPACE_END  // namespace hnode
