// The CPU loops are compiled once per instruction set: csrc/cpu/isa_{avx512,avx2,baseline}.cpp each
// include vector_math.inc and kernels.inc under their own `#pragma GCC target` and namespace
// (flatmin::cpu::avx512, ...), and dispatch.cpp picks one set at run time from cpuid.
//
// Why per-ISA translation units rather than target_clones or ATen's Vectorized: the noise needs
// explicit integer intrinsics (32x32->64-bit multiplies for Philox) that no auto-vectoriser
// emits, target_clones cannot inline such per-ISA helpers into a shared template, and ATen's
// vector types follow ATen's own build flags, not ours. One source compiled three times keeps a
// single definition of every loop.
//
// This header holds everything the loops include (all of it before the target pragma, so that no
// function defined outside our namespaces is ever compiled for a wider ISA than the baseline and
// picked by the linker for the baseline code) and the table of one instruction set's loops.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <utility>

#include "flatmin/op_args.h"
#include "flatmin/philox.h"

namespace flatmin {
namespace cpu {

// One instruction set's loops. Reductions write red.nvalues partials per work item; the caller
// sums them in item order (deterministic whatever the thread count).
struct IsaKernels {
  const char* name;
  void (*sumsq)(const Bucket&, const SumsqArgs&, float* partials);
  void (*dot)(const Bucket&, float* partials);
  void (*axpby)(const Bucket&, const AxpbyArgs&, float* partials);
  void (*perturb)(const Bucket&, const PerturbArgs&);
  void (*noise)(const Bucket&, const NoiseArgs&);
  void (*step_sgd)(const Bucket&, const SgdArgs&);
  void (*step_adam)(const Bucket&, const AdamArgs&);
  void (*centralize)(const Bucket&);
  void (*normals)(uint64_t first_call, int64_t ncalls, uint64_t seed, uint32_t step, uint32_t sample, float* out);
};

namespace avx512 {
extern const IsaKernels kernels;
}
namespace avx2 {
extern const IsaKernels kernels;
}
namespace baseline {
extern const IsaKernels kernels;
}

}  // namespace cpu
}  // namespace flatmin
