// Portability macro: the per-element math compiles unchanged for the host (CPU build) and
// the device (CUDA build). Nothing here may include torch or CUDA headers.
//
// On the host the math is always inlined: the CPU loops are compiled once per instruction set
// (csrc/cpu/isa_*.cpp), and only an inlined copy runs with that instruction set.
#pragma once

#if defined(__CUDACC__)
#define FLATMIN_HD __host__ __device__ __forceinline__
#else
#define FLATMIN_HD inline __attribute__((always_inline))
#endif
