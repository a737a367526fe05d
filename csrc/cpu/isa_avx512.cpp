// The CPU loops for AVX-512 (F, BW, DQ, VL): 16 fp32 lanes. See isa_kernels.h.
#include "isa_kernels.h"

// GCC 12's own AVX-512 conversion intrinsics trip -Wmaybe-uninitialized (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,f16c")
#define FLATMIN_CPU_ISA avx512
#define FLATMIN_CPU_ISA_NAME "avx512"
#define FLATMIN_CPU_LANES 16
#include "vector_math.inc"
#include "kernels.inc"
#pragma GCC pop_options
