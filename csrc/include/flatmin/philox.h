// Philox4x32-10 and the Box-Muller transform, exactly as the op contract defines the noise (v2,
// flatmin_kernels/backends/contract.py): the same integers as the torch reference and Triton's
// tl.philox, so one seed gives the same noise on every backend and device.
//
// Element j is served by Philox call c = j >> 2, whose four words make four normals (both
// Box-Muller pairs, cos and sin); lane j & 3 picks one. The CUDA build uses the scalar forms
// below; the CPU build runs the same log/sin/cos on vectors (csrc/cpu/vector_math.inc).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

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

// log, sin and cos for the normals, written once for fp32 scalars (CUDA) and GCC vectors (the CPU
// loops, csrc/cpu/vector_math.inc) with F a float type and I the int32 type of the same width.
// Plain IEEE fp32 operations in a fixed order (no library call: CUDA's sinf keeps a slow path in
// local memory for huge arguments, and the CPU's libm does not vectorise), so the CPU at every
// vector width and CUDA compute the same bits. Accuracy: a few ulp (checked against the
// reference's normals in tests/backends/test_cpp_backend.py).
namespace normal_math {

template <class To, class From>
FLATMIN_HD To bits_as(From x) {
  static_assert(sizeof(To) == sizeof(From), "a bit cast keeps the size");
  To y;
  memcpy(&y, &x, sizeof(y));
  return y;
}

template <class To, class From>
FLATMIN_HD To convert(From x) {
#if defined(__CUDACC__)
  return static_cast<To>(x);
#else
  if constexpr (std::is_arithmetic<From>::value)
    return static_cast<To>(x);
  else
    return __builtin_convertvector(x, To);
#endif
}

// Natural log of x in [2**-24, 1) (normal, positive): fdlibm's / musl's logf, < 1 ulp.
template <class F, class I>
FLATMIN_HD F log_open01(F x) {
  const float ln2_hi = 6.9313812256e-01f, ln2_lo = 9.0580006145e-06f;
  const float lg1 = 0xaaaaaa.0p-24f, lg2 = 0xccce13.0p-25f, lg3 = 0x91e9ee.0p-25f, lg4 = 0xf89e26.0p-26f;
  I ix = bits_as<I>(x) + (0x3f800000 - 0x3f3504f3);
  const I k = (ix >> 23) - 0x7f;  // x = 2**k * m with m in [sqrt(2)/2, sqrt(2))
  ix = (ix & 0x007fffff) + 0x3f3504f3;
  const F f = bits_as<F>(ix) - 1.0f;
  const F s = f / (2.0f + f);
  const F z = s * s;
  const F w = z * z;
  const F t1 = w * (lg2 + w * lg4);
  const F t2 = z * (lg1 + w * lg3);
  const F r = t2 + t1;
  const F hfsq = 0.5f * f * f;
  const F dk = convert<F>(k);
  return s * (hfsq + r) + dk * ln2_lo - hfsq + f + dk * ln2_hi;
}

// sin and cos of x in [0, 2 pi]: x = q pi/2 + r with a three-part pi/2 (each q * part exact),
// Cephes' sinf/cosf polynomials on |r| <= pi/4, then the quadrant's swap and signs.
template <class F, class I>
FLATMIN_HD void sincos_0_2pi(F x, F& sin_x, F& cos_x) {
  const float round = 12582912.0f;  // 1.5 * 2**23: adding it rounds to an integer
  const float pio2_1 = 1.5703125f, pio2_2 = 4.837512969970703125e-4f, pio2_3 = 7.54978995489188216e-8f;
  const F qf = (x * 0.636619772367581343f + round) - round;
  const I q = convert<I>(qf);
  const F r = ((x - qf * pio2_1) - qf * pio2_2) - qf * pio2_3;
  const F z = r * r;
  const F s = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * r + r;
  const F c = ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z + 4.166664568298827e-2f) * z * z -
              0.5f * z + 1.0f;
  const auto odd = (q & 1) != 0;
  const F sn = odd ? c : s;
  const F cs = odd ? s : c;
  sin_x = (q & 2) != 0 ? -sn : sn;
  cos_x = ((q + 1) & 2) != 0 ? -cs : cs;
}

}  // namespace normal_math

// The four normals of one call: (r_a cos th_a, r_a sin th_a, r_b cos th_b, r_b sin th_b).
FLATMIN_HD void normals_of_call(PhiloxWords w, float out[4]) {
  using normal_math::log_open01;
  const float r_a = sqrtf(-2.0f * log_open01<float, int32_t>(uniform_open01(w.x0)));
  const float r_b = sqrtf(-2.0f * log_open01<float, int32_t>(uniform_open01(w.x2)));
  float sin_a, cos_a, sin_b, cos_b;
  normal_math::sincos_0_2pi<float, int32_t>(kTwoPi * uniform_open01(w.x1), sin_a, cos_a);
  normal_math::sincos_0_2pi<float, int32_t>(kTwoPi * uniform_open01(w.x3), sin_b, cos_b);
  out[0] = r_a * cos_a;
  out[1] = r_a * sin_a;
  out[2] = r_b * cos_b;
  out[3] = r_b * sin_b;
}

}  // namespace flatmin
