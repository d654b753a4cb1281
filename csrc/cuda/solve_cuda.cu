// CUDA ensemble kernels: the whole adaptive DP5 solve (hnode::solve_one) and its discrete
// adjoint (hnode::adjoint_one) of csrc/include/hnode/solve.h, one thread per trajectory,
// in one launch each (plus a tiny parameter-transpose kernel before, and a deterministic
// parameter-gradient reduction after the adjoint).
//
// Work layout (docs/cuda.md): thread i handles trajectories i, i + n_thr, ... (grid-stride).
// The FieldSpec ints, the parameters and their transposed copy are staged in shared memory
// when they fit (<= 48 KiB per block), else read from global memory (L1/L2 cached).
// Per-thread workspace (Work<T>): a thread-local array of a fixed bucket size (1024 or 2048
// elements of T; the compiler keeps it in local memory, interleaved across threads by the
// hardware and cached in L1) when Work<T>::size fits, else a slice of a global scratch
// buffer allocated by PyTorch (generic path).
#include <cuda_runtime.h>

#include <cstdlib>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "hnode/field.h"
#include "hnode/solve.h"
#include "hnode/spec_check.h"
#include "solve_cuda.cuh"

namespace hnode {
namespace cuda {
namespace {

constexpr int BLOCK = 128;
constexpr int SMEM_LIMIT = 48 * 1024;

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    throw std::runtime_error(std::string("hnode_fast CUDA kernel ") + what + " failed: " + cudaGetErrorName(e) +
                             ": " + cudaGetErrorString(e));
  }
}
void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

template <class P>
__host__ __device__ __forceinline__ P* ptr(std::uintptr_t p) {
  return reinterpret_cast<P*>(p);
}

// What every kernel needs besides cpu::Args (device pointers, sizes, layout flags).
struct KArgs {
  const int* ints;  // device
  int n_ints;
  const void* params;
  const void* params_t;
  int use_smem;
  int A, G, K;
  long long wsz;
  void* ws;  // generic path scratch
  int n_thr;
};

// params with every dense weight block (n_out, n_in) stored transposed (see field.h)
template <class T>
__global__ void transpose_params_kernel(const int* __restrict__ ints, const T* __restrict__ p, T* __restrict__ pT,
                                        long long P) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= P) return;
  const int L = ints[HDR_L];
  long long dst = i;
  for (int l = 0; l < L; ++l) {
    const int* row = ints + SPEC_HEADER + SPEC_LAYER_COLS * l;
    if (row[LCOL_FMT] != 0) continue;
    const long long nin = row[LCOL_NIN], nout = row[LCOL_NOUT], w_off = row[LCOL_WOFF];
    if (i >= w_off && i < w_off + nin * nout) {
      const long long r = (i - w_off) / nin, c = (i - w_off) % nin;
      dst = w_off + c * nout + r;
    }
  }
  pT[dst] = p[i];
}

// P rounded up to 4 values: shared-memory blocks start 16-byte aligned.
__host__ __device__ inline long long smem_pad(long long P) { return (P + 3) & ~3LL; }

// Stages ints, params and paramsT in shared memory (whole block, before any early exit).
template <class T>
__device__ FieldView<T> stage_field(const KArgs& k, long long P) {
  extern __shared__ __align__(16) unsigned char smem[];
  const T* params = static_cast<const T*>(k.params);
  const T* pT = static_cast<const T*>(k.params_t);
  const int* ints = k.ints;
  if (k.use_smem) {
    T* sp = reinterpret_cast<T*>(smem);
    T* spT = sp + smem_pad(P);  // 16-byte aligned, like the global copy: vector loads in dense_block
    int* si = reinterpret_cast<int*>(spT + smem_pad(P));
    for (long long i = threadIdx.x; i < P; i += blockDim.x) {
      sp[i] = params[i];
      spT[i] = pT[i];
    }
    for (int i = threadIdx.x; i < k.n_ints; i += blockDim.x) si[i] = ints[i];
    __syncthreads();
    params = sp;
    pT = spT;
    ints = si;
  }
  return make_field_view<T>(ints, params, pT);
}

template <class T>
__device__ Traj<T> make_traj(const cpu::Args& a, int K, int b, T* out, long long* stats) {
  Traj<T> tr;
  const int D = a.D;
  tr.y0 = ptr<const T>(a.y0) + (long long)b * D;
  tr.out_t = ptr<const double>(a.out_t) + (long long)b * a.T;
  tr.n_out = a.T;
  tr.stops = a.S > 0 ? ptr<const double>(a.stops) + (long long)b * a.S : nullptr;
  tr.n_stops = a.S;
  if (a.E > 0) {
    tr.ev_t = ptr<const double>(a.ev_t) + (long long)b * a.E;
    tr.ev_s = ptr<const int>(a.ev_s) + (long long)b * a.E;
    tr.ev_a = ptr<const T>(a.ev_a) + (long long)b * a.E;
  }
  tr.n_ev = a.E;
  if (a.J > 0) {
    tr.in_t = ptr<const double>(a.in_t) + (long long)b * a.J;
    tr.in_v = ptr<const T>(a.in_v) + (long long)b * a.J * K;
  }
  tr.n_sw = a.J;
  tr.out = out ? out + (long long)b * D : nullptr;
  tr.out_stride = (long long)a.B * D;
  tr.stats = stats ? stats + 4LL * b : nullptr;
  return tr;
}

// Records accepted steps into the per-trajectory checkpoint buffers; n = -1 on overflow.
template <class T>
struct DevRecord {
  double *t, *tn;
  T* y;
  unsigned char* jump;
  long long n;
  int cap;
  __device__ void step(double t0, double t1, const void* yp, int D) {
    if (n < 0) return;
    if (n >= cap) {
      n = -1;
      return;
    }
    t[n] = t0;
    tn[n] = t1;
    const T* yy = static_cast<const T*>(yp);
    for (int d = 0; d < D; ++d) y[n * D + d] = yy[d];
    jump[n] = 0;
    ++n;
  }
  __device__ void jump_after_last() {
    if (n > 0) jump[n - 1] = 1;
  }
};

template <class T>
__device__ DevRecord<T> dev_record(const cpu::Args& a, int b) {
  DevRecord<T> r;
  const long long off = (long long)b * a.ck_cap;
  r.t = ptr<double>(a.ck_t) + off;
  r.tn = ptr<double>(a.ck_tn) + off;
  r.y = ptr<T>(a.ck_y) + off * a.D;
  r.jump = ptr<unsigned char>(a.ck_jump) + off;
  r.n = 0;
  r.cap = a.ck_cap;
  return r;
}

// Per-thread workspace: a local array of WS elements, or (WS == 0) the global scratch.
template <class T, int WS>
struct Scratch {
  T buf[WS];
  __device__ T* get(const KArgs&, int) { return buf; }
};
template <class T>
struct Scratch<T, 0> {
  __device__ T* get(const KArgs& k, int tid) { return static_cast<T*>(k.ws) + (long long)tid * k.wsz; }
};

// MINB: minimum resident blocks per SM asked of ptxas (__launch_bounds__), i.e. a register cap
// of 65536 / (BLOCK * MINB) per thread; 1 leaves ptxas free (see occupancy() below).
template <class T, int WS, int MINB = 1>
__global__ void __launch_bounds__(BLOCK, MINB) solve_kernel(cpu::Args a, KArgs k, T* out, long long* stats) {
  const FieldView<T> v = stage_field<T>(k, a.P);
  const int tid = blockIdx.x * blockDim.x + threadIdx.x;
  if (tid >= k.n_thr) return;
  SolveCfg cfg;
  cfg.rtol = a.rtol;
  cfg.atol = a.atol;
  cfg.max_steps = a.max_steps;
  Scratch<T, WS> s;
  Work<T> w;
  w.bind(s.get(k, tid), a.D, k.K, k.A, k.G);
  for (int b = tid; b < a.B; b += k.n_thr) {
    Traj<T> tr = make_traj<T>(a, k.K, b, out, stats);
    if (a.ck_cap > 0) {
      DevRecord<T> rec = dev_record<T>(a, b);
      solve_one<T>(v, cfg, tr, w, rec);
      ptr<long long>(a.ck_n)[b] = rec.n;
    } else {
      NoRecord rec;
      solve_one<T>(v, cfg, tr, w, rec);
    }
  }
}

// Discrete adjoint from the stored checkpoints. Trajectories whose checkpoints overflowed
// (ck_n < 0) are skipped here (zero gradients); the Python side re-solves them with a larger
// capacity and runs this kernel again on that subset.
template <class T, int WS, int MINB = 1>
__global__ void __launch_bounds__(BLOCK, MINB) adjoint_kernel(cpu::Args a, KArgs k, const T* g_out, T* partials, T* gy0,
                                                        T* gev) {
  const FieldView<T> v = stage_field<T>(k, a.P);
  const int tid = blockIdx.x * blockDim.x + threadIdx.x;
  if (tid >= k.n_thr) return;
  // this thread's partial parameter gradient, interleaved with the other threads' (entry i at
  // partials[i * n_thr + tid]): a warp's update of one entry is one coalesced access
  const StridedGrad<T> my_gp{partials + tid, k.n_thr};
  for (long long i = 0; i < a.P; ++i) my_gp[i] = T(0);
  Scratch<T, WS> s;
  Work<T> w;
  w.bind(s.get(k, tid), a.D, k.K, k.A, k.G);
  T dummy_ev[1];
  for (int b = tid; b < a.B; b += k.n_thr) {
    Traj<T> tr = make_traj<T>(a, k.K, b, nullptr, nullptr);
    T* gev_b = a.E > 0 ? gev + (long long)b * a.E : dummy_ev;
    T* gy0_b = gy0 + (long long)b * a.D;
    const long long nck = a.ck_cap > 0 ? ptr<const long long>(a.ck_n)[b] : -1;
    if (nck < 0) {
      for (int d = 0; d < a.D; ++d) gy0_b[d] = T(0);
      for (int e = 0; e < a.E; ++e) gev_b[e] = T(0);
      continue;
    }
    const DevRecord<T> r = dev_record<T>(a, b);
    adjoint_one<T, StridedGrad<T>>(v, tr, (int)nck, r.t, r.tn, r.y, r.jump, g_out + (long long)b * a.D,
                                   (long long)a.B * a.D, w, my_gp, gy0_b, gev_b);
  }
}

// gp[i] = sum over threads t of partials[i * n_thr + t]: one block per parameter (grid-stride);
// thread r sums rows r, r + RB, ... in order, then a fixed tree in shared memory. The order
// depends only on n_thr: deterministic, no atomics.
constexpr int RB = 256;
template <class T>
__global__ void __launch_bounds__(RB) reduce_partials_kernel(const T* __restrict__ partials, int n_thr, long long P,
                                                             T* __restrict__ gp) {
  __shared__ T sh[RB];
  for (long long i = blockIdx.x; i < P; i += gridDim.x) {
    const T* row = partials + i * n_thr;
    T s = T(0);
    for (int r = threadIdx.x; r < n_thr; r += RB) s += row[r];
    sh[threadIdx.x] = s;
    __syncthreads();
    for (int w = RB / 2; w > 0; w >>= 1) {
      if (threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
      __syncthreads();
    }
    if (threadIdx.x == 0) gp[i] = sh[0];
    __syncthreads();
  }
}

int bucket_for(long long wsz) {
  if (wsz <= 1024) return 1024;
  if (wsz <= 2048) return 2048;
  return 0;
}

template <class T>
KArgs prepare(const Args& x, cudaStream_t st, long long* smem_bytes) {
  const cpu::Args& a = x.a;
  const int* ints = ptr<const int>(a.ints);
  check_spec(ints, a.n_ints, a.P, a.D);
  // this module links its own (static) CUDA runtime: select the tensors' device in it
  check(cudaSetDevice(x.device), "cudaSetDevice");
  KArgs k;
  k.ints = ptr<const int>(x.ints_dev);
  k.n_ints = (int)a.n_ints;
  k.params = ptr<const void>(a.params);
  k.params_t = ptr<const void>(x.params_t);
  k.A = acts_size(ints);
  k.G = grad_scratch_size(ints);
  k.K = ints[HDR_K];
  k.wsz = Work<T>::size(a.D, k.K, k.A, k.G);
  k.ws = ptr<void>(x.ws);
  k.n_thr = x.n_thr;
  if (k.n_thr < 1) throw std::runtime_error("hnode_fast cuda: n_thr must be >= 1");
  if (bucket_for(k.wsz) == 0 && x.ws_elems < (long long)k.n_thr * k.wsz)
    throw std::runtime_error("hnode_fast cuda: workspace too small (" + std::to_string(x.ws_elems) + " < " +
                             std::to_string((long long)k.n_thr * k.wsz) + ")");
  const long long smem = 2LL * smem_pad(a.P) * (long long)sizeof(T) + a.n_ints * (long long)sizeof(int);
  k.use_smem = smem <= SMEM_LIMIT ? 1 : 0;
  *smem_bytes = k.use_smem ? smem : 0;
  if (a.P > 0) {
    const unsigned grid = (unsigned)((a.P + 255) / 256);
    transpose_params_kernel<T><<<grid, 256, 0, st>>>(k.ints, ptr<const T>(a.params), ptr<T>(x.params_t), a.P);
    check_launch("transpose_params_kernel");
  }
  return k;
}

// Register cap of the float local-memory-bucket kernels (__launch_bounds__ min blocks per SM):
// 1 (none; ptxas picks 168-184 registers on sm_90: 2-3 blocks of 128 per SM), 4 (<= 128
// registers, a few spills) or 6 (<= 80, ~2 KB of spill loads). Defaults from the H200
// measurement (benchmarks/results/gpu.md, bench_cuda --minb 1,4,6, D=8 (32, 32) float32):
// the solve is fastest uncapped (B=1e5: 5.0 / 6.3 / 5.9 ms for 1 / 4 / 6), the adjoint at 6
// (B=1e5: ~114 / 86 / 58 ms): its per-thread gradient updates are latency-bound and gain from
// the extra warps. HNODE_CUDA_MINB sets both, HNODE_CUDA_MINB_SOLVE / _ADJOINT one (read per
// launch, so a benchmark switches them in one process). Float64 and the generic path use 1.
constexpr int DEFAULT_MINB_SOLVE = 1, DEFAULT_MINB_ADJOINT = 6;
int occupancy(const char* var, int dflt) {
  const char* e = std::getenv(var);
  if (!(e && *e)) e = std::getenv("HNODE_CUDA_MINB");
  const int m = e && *e ? std::atoi(e) : dflt;
  return m == 1 || m == 4 || m == 6 ? m : dflt;
}

template <class T, int WS, int MINB>
void launch_solve(unsigned grid, long long smem, cudaStream_t st, const cpu::Args& a, const KArgs& k, T* out,
                  long long* stats) {
  solve_kernel<T, WS, MINB><<<grid, BLOCK, smem, st>>>(a, k, out, stats);
}

template <class T, int WS>
void launch_solve_occ(unsigned grid, long long smem, cudaStream_t st, const cpu::Args& a, const KArgs& k, T* out,
                      long long* stats) {
  if constexpr (std::is_same<T, float>::value && WS > 0) {
    switch (occupancy("HNODE_CUDA_MINB_SOLVE", DEFAULT_MINB_SOLVE)) {
      case 4: return launch_solve<T, WS, 4>(grid, smem, st, a, k, out, stats);
      case 6: return launch_solve<T, WS, 6>(grid, smem, st, a, k, out, stats);
      default: break;
    }
  }
  launch_solve<T, WS, 1>(grid, smem, st, a, k, out, stats);
}

template <class T, int WS>
void launch_adjoint_occ(unsigned grid, long long smem, cudaStream_t st, const cpu::Args& a, const KArgs& k,
                        const T* go, T* part, T* gy0, T* gev) {
  if constexpr (std::is_same<T, float>::value && WS > 0) {
    switch (occupancy("HNODE_CUDA_MINB_ADJOINT", DEFAULT_MINB_ADJOINT)) {
      case 4: adjoint_kernel<T, WS, 4><<<grid, BLOCK, smem, st>>>(a, k, go, part, gy0, gev); return;
      case 6: adjoint_kernel<T, WS, 6><<<grid, BLOCK, smem, st>>>(a, k, go, part, gy0, gev); return;
      default: break;
    }
  }
  adjoint_kernel<T, WS, 1><<<grid, BLOCK, smem, st>>>(a, k, go, part, gy0, gev);
}

template <class T>
void solve_impl(const Args& x, std::uintptr_t out_p, std::uintptr_t stats_p) {
  cudaStream_t st = reinterpret_cast<cudaStream_t>(x.stream);
  long long smem = 0;
  const KArgs k = prepare<T>(x, st, &smem);
  const unsigned grid = (unsigned)((k.n_thr + BLOCK - 1) / BLOCK);
  T* out = ptr<T>(out_p);
  long long* stats = ptr<long long>(stats_p);
  switch (bucket_for(k.wsz)) {
    case 1024: launch_solve_occ<T, 1024>(grid, smem, st, x.a, k, out, stats); break;
    case 2048: launch_solve_occ<T, 2048>(grid, smem, st, x.a, k, out, stats); break;
    default: launch_solve_occ<T, 0>(grid, smem, st, x.a, k, out, stats); break;
  }
  check_launch("solve_kernel");
}

template <class T>
void backward_impl(const Args& x, std::uintptr_t g_out, std::uintptr_t gp, std::uintptr_t gy0, std::uintptr_t gev,
                   std::uintptr_t partials) {
  cudaStream_t st = reinterpret_cast<cudaStream_t>(x.stream);
  long long smem = 0;
  const KArgs k = prepare<T>(x, st, &smem);
  const unsigned grid = (unsigned)((k.n_thr + BLOCK - 1) / BLOCK);
  const T* go = ptr<const T>(g_out);
  T* part = ptr<T>(partials);
  switch (bucket_for(k.wsz)) {
    case 1024: launch_adjoint_occ<T, 1024>(grid, smem, st, x.a, k, go, part, ptr<T>(gy0), ptr<T>(gev)); break;
    case 2048: launch_adjoint_occ<T, 2048>(grid, smem, st, x.a, k, go, part, ptr<T>(gy0), ptr<T>(gev)); break;
    default: launch_adjoint_occ<T, 0>(grid, smem, st, x.a, k, go, part, ptr<T>(gy0), ptr<T>(gev)); break;
  }
  check_launch("adjoint_kernel");
  if (x.a.P > 0) {
    const unsigned g2 = (unsigned)(x.a.P < 65536 ? x.a.P : 65536);
    reduce_partials_kernel<T><<<g2, RB, 0, st>>>(part, k.n_thr, x.a.P, ptr<T>(gp));
    check_launch("reduce_partials_kernel");
  }
}

}  // namespace

Plan plan(const int* ints, long long n_ints, long long P, int D, bool dbl) {
  check_spec(ints, n_ints, P, D);
  const int A = acts_size(ints), G = grad_scratch_size(ints), K = ints[HDR_K];
  Plan p;
  p.wsz = dbl ? Work<double>::size(D, K, A, G) : Work<float>::size(D, K, A, G);
  p.bucket = bucket_for(p.wsz);
  return p;
}

void solve(const Args& a, bool dbl, std::uintptr_t out, std::uintptr_t stats) {
  if (dbl)
    solve_impl<double>(a, out, stats);
  else
    solve_impl<float>(a, out, stats);
}

void backward(const Args& a, bool dbl, std::uintptr_t g_out, std::uintptr_t gp, std::uintptr_t gy0,
              std::uintptr_t gev, std::uintptr_t partials) {
  if (dbl)
    backward_impl<double>(a, g_out, gp, gy0, gev, partials);
  else
    backward_impl<float>(a, g_out, gp, gy0, gev, partials);
}

}  // namespace cuda
}  // namespace hnode
