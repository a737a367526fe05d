// The CPU build of every op: multi-tensor loops over the shared per-element math.
//
// Work items (tensor, element range) run in parallel (at::parallel_for, OpenMP). Inside an
// item, elements go through in tiles of kTile: each list's tile is converted to fp32 once,
// the math runs on the fp32 tiles, and results are rounded to their dtype once when stored, so
// every op makes a single pass over memory whatever the mix of dtypes in the bucket.
// A GC'd tensor is processed row by row: the row sum of the value to centre, then the update
// with the row mean subtracted; the row is still in cache for the second look.
// Reductions are two-stage and deterministic: one partial per work item (its size does not
// depend on the thread count), then a fixed-order sum per tensor.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "flatmin/op_args.h"
#include "flatmin/philox.h"

namespace flatmin {
namespace cpu {
namespace {

constexpr int kTile = 256;

int64_t dtype_size(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

// out[0..n) = list l of tensor r at elements [at, at + n), as fp32.
void load(const Bucket& bucket, const TensorRecord& r, int l, int64_t at, int n, float* out) {
  switch (bucket.dtype[l]) {
    case DType::kFloat32:
      std::memcpy(out, reinterpret_cast<const float*>(r.ptr[l]) + at, sizeof(float) * n);
      break;
    case DType::kBFloat16: {
      const c10::BFloat16* src = reinterpret_cast<const c10::BFloat16*>(r.ptr[l]) + at;
      for (int i = 0; i < n; ++i) out[i] = static_cast<float>(src[i]);
      break;
    }
    case DType::kFloat16: {
      const c10::Half* src = reinterpret_cast<const c10::Half*>(r.ptr[l]) + at;
      for (int i = 0; i < n; ++i) out[i] = static_cast<float>(src[i]);
      break;
    }
  }
}

// Rounds in[0..n) to list l's dtype (round to nearest even) and stores it at elements [at, at + n).
void store(const Bucket& bucket, const TensorRecord& r, int l, int64_t at, int n, const float* in) {
  switch (bucket.dtype[l]) {
    case DType::kFloat32:
      std::memcpy(reinterpret_cast<float*>(r.ptr[l]) + at, in, sizeof(float) * n);
      break;
    case DType::kBFloat16: {
      c10::BFloat16* dst = reinterpret_cast<c10::BFloat16*>(r.ptr[l]) + at;
      for (int i = 0; i < n; ++i) dst[i] = c10::BFloat16(in[i]);
      break;
    }
    case DType::kFloat16: {
      c10::Half* dst = reinterpret_cast<c10::Half*>(r.ptr[l]) + at;
      for (int i = 0; i < n; ++i) dst[i] = c10::Half(in[i]);
      break;
    }
  }
}

bool has_list(const TensorRecord& r, int l) { return r.ptr[l] != 0; }

// fp32 sum of x[0..n) in eight interleaved lanes: vectorisable, and more accurate than one
// running sum; the order is fixed, so the result is too.
float tile_sum(const float* x, int n) {
  float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) lanes[k] += x[i + k];
  for (; i < n; ++i) lanes[i % 8] += x[i];
  return ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
}

// Calls fn(at, n) for consecutive tiles covering [begin, end).
template <class F>
void for_tiles(int64_t begin, int64_t end, F&& fn) {
  for (int64_t at = begin; at < end; at += kTile) fn(at, static_cast<int>(std::min<int64_t>(kTile, end - at)));
}

// Calls body(begin, end, mean) once per row of the item when the tensor is GC'd (mean: the row
// mean of what pre(at, n, out) computes), else once for the whole item with mean 0.
template <class Pre, class Body>
void for_each_row(const TensorRecord& r, const WorkItem& item, Pre&& pre, Body&& body) {
  if (r.row_len == 0) {
    body(item.begin, item.end, 0.0f);
    return;
  }
  for (int64_t row = item.begin; row < item.end; row += r.row_len) {
    float sum = 0.0f;
    for_tiles(row, row + r.row_len, [&](int64_t at, int n) {
      float v[kTile];
      pre(at, n, v);
      sum += tile_sum(v, n);
    });
    body(row, row + r.row_len, sum / static_cast<float>(r.row_len));
  }
}

// fn(item) for every work item, in parallel over items.
template <class F>
void parallel_items(const Bucket& bucket, F&& fn) {
  at::parallel_for(0, bucket.nitems, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) fn(bucket.items[i]);
  });
}

// Stage 2 of a reduction: out[t] = the sum of tensor t's item partials, in item order.
void sum_partials(const Bucket& bucket, const std::vector<float>& partials, float* out) {
  for (int64_t t = 0; t < bucket.ntensors; ++t) {
    const int64_t first = bucket.tensors[t].first_item;
    const int64_t last = t + 1 < bucket.ntensors ? bucket.tensors[t + 1].first_item : bucket.nitems;
    float sum = 0.0f;
    for (int64_t i = first; i < last; ++i) sum += partials[i];
    out[t] = sum;
  }
}

}  // namespace

void sumsq(const Bucket& bucket, const SumsqArgs& args, float* out) {
  using namespace lists;
  std::vector<float> partials(bucket.nitems, 0.0f);
  parallel_items(bucket, [&](const WorkItem& item) {
    const TensorRecord& r = bucket.tensors[item.tensor];
    auto x_of = [&](int64_t at, int n, float* x) { load(bucket, r, kSumsqX, at, n, x); };
    float total = 0.0f;
    for_each_row(r, item, x_of, [&](int64_t begin, int64_t end, float mean) {
      for_tiles(begin, end, [&](int64_t at, int n) {
        float x[kTile], w[kTile];
        load(bucket, r, kSumsqX, at, n, x);
        if (args.weighted) load(bucket, r, kSumsqW, at, n, w);
        for (int i = 0; i < n; ++i) x[i] = weighted_square(x[i] - mean, args.weighted ? w[i] : 1.0f, args.weighted);
        total += tile_sum(x, n);
      });
    });
    partials[&item - bucket.items] = total;
  });
  sum_partials(bucket, partials, out);
}

void dot(const Bucket& bucket, float* out) {
  using namespace lists;
  std::vector<float> partials(bucket.nitems, 0.0f);
  parallel_items(bucket, [&](const WorkItem& item) {
    const TensorRecord& r = bucket.tensors[item.tensor];
    float total = 0.0f;
    for_tiles(item.begin, item.end, [&](int64_t at, int n) {
      float x[kTile], y[kTile];
      load(bucket, r, kDotX, at, n, x);
      load(bucket, r, kDotY, at, n, y);
      for (int i = 0; i < n; ++i) x[i] *= y[i];
      total += tile_sum(x, n);
    });
    partials[&item - bucket.items] = total;
  });
  sum_partials(bucket, partials, out);
}

void perturb(const Bucket& bucket, const PerturbArgs& args) {
  using namespace lists;
  const bool skip = should_skip(args.found_inf);
  const float scale = args.scale.get();
  const int64_t psize = dtype_size(bucket.dtype[kPerturbP]);
  parallel_items(bucket, [&](const WorkItem& item) {
    const TensorRecord& r = bucket.tensors[item.tensor];
    const int base = has_list(r, kPerturbBase) ? kPerturbBase : kPerturbP;
    auto d_of = [&](int64_t at, int n, float* d) { load(bucket, r, kPerturbD, at, n, d); };
    for_each_row(r, item, d_of, [&](int64_t begin, int64_t end, float mean) {
      for_tiles(begin, end, [&](int64_t at, int n) {
        if (has_list(r, kPerturbSave))  // the exact bytes SAM restores from, taken before p changes
          std::memcpy(reinterpret_cast<char*>(r.ptr[kPerturbSave]) + at * psize,
                      reinterpret_cast<const char*>(r.ptr[kPerturbP]) + at * psize, n * psize);
        if (skip) return;
        float b[kTile], d[kTile];
        load(bucket, r, base, at, n, b);
        load(bucket, r, kPerturbD, at, n, d);
        for (int i = 0; i < n; ++i) b[i] = perturbed(b[i], d[i] - mean, scale, args.adaptive);
        store(bucket, r, kPerturbP, at, n, b);
      });
    });
  });
}

void noise(const Bucket& bucket, const NoiseArgs& args) {
  using namespace lists;
  if (should_skip(args.found_inf)) return;
  const float coef = args.coef.get();
  parallel_items(bucket, [&](const WorkItem& item) {
    const TensorRecord& r = bucket.tensors[item.tensor];
    const int base = has_list(r, kNoiseBase) ? kNoiseBase : kNoiseP;
    const uint64_t offset = static_cast<uint64_t>(r.aux);
    for_tiles(item.begin, item.end, [&](int64_t at, int n) {
      float b[kTile];
      load(bucket, r, base, at, n, b);
      for (int i = 0; i < n; ++i)
        b[i] = noised(b[i], coef, normal_for_element(offset + at + i, args.seed, args.step, args.sample));
      store(bucket, r, kNoiseP, at, n, b);
    });
  });
}

void philox(const PhiloxArgs& args) {
  at::parallel_for(0, args.n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const PhiloxWords w = philox_for_element(args.offset + k, args.seed, args.step, args.sample);
      int64_t* row = args.out + 4 * k;
      row[0] = w.x0;
      row[1] = w.x1;
      row[2] = w.x2;
      row[3] = w.x3;
    }
  });
}

namespace {

// The element loops of the two updates, as plain functions of values and restrict pointers so
// the compiler sees no aliasing and vectorises them (inside the capturing lambdas it would not).
void sgd_tile(int n, const float* __restrict g, float* __restrict b, float* __restrict buf, float mean, float lr,
              float grad_scale, SgdHyper h) {
  for (int i = 0; i < n; ++i) b[i] = sgd_update(sgd_grad(g[i], b[i], grad_scale, h) - mean, b[i], buf[i], lr, h);
}

void adam_tile(int n, const float* __restrict g, float* __restrict b, float* __restrict m, float* __restrict v,
               float* __restrict vmax, float mean, float lr, float grad_scale, AdamBias bias, const AdamHyper& hyper) {
  const AdamHyper h = hyper;
  for (int i = 0; i < n; ++i)
    b[i] = adam_update(adam_grad(g[i], b[i], grad_scale, h) - mean, b[i], m[i], v[i], vmax[i], lr, bias, h);
}

}  // namespace

void step_sgd(const Bucket& bucket, const SgdArgs& args) {
  using namespace lists;
  if (should_skip(args.found_inf)) return;
  const SgdHyper& h = args.h;
  const float lr = args.lr.get();
  const float grad_scale = args.grad_scale ? *args.grad_scale : 1.0f;
  parallel_items(bucket, [&](const WorkItem& item) {
    const TensorRecord& r = bucket.tensors[item.tensor];
    const int base = has_list(r, kSgdBackup) ? kSgdBackup : kSgdP;
    auto g_of = [&](int64_t at, int n, float* g) {
      float b[kTile];
      load(bucket, r, kSgdG, at, n, g);
      load(bucket, r, base, at, n, b);
      for (int i = 0; i < n; ++i) g[i] = sgd_grad(g[i], b[i], grad_scale, h);
    };
    for_each_row(r, item, g_of, [&](int64_t begin, int64_t end, float mean) {
      for_tiles(begin, end, [&](int64_t at, int n) {
        float g[kTile], b[kTile], buf[kTile];
        load(bucket, r, kSgdG, at, n, g);
        load(bucket, r, base, at, n, b);
        if (h.has_momentum && !h.init_buffers)
          load(bucket, r, kSgdBuf, at, n, buf);
        else
          std::fill(buf, buf + n, 0.0f);  // not read for the result; defined values all the same
        sgd_tile(n, g, b, buf, mean, lr, grad_scale, h);
        if (h.has_momentum) store(bucket, r, kSgdBuf, at, n, buf);
        store(bucket, r, kSgdP, at, n, b);
      });
    });
  });
}

void step_adam(const Bucket& bucket, const AdamArgs& args) {
  using namespace lists;
  if (should_skip(args.found_inf)) return;
  const AdamHyper& h = args.h;
  const float lr = args.lr.get();
  const float grad_scale = args.grad_scale ? *args.grad_scale : 1.0f;
  parallel_items(bucket, [&](const WorkItem& item) {
    const TensorRecord& r = bucket.tensors[item.tensor];
    const AdamBias bias = adam_bias(*reinterpret_cast<const float*>(r.aux) + 1.0f, h);
    const int base = has_list(r, kAdamBackup) ? kAdamBackup : kAdamP;
    auto g_of = [&](int64_t at, int n, float* g) {
      float b[kTile];
      load(bucket, r, kAdamG, at, n, g);
      load(bucket, r, base, at, n, b);
      for (int i = 0; i < n; ++i) g[i] = adam_grad(g[i], b[i], grad_scale, h);
    };
    for_each_row(r, item, g_of, [&](int64_t begin, int64_t end, float mean) {
      for_tiles(begin, end, [&](int64_t at, int n) {
        float g[kTile], b[kTile], m[kTile], v[kTile], vmax[kTile];
        load(bucket, r, kAdamG, at, n, g);
        load(bucket, r, base, at, n, b);
        load(bucket, r, kAdamM, at, n, m);
        load(bucket, r, kAdamV, at, n, v);
        if (h.amsgrad)
          load(bucket, r, kAdamVmax, at, n, vmax);
        else
          std::fill(vmax, vmax + n, 0.0f);  // adam_update's convention without amsgrad
        adam_tile(n, g, b, m, v, vmax, mean, lr, grad_scale, bias, h);
        store(bucket, r, kAdamM, at, n, m);
        store(bucket, r, kAdamV, at, n, v);
        if (h.amsgrad) store(bucket, r, kAdamVmax, at, n, vmax);
        store(bucket, r, kAdamP, at, n, b);
      });
    });
  });
  // Only now, after every item has read its tensor's old step.
  for (int64_t t = 0; t < bucket.ntensors; ++t) *reinterpret_cast<float*>(bucket.tensors[t].aux) += 1.0f;
}

void centralize(const Bucket& bucket) {
  using namespace lists;
  parallel_items(bucket, [&](const WorkItem& item) {
    const TensorRecord& r = bucket.tensors[item.tensor];
    auto x_of = [&](int64_t at, int n, float* x) { load(bucket, r, kCentralizeX, at, n, x); };
    for_each_row(r, item, x_of, [&](int64_t begin, int64_t end, float mean) {
      for_tiles(begin, end, [&](int64_t at, int n) {
        float x[kTile];
        load(bucket, r, kCentralizeX, at, n, x);
        for (int i = 0; i < n; ++i) x[i] -= mean;
        store(bucket, r, kCentralizeX, at, n, x);
      });
    });
  });
}

void axpby(const Bucket& bucket, const AxpbyArgs& args) {
  using namespace lists;
  const float a = args.a.get(), b = args.b.get();
  parallel_items(bucket, [&](const WorkItem& item) {
    const TensorRecord& r = bucket.tensors[item.tensor];
    for_tiles(item.begin, item.end, [&](int64_t at, int n) {
      float y[kTile], x[kTile];
      if (!args.a_is_zero) load(bucket, r, kAxpbyY, at, n, y);
      load(bucket, r, kAxpbyX, at, n, x);
      for (int i = 0; i < n; ++i) y[i] = axpby_value(args.a_is_zero ? 0.0f : y[i], x[i], a, b, args.a_is_zero);
      store(bucket, r, kAxpbyY, at, n, y);
    });
  });
}

}  // namespace cpu
}  // namespace flatmin
