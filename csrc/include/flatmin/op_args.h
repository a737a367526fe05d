// The C-level API of every op: argument structs with raw pointers only, implemented twice
// (flatmin::cpu in csrc/cpu, flatmin::cuda in csrc/cuda) over the same per-element math.
// The torch binding (csrc/bindings.cpp) fills these from a table and the call's arguments and
// picks the implementation by device. The CUDA declarations take the stream as void* so this
// header needs no CUDA headers.
#pragma once

#include <cstdint>

#include "bucket.h"
#include "elementwise.h"

namespace flatmin {

// Which list of the bucket holds what, per op (the binding fills Bucket::ptrs in this order).
namespace lists {
enum Sumsq { kSumsqX = 0, kSumsqW = 1 };
enum Dot { kDotX = 0, kDotY = 1 };
enum Axpby { kAxpbyY = 0, kAxpbyX = 1, kAxpbyZ = 2, kAxpbyW = 3 };
enum Perturb { kPerturbP = 0, kPerturbD = 1, kPerturbMinus = 2, kPerturbBase = 3, kPerturbSave = 4, kPerturbDCopy = 5 };
enum Noise { kNoiseP = 0, kNoiseBase = 1 };
enum Sgd { kSgdP = 0, kSgdG = 1, kSgdG2 = 2, kSgdBuf = 3, kSgdBackup = 4 };
enum Adam { kAdamP = 0, kAdamG = 1, kAdamG2 = 2, kAdamM = 3, kAdamV = 4, kAdamVmax = 5, kAdamBackup = 6, kAdamSteps = 7 };
enum Centralize { kCentralizeX = 0 };
}  // namespace lists

// A list is present in a call when it has an address array.
FLATMIN_HD bool has_list(const Bucket& bucket, int l) { return bucket.ptrs[l] != nullptr; }

struct SumsqArgs {
  bool centralize;  // weights: list kSumsqW present
};

enum class AxpbyReduce : int32_t { kNone = 0, kX = 1, kY = 2 };

struct AxpbyArgs {
  Scalar a, b;
  bool a_is_zero;  // a is the python number 0: y is not read
  AxpbyReduce reduce;
};

struct PerturbArgs {
  Scalar scale;
  bool adaptive, centralize;
  SkipFlag found_inf;
};

// Noise step: a python int, or a 1-element int64 tensor read where it lives (CUDA-graph replays
// then draw new noise); the counter word is its low 32 bits.
struct StepCounter {
  uint32_t value;
  const int64_t* ptr;
  FLATMIN_HD uint32_t get() const { return ptr ? static_cast<uint32_t>(*ptr) : value; }
};

struct NoiseArgs {
  Scalar coef;
  uint64_t seed;
  StepCounter step;
  uint32_t sample;
  SkipFlag found_inf;
};

struct PhiloxArgs {
  int64_t n;
  uint64_t offset, seed;
  StepCounter step;
  uint32_t sample;
  int64_t* out;  // (n, 4) int64, row-major
};

// The direction's coefficients as the call gives them; each implementation reads them into a
// Direction where it runs (scalars may live on the device).
struct DirectionArgs {
  Scalar g_coef, g2_coef;
  const float* grad_scale;  // may be null
  bool maximize;
  FLATMIN_HD Direction get() const {
    return {g_coef.get(), g2_coef.get(), grad_scale ? *grad_scale : 1.0f, maximize ? -1.0f : 1.0f, grad_scale != nullptr};
  }
};

struct SgdArgs {
  SgdHyper h;
  Scalar lr;
  DirectionArgs dir;
  bool centralize;
  SkipFlag found_inf;
};

struct AdamArgs {
  AdamHyper h;
  Scalar lr;
  double lr_number;  // lr when it is a python number (the decay factor is then taken in double)
  DirectionArgs dir;
  bool amsgrad, centralize;
  SkipFlag found_inf;
};

namespace cpu {
// Reductions end in finish_reduction (elementwise.h) on the calling thread.
void sumsq(const Bucket& bucket, const SumsqArgs& args, const Reduction& red);
void dot(const Bucket& bucket, const Reduction& red);
void axpby(const Bucket& bucket, const AxpbyArgs& args, const Reduction& red);  // red unused without reduce
void perturb(const Bucket& bucket, const PerturbArgs& args);
void noise(const Bucket& bucket, const NoiseArgs& args);
void philox(const PhiloxArgs& args);
void step_sgd(const Bucket& bucket, const SgdArgs& args);
void step_adam(const Bucket& bucket, const AdamArgs& args);
void centralize(const Bucket& bucket);
// The instruction set the loops run with ("avx512", "avx2" or "baseline"), and a way to pick a
// lower one (tests run every implementation on one machine); false if the CPU lacks it.
const char* isa();
bool set_isa(const char* name);
// The normals of Philox calls first_call .. first_call + ncalls - 1 (4 per call) through the
// current instruction set's vector math, for tests of its accuracy.
void normals(uint64_t first_call, int64_t ncalls, uint64_t seed, uint32_t step, uint32_t sample, float* out);
}  // namespace cpu

namespace cuda {
// Every function only enqueues work on `stream`; bucket arrays are device pointers. Reductions
// need `partials`: red.nvalues fp32 slots per work item (device memory).
void sumsq(const Bucket& bucket, const SumsqArgs& args, const Reduction& red, float* partials, void* stream);
void dot(const Bucket& bucket, const Reduction& red, float* partials, void* stream);
void axpby(const Bucket& bucket, const AxpbyArgs& args, const Reduction& red, float* partials, void* stream);
void perturb(const Bucket& bucket, const PerturbArgs& args, void* stream);
void noise(const Bucket& bucket, const NoiseArgs& args, void* stream);
void philox(const PhiloxArgs& args, void* stream);
void step_sgd(const Bucket& bucket, const SgdArgs& args, void* stream);
// Adam's step counters are bumped by a second launch after the update, a thread per tensor.
void step_adam(const Bucket& bucket, const AdamArgs& args, void* stream);
void centralize(const Bucket& bucket, void* stream);
// Whether work enqueued on `stream` is being captured into a CUDA graph.
bool stream_is_capturing(void* stream);
}  // namespace cuda

}  // namespace flatmin
