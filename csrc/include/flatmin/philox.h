// Philox4x32-10 and the Box-Muller transform, exactly as the op contract defines the noise (v2,
// flatmin_kernels/backends/contract.py): the same integers as the torch reference and Triton's
// tl.philox, so one seed gives the same noise on every backend and device.
//
// Element j is served by Philox call c = j >> 2, whose four words make four normals (both
// Box-Muller pairs, cos and sin); lane j & 3 picks one. The CPU build computes the normals with
// its own vectorised log/sin/cos (csrc/cpu/vector_math.inc); this scalar form is the CUDA one.
#pragma once

#include <cmath>
#include <cstdint>

#include "macros.h"

namespace flatmin {

struct PhiloxWords {
  uint32_t x0, x1, x2, x3;
};

// Random123's constants.
constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

FLATMIN_HD PhiloxWords philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                     uint32_t k0, uint32_t k1) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return {c0, c1, c2, c3};
}

// The words of Philox call c at (step, sample) under a 64-bit seed: counter (c_lo, c_hi, step,
// sample), key (seed_lo, seed_hi).
FLATMIN_HD PhiloxWords philox_call(uint64_t c, uint64_t seed, uint32_t step, uint32_t sample) {
  return philox4x32_10(static_cast<uint32_t>(c), static_cast<uint32_t>(c >> 32), step, sample,
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// u = ((x >> 8) | 1) * 2**-24: exact in fp32 and strictly inside (0, 1), so log(u) is finite.
FLATMIN_HD float uniform_open01(uint32_t x) {
  return static_cast<float>((x >> 8) | 1u) * 5.9604644775390625e-08f;
}

constexpr float kTwoPi = 6.28318530717958647692f;  // 2 pi rounded to fp32, as the reference's

// The four normals of one call: (r_a cos th_a, r_a sin th_a, r_b cos th_b, r_b sin th_b).
FLATMIN_HD void normals_of_call(PhiloxWords w, float out[4]) {
  const float r_a = sqrtf(-2.0f * logf(uniform_open01(w.x0)));
  const float th_a = kTwoPi * uniform_open01(w.x1);
  const float r_b = sqrtf(-2.0f * logf(uniform_open01(w.x2)));
  const float th_b = kTwoPi * uniform_open01(w.x3);
  out[0] = r_a * cosf(th_a);
  out[1] = r_a * sinf(th_a);
  out[2] = r_b * cosf(th_b);
  out[3] = r_b * sinf(th_b);
}

}  // namespace flatmin
