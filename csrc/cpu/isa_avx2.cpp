// The CPU loops for AVX2 (with F16C): 8 fp32 lanes. See isa_kernels.h.
#include "isa_kernels.h"

#pragma GCC push_options
#pragma GCC target("avx2,f16c")
#define FLATMIN_CPU_ISA avx2
#define FLATMIN_CPU_ISA_NAME "avx2"
#define FLATMIN_CPU_LANES 8
#include "vector_math.inc"
#include "kernels.inc"
#pragma GCC pop_options
