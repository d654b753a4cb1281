// Portability macros shared by the host (g++) and device (nvcc) builds of the core headers.
#pragma once

#if defined(__CUDACC__)
#define HNODE_HD __host__ __device__
#define HNODE_DEVICE __device__
#define HNODE_HOST __host__
#define HNODE_INLINE __forceinline__
#define HNODE_HD_INLINE __host__ __device__ __forceinline__
#else
#define HNODE_HD
#define HNODE_DEVICE
#define HNODE_HOST
#if defined(_MSC_VER)
#define HNODE_INLINE __forceinline
#else
#define HNODE_INLINE inline __attribute__((always_inline))
#endif
#define HNODE_HD_INLINE HNODE_INLINE
#endif

#if defined(__CUDA_ARCH__)
#define HNODE_DEVICE_PASS 1
#else
#define HNODE_DEVICE_PASS 0
#endif

#if defined(_MSC_VER)
#define HNODE_RESTRICT __restrict
#else
#define HNODE_RESTRICT __restrict__
#endif

// Every build of the core lives in its own inline namespace: kernels_base.cpp, kernels_avx2.cpp
// and the CUDA sources instantiate the same templates (eval_field<double>, solve_one, ...), and
// with one mangled name the linker would keep a single copy for all of them -- the AVX2 launchers
// then silently ran the baseline-ISA field code. A TU may define HNODE_ISA before the first include.
#ifndef HNODE_ISA
#if defined(__CUDACC__)
#define HNODE_ISA isa_cuda
#else
#define HNODE_ISA isa_base
#endif
#endif
#define HNODE_NAMESPACE_BEGIN \
  namespace hnode {           \
  inline namespace HNODE_ISA {
#define HNODE_NAMESPACE_END \
  }                         \
  }
