// Marks helpers that both the C++ and the CUDA kernels compile.
#pragma once

#ifdef __CUDACC__
#define PYANOM_HOST_DEVICE __host__ __device__
#else
#define PYANOM_HOST_DEVICE
#endif
