// Philox4x32-10 and the Box-Muller transform, exactly as the op contract defines the noise
// (flatmin_kernels/backends/contract.py): the same integers as the torch reference and
// Triton's tl.philox, so one seed gives the same noise on every backend and device.
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
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return {c0, c1, c2, c3};
}

// The words for global element j at (step, sample) under a 64-bit seed.
FLATMIN_HD PhiloxWords philox_for_element(uint64_t j, uint64_t seed, uint32_t step, uint32_t sample) {
  return philox4x32_10(static_cast<uint32_t>(j), static_cast<uint32_t>(j >> 32), step, sample,
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// u = ((x >> 8) | 1) * 2**-24: exact in fp32 and strictly inside (0, 1), so log(u) is finite.
FLATMIN_HD float uniform_open01(uint32_t x) {
  return static_cast<float>((x >> 8) | 1u) * 5.9604644775390625e-08f;
}

// Box-Muller on the first two words, in fp32.
FLATMIN_HD float normal_from_words(uint32_t x0, uint32_t x1) {
  const float two_pi = 6.28318530717958647692f;
  const float u1 = uniform_open01(x0);
  const float u2 = uniform_open01(x1);
  return sqrtf(-2.0f * logf(u1)) * cosf(two_pi * u2);
}

FLATMIN_HD float normal_for_element(uint64_t j, uint64_t seed, uint32_t step, uint32_t sample) {
  const PhiloxWords w = philox_for_element(j, seed, step, sample);
  return normal_from_words(w.x0, w.x1);
}

}  // namespace flatmin
