// Host-side dtype dispatch: every kernel is a template on two storage dtypes, P for the lists
// that hold parameter-like tensors (params, gradients, backups) and S for the op's other lists
// (optimizer state, GAM's buffers). The instantiations cover one dtype everywhere and 16-bit
// parameters with fp32 state; any other mix runs the AnyDType instantiation, which reads each
// list's dtype at run time.
#pragma once

#include "flatmin/bucket.h"
#include "multi_tensor.cuh"

namespace flatmin {
namespace cuda {

// Whether the present lists of `mask` share one dtype (into *out); *any says whether any list of
// `mask` is present (true, with *any = false, when none is).
inline bool common_dtype(const Bucket& bk, uint32_t mask, DType* out, bool* any) {
  *any = false;
  for (int l = 0; l < kMaxLists; ++l) {
    if (!((mask >> l) & 1u) || bk.ptrs[l] == nullptr) continue;
    if (*any && bk.dtype[l] != *out) return false;
    *out = bk.dtype[l];
    *any = true;
  }
  return true;
}

// Calls Launch::template run<P, S>(args...) with the tags of the bucket's dtypes.
template <class Launch, class... Args>
void dispatch_dtypes(const Bucket& bk, uint32_t p_lists, uint32_t s_lists, Args&&... args) {
  DType p = DType::kFloat32, s = DType::kFloat32;
  bool has_p, has_s;
  const bool uniform = common_dtype(bk, p_lists, &p, &has_p) && common_dtype(bk, s_lists, &s, &has_s);
  if (!has_s) s = p;
  if (!has_p) p = s;
  if (uniform && p == s) {
    switch (p) {
      case DType::kFloat32: return Launch::template run<F32, F32>(args...);
      case DType::kBFloat16: return Launch::template run<BF16, BF16>(args...);
      case DType::kFloat16: return Launch::template run<F16, F16>(args...);
    }
  }
  if (uniform && s == DType::kFloat32 && p == DType::kBFloat16) return Launch::template run<BF16, F32>(args...);
  if (uniform && s == DType::kFloat32 && p == DType::kFloat16) return Launch::template run<F16, F32>(args...);
  Launch::template run<AnyDType, AnyDType>(args...);
}

}  // namespace cuda
}  // namespace flatmin
