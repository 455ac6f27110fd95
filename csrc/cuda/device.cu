// Device queries that must not fail on a machine without a GPU or driver.
#include <cuda_runtime.h>

#include "common.h"

namespace pyanom {

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return count;
}

int cuda_runtime_version() {
  int version = 0;
  cudaRuntimeGetVersion(&version);
  return version;
}

}  // namespace pyanom
