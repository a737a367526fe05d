// The per-element math of every op of the contract, written once for the CPU and CUDA builds.
// Every function takes and returns fp32 values: loading from and rounding to the storage dtype
// is the caller's job, done once per element. The formulas follow the torch reference backend
// (flatmin_kernels/backends/torch_backend.py) operation by operation, in the same order and
// without fused multiply-adds (the builds pass -ffp-contract=off / --fmad=false), so results
// agree with it to the last rounding step wherever the reference rounds the same way.
//
// Flags are per call, so the CPU loops keep them as selects (vectorised, never branching) or
// template parameters; nothing here branches on a value.
#pragma once

#include <cmath>

#include "macros.h"

namespace flatmin {

// A contract scalar: a number fixed at the call, a 1-element fp32 tensor read where it lives (so a
// value computed on the device never visits the host), or their product (a pair (number, tensor)).
struct Scalar {
  float value;       // the number; 1 for a lone tensor
  const float* ptr;  // nullptr: a number
  FLATMIN_HD float get() const { return ptr ? value * *ptr : value; }
  FLATMIN_HD bool is_number() const { return ptr == nullptr; }
};

// found_inf > 0 means skip; absent means never skip.
struct SkipFlag {
  const float* ptr;
  FLATMIN_HD bool get() const { return ptr != nullptr && *ptr > 0.0f; }
};

// --------------------------------------------------------------------------- update direction

// The gradient the base updates see: g_coef * g (+ g2_coef * g2), unscaled, signed. Values, read
// once per call (CPU) or per block (CUDA); sign is +1 or -1 (an exact negation). Without a
// grad_scale nothing is divided (a loop-invariant test the compiler hoists out of the loops).
struct Direction {
  float g_coef, g2_coef, grad_scale, sign;
  bool scaled;
};

FLATMIN_HD float direction(float g, float g2, const Direction& d, bool has_g2) {
  float x = g * d.g_coef;
  if (has_g2) x = x + g2 * d.g2_coef;
  if (d.scaled) x = x / d.grad_scale;
  return x * d.sign;
}

// --------------------------------------------------------------------------- SGD

struct SgdHyper {
  float weight_decay, momentum, one_minus_dampening;
  bool nesterov, init_buffers, has_momentum;
};

// The gradient before GC: plus L2 weight decay l2 on the base weights b (torch adds nothing at 0).
// SGD's l2 is its weight decay; Adam's is its weight decay unless decoupled (AdamW), see adam_l2.
FLATMIN_HD float l2_grad(float dir, float b, float l2) { return l2 != 0.0f ? dir + b * l2 : dir; }

// From the (centralized) gradient: the new momentum buffer (in/out) and the new weight.
// buf is written either way (callers store it back only when momentum is on).
FLATMIN_HD float sgd_update(float g, float b, float& buf, float lr, const SgdHyper& h) {
  const float new_buf = h.init_buffers ? g : buf * h.momentum + g * h.one_minus_dampening;
  const float d = h.has_momentum ? (h.nesterov ? g + new_buf * h.momentum : new_buf) : g;
  buf = new_buf;
  return b - d * lr;
}

// --------------------------------------------------------------------------- Adam / AdamW

struct AdamHyper {
  double beta1, beta2;  // double: only for the bias corrections, see adam_step_values
  float one_minus_beta1, one_minus_beta2, beta2_f, eps, weight_decay;
  bool decoupled;
};

// What the update needs from a tensor's step count, computed once per tensor (CPU: per item,
// cached while the step repeats; CUDA: once per block). The bias corrections are taken in double
// and rounded to fp32, as the reference does: in fp32, 1 - 0.999**1 is off by 1e-5 relative.
// step_size is lr / bias1 the way the reference rounds it: a python lr multiplies the
// reciprocal (Tensor.__rtruediv__), a tensor lr divides.
struct AdamStep {
  float bias2_sqrt, step_size;
};

FLATMIN_HD AdamStep adam_step_values(float new_step, float lr, bool lr_is_number, const AdamHyper& h) {
  const float bias1 = static_cast<float>(1.0 - pow(h.beta1, static_cast<double>(new_step)));
  const float bias2_sqrt = static_cast<float>(sqrt(1.0 - pow(h.beta2, static_cast<double>(new_step))));
  return {bias2_sqrt, lr_is_number ? (1.0f / bias1) * lr : lr / bias1};
}

// AdamW's decay factor 1 - lr * weight_decay, rounded as the reference rounds it: in double for
// a python lr, in fp32 for a tensor lr.
FLATMIN_HD float adam_decay_factor(double lr_number, float lr, bool lr_is_number, float weight_decay) {
  return lr_is_number ? static_cast<float>(1.0 - lr_number * static_cast<double>(weight_decay))
                      : 1.0f - lr * weight_decay;
}

// Adam's L2 decay on the gradient (see l2_grad); AdamW's goes on the weights (adam_base).
FLATMIN_HD float adam_l2(const AdamHyper& h) { return h.decoupled ? 0.0f : h.weight_decay; }

// AdamW's decoupled decay on the base weights.
FLATMIN_HD float adam_base(float b, float decay, const AdamHyper& h) {
  return (h.decoupled && h.weight_decay != 0.0f) ? b * decay : b;
}

// torch.maximum: nan if either is nan.
FLATMIN_HD float nan_max(float a, float b) { return (a > b || a != a) ? a : b; }

// Whether x is neither inf nor nan (x - x is 0 exactly then, nan otherwise); the same code on
// the host and the device, where isfinite lives in different namespaces.
FLATMIN_HD bool is_finite(float x) { return x - x == 0.0f; }

// From the (centralized) gradient: new moments (in/out) and the new weight from the decayed base
// weights. vmax is read and written only with amsgrad.
FLATMIN_HD float adam_update(float g, float b, float& m, float& v, float& vmax, bool amsgrad, AdamStep s,
                             const AdamHyper& h) {
  m = m + (g - m) * h.one_minus_beta1;
  v = v * h.beta2_f + (g * g) * h.one_minus_beta2;
  float second = v;
  if (amsgrad) {
    vmax = nan_max(vmax, v);
    second = vmax;
  }
  const float denom = sqrtf(second) / s.bias2_sqrt + h.eps;
  return b - (m / denom) * s.step_size;
}

// --------------------------------------------------------------------------- SAM / ASAM, NSO, GAM

// perturb_: p = b + scale * D with D the (centralized) direction, times b^2 for ASAM.
FLATMIN_HD float perturbed(float b, float d_centered, float scale, bool adaptive) {
  const float D = adaptive ? d_centered * (b * b) : d_centered;
  return b + D * scale;
}

// sumsq and axpby's reduce="x": the square of the (centralized) value, weighted by |w| (ASAM).
FLATMIN_HD float weighted_square(float x, float w, bool weighted) {
  const float t = weighted ? x * fabsf(w) : x;
  return t * t;
}

// noise_: p = b + coef * N.
FLATMIN_HD float noised(float b, float coef, float normal) { return b + coef * normal; }

// axpby_: y = a*y + b*x; y is not read when a is the number 0 (it may hold garbage).
FLATMIN_HD float axpby_value(float y, float x, float a, float b, bool a_is_zero) {
  const float bx = x * b;
  return a_is_zero ? bx : y * a + bx;
}

// --------------------------------------------------------------------------- reduction epilogues

// See contract.InvNorm and contract.Ratio: per-step scalars derived from the reduced sums.
struct Epilogue {
  int32_t kind;  // kNone, kInvNorm, kRatio
  bool inf_accumulate;
  float eps, gamma;
  int64_t slot;  // InvNorm.inv or Ratio.coef
  int64_t inf;
  enum : int32_t { kNone = 0, kInvNorm = 1, kRatio = 2 };
};

// Where a reduction goes: out[index + k] (k < nvalues) = (out[...] if accumulate else 0) + total_k,
// then the epilogue. out is a strided fp32 vector on the table's device.
struct Reduction {
  float* out;
  int64_t stride;
  int64_t index;
  int32_t nvalues;
  bool accumulate;
  Epilogue epilogue;
};

// Stores the totals (total1 only when nvalues is 2) and runs the epilogue (one thread: the CPU,
// or thread 0 of the CUDA stage 2).
FLATMIN_HD void finish_reduction(const Reduction& r, float total0, float total1) {
  float* out = r.out;
  const int64_t s = r.stride;
  out[r.index * s] = r.accumulate ? out[r.index * s] + total0 : total0;
  if (r.nvalues == 2) out[(r.index + 1) * s] = r.accumulate ? out[(r.index + 1) * s] + total1 : total1;
  const Epilogue& e = r.epilogue;
  if (e.kind == Epilogue::kNone) return;
  const float sum = out[r.index * s];
  bool finite = is_finite(sum);
  if (e.kind == Epilogue::kInvNorm) {
    out[e.slot * s] = 1.0f / (sqrtf(sum) + e.eps);
  } else {
    const float q = out[(r.index + 1) * s];
    finite = finite && is_finite(q);
    out[e.slot * s] = 1.0f + (e.gamma * q) / (sum + e.eps);
  }
  const float flag = finite ? 0.0f : 1.0f;
  float& inf = out[e.inf * s];
  inf = e.inf_accumulate ? nan_max(inf, flag) : flag;
}

}  // namespace flatmin
