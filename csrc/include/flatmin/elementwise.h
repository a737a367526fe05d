// The per-element math of every op of the contract, written once for the CPU and CUDA builds.
// Every function takes and returns fp32 values: loading from and rounding to the storage dtype
// is the caller's job, done once per element. The formulas follow the torch reference backend
// operation by operation, so results agree to the last rounding step.
#pragma once

#include <cmath>

#include "macros.h"

namespace flatmin {

// A scalar argument: a number fixed at the call, or a 0-d fp32 tensor read where it lives
// (so that a device-computed value never visits the host).
struct Scalar {
  float value;
  const float* ptr;  // nullptr: use value
  FLATMIN_HD float get() const { return ptr ? *ptr : value; }
};

// found_inf > 0 means "write nothing"; absent means never skip.
FLATMIN_HD bool should_skip(const float* found_inf) { return found_inf && *found_inf > 0.0f; }

// AMP unscale and maximize: g = grad / grad_scale, negated when maximizing.
FLATMIN_HD float unscaled_grad(float grad, float grad_scale, bool maximize) {
  const float g = grad / grad_scale;
  return maximize ? -g : g;
}

// --------------------------------------------------------------------------- SGD

struct SgdHyper {
  float weight_decay, momentum, one_minus_dampening;
  bool nesterov, maximize, init_buffers, has_momentum;
};

// The gradient before GC: unscaled, maximized, plus L2 weight decay on the base weights b.
FLATMIN_HD float sgd_grad(float grad, float b, float grad_scale, const SgdHyper& h) {
  float g = unscaled_grad(grad, grad_scale, h.maximize);
  if (h.weight_decay != 0.0f) g = g + b * h.weight_decay;
  return g;
}

// From the (centralized) gradient: new momentum buffer (in/out) and new weight.
// Flags select values rather than guard stores, so a CPU loop over elements has no branch and
// vectorises; buf is written either way (callers store it back only when momentum is on).
FLATMIN_HD float sgd_update(float g, float b, float& buf, float lr, const SgdHyper& h) {
  const float new_buf = h.init_buffers ? g : buf * h.momentum + g * h.one_minus_dampening;
  const float d = h.has_momentum ? (h.nesterov ? g + new_buf * h.momentum : new_buf) : g;
  buf = new_buf;
  return b - d * lr;
}

// --------------------------------------------------------------------------- Adam / AdamW

// The flags enter the math as factors rather than branches, so the CPU loop vectorises:
// sign = -1 when maximizing (an exact negation), l2 = weight_decay for Adam and 0 for AdamW,
// decoupled = weight_decay for AdamW and 0 for Adam (b * (1 - lr * 0) is b exactly).
struct AdamHyper {
  double beta1, beta2;  // double: only for the bias corrections, see adam_bias
  float one_minus_beta1, one_minus_beta2, beta2_f, eps, sign, l2, decoupled;
  bool amsgrad;  // for the callers: whether vmax is loaded and stored
};

// Per-tensor bias corrections for the step about to be taken (step = old step + 1), once per
// tensor (or work item). In double, like torch.optim: 1 - beta2**t cancels catastrophically in
// fp32 (1 - 0.999f is off by 1.3e-5), which would shift every Adam update by ~6e-6.
struct AdamBias {
  float bias1, bias2_sqrt;
};

FLATMIN_HD AdamBias adam_bias(float new_step, const AdamHyper& h) {
  return {static_cast<float>(1.0 - pow(h.beta1, static_cast<double>(new_step))),
          static_cast<float>(sqrt(1.0 - pow(h.beta2, static_cast<double>(new_step))))};
}

// The gradient before GC: unscaled, maximized, plus L2 decay for Adam (adds b * 0 for AdamW,
// which only differs from not adding when the weight itself is already inf or nan).
FLATMIN_HD float adam_grad(float grad, float b, float grad_scale, const AdamHyper& h) {
  return (grad / grad_scale) * h.sign + b * h.l2;
}

// From the (centralized) gradient: new moments (in/out) and new weight. vmax must be 0 when
// amsgrad is off: then max(vmax, v) is v, as v >= 0 (and a nan v still propagates).
FLATMIN_HD float adam_update(float g, float b, float& m, float& v, float& vmax, float lr,
                             AdamBias bias, const AdamHyper& h) {
  b = b * (1.0f - lr * h.decoupled);
  m = m + (g - m) * h.one_minus_beta1;
  v = v * h.beta2_f + (g * g) * h.one_minus_beta2;
  vmax = vmax > v ? vmax : v;
  const float denom = sqrtf(vmax) / bias.bias2_sqrt + h.eps;
  return b - ((m / denom) / bias.bias1) * lr;
}

// --------------------------------------------------------------------------- SAM / ASAM, NSO, GAM

// perturb_: p = b + s * D with D the (centralized) direction, times b^2 for ASAM.
FLATMIN_HD float perturbed(float b, float d_centered, float scale, bool adaptive) {
  const float D = adaptive ? d_centered * (b * b) : d_centered;
  return b + D * scale;
}

// sumsq: the square of the (centralized) value, weighted by |w| for ASAM.
FLATMIN_HD float weighted_square(float x_centered, float w, bool weighted) {
  const float t = weighted ? x_centered * fabsf(w) : x_centered;
  return t * t;
}

// noise_: p = b + coef * N.
FLATMIN_HD float noised(float b, float coef, float normal) { return b + coef * normal; }

// axpby_: y = a*y + b*x; y is not read when a is the number 0 (it may hold garbage).
FLATMIN_HD float axpby_value(float y, float x, float a, float b, bool a_is_zero) {
  const float bx = x * b;
  return a_is_zero ? bx : y * a + bx;
}

}  // namespace flatmin
