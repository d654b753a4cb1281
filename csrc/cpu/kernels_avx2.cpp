// AVX2 + FMA build of the CPU launchers (see kernels.inc); CMake adds -mavx2 -mfma on x86-64.
// Elsewhere this file compiles to avx2_compiled() == false.
#include "args.h"

#if defined(__AVX2__) && defined(__FMA__)
#define HNODE_ISA isa_avx2  // own instantiations of the core templates (see macros.h)
#define HNODE_CPU_NS avx2
#include "kernels.inc"
namespace hnode {
namespace cpu {
bool avx2_compiled() { return true; }
}  // namespace cpu
}  // namespace hnode
#else
namespace hnode {
namespace cpu {
bool avx2_compiled() { return false; }
namespace avx2 {
void solve(const Args&, bool, std::uintptr_t, std::uintptr_t) {}
void backward(const Args&, bool, std::uintptr_t, std::uintptr_t, std::uintptr_t, std::uintptr_t) {}
void backsolve(const Args&, bool, std::uintptr_t, std::uintptr_t, std::uintptr_t, std::uintptr_t, std::uintptr_t) {}
void eval(bool, std::uintptr_t, long long, std::uintptr_t, long long, std::uintptr_t, std::uintptr_t, int, int,
          std::uintptr_t, int, int) {}
void vjp(bool, std::uintptr_t, long long, std::uintptr_t, long long, std::uintptr_t, std::uintptr_t,
         std::uintptr_t, int, int, std::uintptr_t, std::uintptr_t) {}
}  // namespace avx2
}  // namespace cpu
}  // namespace hnode
#endif
