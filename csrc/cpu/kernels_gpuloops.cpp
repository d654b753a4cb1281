// The CPU launchers (kernels.inc) built with the GPU's loop forms (HNODE_GPU_LOOPS in
// hnode/field.h: the register-blocked dense matvec, the interleaved per-thread parameter
// partials of the adjoint, no lanes), baseline ISA. Not picked by default: tests select it
// (HNODE_CPU_ISA=gpuloops, or _C.cpu_set_isa("gpuloops")) to run the CUDA kernels' code on
// the CPU and compare it bitwise with the host forms (same summation orders, no contraction).
#define HNODE_GPU_LOOPS 1
#define HNODE_ISA isa_gpuloops  // own instantiations of the core templates (see macros.h)
#define HNODE_CPU_NS gpuloops
#include "kernels.inc"
