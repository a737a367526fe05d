// Portability macro: the per-element math compiles unchanged for the host (CPU build) and
// the device (CUDA build). Nothing here may include torch or CUDA headers.
#pragma once

#if defined(__CUDACC__)
#define FLATMIN_HD __host__ __device__ __forceinline__
#else
#define FLATMIN_HD inline
#endif
