// Every CUDA call and launch goes through PYANOM_CUDA_CHECK so failures surface as Python errors.
#pragma once
#include <cuda_runtime.h>
#include <stdexcept>
#include <string>

#define PYANOM_CUDA_CHECK(expr)                                                  \
  do {                                                                           \
    cudaError_t err_ = (expr);                                                   \
    if (err_ != cudaSuccess)                                                     \
      throw std::runtime_error(std::string("CUDA error in ") + #expr + ": " +    \
                               cudaGetErrorString(err_));                        \
  } while (0)

#define PYANOM_CUDA_CHECK_LAUNCH() PYANOM_CUDA_CHECK(cudaGetLastError())
