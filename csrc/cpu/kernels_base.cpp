// Baseline-ISA build of the CPU launchers (see kernels.inc).
#define HNODE_CPU_NS base
#include "kernels.inc"
