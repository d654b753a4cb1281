// AVX-512 build of the CPU launchers (see kernels.inc): CMake adds -mavx512f -mavx512dq
// -mavx512vl -mavx2 -mfma on x86-64, and the lanes are 8 wide (one zmm of doubles). Elsewhere this
// file compiles to avx512_compiled() == false. Same arithmetic as the other builds (no contraction).
#include "args.h"

#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define HNODE_ISA isa_avx512  // own instantiations of the core templates (see macros.h)
#define HNODE_CPU_NS avx512
#define HNODE_CPU_LANE_WIDTH 8
#include "kernels.inc"
namespace hnode {
namespace cpu {
bool avx512_compiled() { return true; }
}  // namespace cpu
}  // namespace hnode
#else
namespace hnode {
namespace cpu {
bool avx512_compiled() { return false; }
namespace avx512 {
void solve(const Args&, bool, std::uintptr_t, std::uintptr_t) {}
void backward(const Args&, bool, std::uintptr_t, std::uintptr_t, std::uintptr_t, std::uintptr_t) {}
void backsolve(const Args&, bool, std::uintptr_t, std::uintptr_t, std::uintptr_t, std::uintptr_t, std::uintptr_t) {}
void eval(bool, std::uintptr_t, long long, std::uintptr_t, long long, std::uintptr_t, std::uintptr_t, int, int,
          std::uintptr_t, int, int) {}
void vjp(bool, std::uintptr_t, long long, std::uintptr_t, long long, std::uintptr_t, std::uintptr_t,
         std::uintptr_t, int, int, std::uintptr_t, std::uintptr_t) {}
}  // namespace avx512
}  // namespace cpu
}  // namespace hnode
#endif
