// The CPU loops for any x86-64 CPU (SSE2): 4 fp32 lanes. See isa_kernels.h.
#include "isa_kernels.h"

#define FLATMIN_CPU_ISA baseline
#define FLATMIN_CPU_ISA_NAME "baseline"
#define FLATMIN_CPU_LANES 4
#include "vector_math.inc"
#include "kernels.inc"
