// The C-level API of every op: argument structs with raw pointers only, implemented twice
// (flatmin::cpu in csrc/cpu, flatmin::cuda in csrc/cuda) over the same per-element math.
// The torch binding (csrc/bindings.cpp) fills these from tensors and picks the implementation
// by device. The CUDA declarations take the stream as void* so this header needs no CUDA headers.
#pragma once

#include <cstdint>

#include "bucket.h"
#include "elementwise.h"

namespace flatmin {

// Which list of the bucket holds what, per op.
namespace lists {
enum Sumsq { kSumsqX = 0, kSumsqW = 1 };
enum Dot { kDotX = 0, kDotY = 1 };
enum Perturb { kPerturbP = 0, kPerturbD = 1, kPerturbBase = 2, kPerturbSave = 3 };
enum Noise { kNoiseP = 0, kNoiseBase = 1 };
enum Sgd { kSgdP = 0, kSgdG = 1, kSgdBuf = 2, kSgdBackup = 3 };
enum Adam { kAdamP = 0, kAdamG = 1, kAdamM = 2, kAdamV = 3, kAdamVmax = 4, kAdamBackup = 5 };
enum Axpby { kAxpbyY = 0, kAxpbyX = 1 };
enum Centralize { kCentralizeX = 0 };
}  // namespace lists

struct SumsqArgs {
  bool weighted;
};

struct PerturbArgs {
  Scalar scale;
  bool adaptive;
  const float* found_inf;
};

struct NoiseArgs {
  Scalar coef;
  uint64_t seed;
  uint32_t step, sample;
  const float* found_inf;
};

struct PhiloxArgs {
  int64_t n;
  uint64_t offset, seed;
  uint32_t step, sample;
  int64_t* out;  // (n, 4) int64, row-major
};

struct SgdArgs {
  SgdHyper h;
  Scalar lr;
  const float* grad_scale;
  const float* found_inf;
};

struct AdamArgs {
  AdamHyper h;
  Scalar lr;
  const float* grad_scale;
  const float* found_inf;
};

struct AxpbyArgs {
  Scalar a, b;
  bool a_is_zero;
};

namespace cpu {
// Reductions write one fp32 value per tensor of the bucket into out.
void sumsq(const Bucket& bucket, const SumsqArgs& args, float* out);
void dot(const Bucket& bucket, float* out);
void perturb(const Bucket& bucket, const PerturbArgs& args);
void noise(const Bucket& bucket, const NoiseArgs& args);
void philox(const PhiloxArgs& args);
void step_sgd(const Bucket& bucket, const SgdArgs& args);
void step_adam(const Bucket& bucket, const AdamArgs& args);
void centralize(const Bucket& bucket);
void axpby(const Bucket& bucket, const AxpbyArgs& args);
}  // namespace cpu

namespace cuda {
// Every function only enqueues work on `stream`; bucket pointers are device pointers.
// Reductions need `partials`: one fp32 slot per work item (device memory).
void sumsq(const Bucket& bucket, const SumsqArgs& args, float* partials, float* out, void* stream);
void dot(const Bucket& bucket, float* partials, float* out, void* stream);
void perturb(const Bucket& bucket, const PerturbArgs& args, void* stream);
void noise(const Bucket& bucket, const NoiseArgs& args, void* stream);
void philox(const PhiloxArgs& args, void* stream);
void step_sgd(const Bucket& bucket, const SgdArgs& args, void* stream);
// Adam's step counters (record.aux) are bumped by a second, per-tensor launch after the update.
void step_adam(const Bucket& bucket, const AdamArgs& args, void* stream);
void centralize(const Bucket& bucket, void* stream);
void axpby(const Bucket& bucket, const AxpbyArgs& args, void* stream);
}  // namespace cuda

}  // namespace flatmin
