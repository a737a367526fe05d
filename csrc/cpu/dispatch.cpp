// The CPU API of op_args.h: picks the instruction set once (the best this CPU runs, or a lower
// one named by FLATMIN_CPU_ISA), runs that set's loops, and finishes reductions: stage 2 sums the
// per-item partials in item order, so results do not depend on the thread count.
#include <cstdlib>
#include <cstring>
#include <vector>

#include "isa_kernels.h"

namespace flatmin {
namespace cpu {
namespace {

const IsaKernels* const kByPreference[] = {&avx512::kernels, &avx2::kernels, &baseline::kernels};

bool cpu_runs(const IsaKernels& k) {
  if (std::strcmp(k.name, "avx512") == 0)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("f16c");
  if (std::strcmp(k.name, "avx2") == 0) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  return true;
}

const IsaKernels* find(const char* name) {
  for (const IsaKernels* k : kByPreference)
    if (std::strcmp(k->name, name) == 0) return k;
  return nullptr;
}

const IsaKernels* best() {
  const char* wanted = std::getenv("FLATMIN_CPU_ISA");
  bool below_wanted = wanted == nullptr || find(wanted) == nullptr;
  for (const IsaKernels* k : kByPreference) {
    below_wanted = below_wanted || std::strcmp(k->name, wanted) == 0;
    if (below_wanted && cpu_runs(*k)) return k;
  }
  return &baseline::kernels;
}

const IsaKernels*& active() {
  static const IsaKernels* chosen = best();
  return chosen;
}

// Stage 1 fills nvalues partials per item; stage 2 sums them in item order and finishes.
template <class Stage1>
void reduce(const Bucket& bucket, const Reduction& red, const Stage1& stage1) {
  std::vector<float> partials(static_cast<size_t>(bucket.nitems) * red.nvalues, 0.0f);
  if (bucket.nitems > 0) stage1(partials.data());
  float totals[2] = {0.0f, 0.0f};
  for (int64_t k = 0; k < bucket.nitems; ++k)
    for (int v = 0; v < red.nvalues; ++v) totals[v] += partials[k * red.nvalues + v];
  finish_reduction(red, totals[0], totals[1]);
}

}  // namespace

const char* isa() { return active()->name; }

bool set_isa(const char* name) {
  const IsaKernels* k = find(name);
  if (k == nullptr || !cpu_runs(*k)) return false;
  active() = k;
  return true;
}

void sumsq(const Bucket& bucket, const SumsqArgs& args, const Reduction& red) {
  reduce(bucket, red, [&](float* partials) { active()->sumsq(bucket, args, partials); });
}

void dot(const Bucket& bucket, const Reduction& red) {
  reduce(bucket, red, [&](float* partials) { active()->dot(bucket, partials); });
}

void axpby(const Bucket& bucket, const AxpbyArgs& args, const Reduction& red) {
  if (args.reduce == AxpbyReduce::kNone) {
    active()->axpby(bucket, args, nullptr);
    return;
  }
  reduce(bucket, red, [&](float* partials) { active()->axpby(bucket, args, partials); });
}

void perturb(const Bucket& bucket, const PerturbArgs& args) { active()->perturb(bucket, args); }
void noise(const Bucket& bucket, const NoiseArgs& args) { active()->noise(bucket, args); }
void step_sgd(const Bucket& bucket, const SgdArgs& args) { active()->step_sgd(bucket, args); }
void step_adam(const Bucket& bucket, const AdamArgs& args) { active()->step_adam(bucket, args); }
void centralize(const Bucket& bucket) { active()->centralize(bucket); }

void normals(uint64_t first_call, int64_t ncalls, uint64_t seed, uint32_t step, uint32_t sample, float* out) {
  active()->normals(first_call, ncalls, seed, step, sample, out);
}

void philox(const PhiloxArgs& args) {
  const uint32_t step = args.step.get();
  at::parallel_for(0, args.n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const PhiloxWords w = philox_call(args.offset + static_cast<uint64_t>(k), args.seed, step, args.sample);
      int64_t* row = args.out + 4 * k;
      row[0] = w.x0;
      row[1] = w.x1;
      row[2] = w.x2;
      row[3] = w.x3;
    }
  });
}

}  // namespace cpu
}  // namespace flatmin
