// CUDA device queries. Linked against the static CUDA runtime, so the module imports
// on machines without a driver; every query here reports "no device" instead of raising.
#include <cuda_runtime.h>

namespace hnode {
namespace cuda {

int device_count() {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // clear it so later runtime calls do not report it
    return 0;
  }
  return n;
}

int runtime_version() {
  return CUDART_VERSION;
}

}  // namespace cuda
}  // namespace hnode
