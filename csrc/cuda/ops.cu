// The CUDA build of every op: one launch per bucket (plus a small second stage for reductions
// and Adam's step counters), over the same per-element math as the CPU build.
// Scalars, grad_scale and found_inf are read from device memory inside the kernels, so
// nothing here waits for the host or makes the host wait.
#include "flatmin/elementwise.h"
#include "flatmin/op_args.h"
#include "flatmin/philox.h"
#include "multi_tensor.cuh"

namespace flatmin {
namespace cuda {
namespace {

using namespace lists;

cudaStream_t as_cuda(void* stream) { return static_cast<cudaStream_t>(stream); }

// ---------------------------------------------------------------------------- reductions

__global__ void sumsq_kernel(Bucket bk, SumsqArgs args, float* partials) {
  const WorkItem item = bk.items[blockIdx.x];
  const TensorRecord r = bk.tensors[item.tensor];
  auto pre = [&](int64_t k) {
    float x;
    load<1>(bk, r, kSumsqX, k, &x);
    return x;
  };
  auto apply = [&](auto vec, int64_t k, float mean) {
    constexpr int V = decltype(vec)::value;
    float x[V], w[V];
    load<V>(bk, r, kSumsqX, k, x);
    if (args.weighted) load<V>(bk, r, kSumsqW, k, w);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < V; ++i) s += weighted_square(x[i] - mean, args.weighted ? w[i] : 1.0f, args.weighted);
    return s;
  };
  const float total = block_sum(for_item(bk, r, item, pre, apply));
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

__global__ void dot_kernel(Bucket bk, float* partials) {
  const WorkItem item = bk.items[blockIdx.x];
  const TensorRecord r = bk.tensors[item.tensor];
  auto apply = [&](auto vec, int64_t k, float) {
    constexpr int V = decltype(vec)::value;
    float x[V], y[V];
    load<V>(bk, r, kDotX, k, x);
    load<V>(bk, r, kDotY, k, y);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < V; ++i) s += x[i] * y[i];
    return s;
  };
  const float total = block_sum(for_item(bk, r, item, [](int64_t) { return 0.0f; }, apply));
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// Stage 2: a warp per tensor sums that tensor's item partials in a fixed order.
__global__ void sum_partials_kernel(Bucket bk, const float* partials, float* out) {
  const int64_t t = blockIdx.x;
  const int64_t first = bk.tensors[t].first_item;
  const int64_t last = t + 1 < bk.ntensors ? bk.tensors[t + 1].first_item : bk.nitems;
  float sum = 0.0f;
  for (int64_t i = first + threadIdx.x; i < last; i += kWarp) sum += partials[i];
  sum = warp_sum(sum);
  if (threadIdx.x == 0) out[t] = sum;
}

void reduce(const Bucket& bk, float* partials, float* out, cudaStream_t stream) {
  if (bk.ntensors == 0) return;
  sum_partials_kernel<<<static_cast<unsigned>(bk.ntensors), kWarp, 0, stream>>>(bk, partials, out);
  check_launch("sum_partials");
}

// ---------------------------------------------------------------------------- element-wise

__global__ void perturb_kernel(Bucket bk, PerturbArgs args) {
  const WorkItem item = bk.items[blockIdx.x];
  const TensorRecord r = bk.tensors[item.tensor];
  const bool skip = should_skip(args.found_inf);
  const float scale = args.scale.get();
  const int base = has_list(r, kPerturbBase) ? kPerturbBase : kPerturbP;
  const bool save = has_list(r, kPerturbSave);
  auto pre = [&](int64_t k) {
    float d;
    load<1>(bk, r, kPerturbD, k, &d);
    return d;
  };
  auto apply = [&](auto vec, int64_t k, float mean) {
    constexpr int V = decltype(vec)::value;
    float b[V], d[V];
    if (save) copy_bits<V>(bk, r, kPerturbP, kPerturbSave, k);  // the exact weights SAM restores
    if (skip) return 0.0f;
    load<V>(bk, r, base, k, b);
    load<V>(bk, r, kPerturbD, k, d);
#pragma unroll
    for (int i = 0; i < V; ++i) b[i] = perturbed(b[i], d[i] - mean, scale, args.adaptive);
    store<V>(bk, r, kPerturbP, k, b);
    return 0.0f;
  };
  for_item(bk, r, item, pre, apply);
}

__global__ void noise_kernel(Bucket bk, NoiseArgs args) {
  if (should_skip(args.found_inf)) return;
  const WorkItem item = bk.items[blockIdx.x];
  const TensorRecord r = bk.tensors[item.tensor];
  const float coef = args.coef.get();
  const int base = has_list(r, kNoiseBase) ? kNoiseBase : kNoiseP;
  const uint64_t offset = static_cast<uint64_t>(r.aux);
  auto apply = [&](auto vec, int64_t k, float) {
    constexpr int V = decltype(vec)::value;
    float b[V];
    load<V>(bk, r, base, k, b);
#pragma unroll
    for (int i = 0; i < V; ++i)
      b[i] = noised(b[i], coef, normal_for_element(offset + k + i, args.seed, args.step, args.sample));
    store<V>(bk, r, kNoiseP, k, b);
    return 0.0f;
  };
  for_item(bk, r, item, [](int64_t) { return 0.0f; }, apply);
}

__global__ void philox_kernel(PhiloxArgs args) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < args.n; k += int64_t(gridDim.x) * blockDim.x) {
    const PhiloxWords w = philox_for_element(args.offset + k, args.seed, args.step, args.sample);
    int64_t* row = args.out + 4 * k;
    row[0] = w.x0, row[1] = w.x1, row[2] = w.x2, row[3] = w.x3;
  }
}

__global__ void sgd_kernel(Bucket bk, SgdArgs args) {
  if (should_skip(args.found_inf)) return;
  const WorkItem item = bk.items[blockIdx.x];
  const TensorRecord r = bk.tensors[item.tensor];
  const SgdHyper& h = args.h;
  const float lr = args.lr.get();
  const float grad_scale = args.grad_scale ? *args.grad_scale : 1.0f;
  const int base = has_list(r, kSgdBackup) ? kSgdBackup : kSgdP;
  auto pre = [&](int64_t k) {
    float g, b;
    load<1>(bk, r, kSgdG, k, &g);
    load<1>(bk, r, base, k, &b);
    return sgd_grad(g, b, grad_scale, h);
  };
  auto apply = [&](auto vec, int64_t k, float mean) {
    constexpr int V = decltype(vec)::value;
    float g[V], b[V], buf[V];
    load<V>(bk, r, kSgdG, k, g);
    load<V>(bk, r, base, k, b);
    if (h.has_momentum && !h.init_buffers) load<V>(bk, r, kSgdBuf, k, buf);
#pragma unroll
    for (int i = 0; i < V; ++i) b[i] = sgd_update(sgd_grad(g[i], b[i], grad_scale, h) - mean, b[i], buf[i], lr, h);
    if (h.has_momentum) store<V>(bk, r, kSgdBuf, k, buf);
    store<V>(bk, r, kSgdP, k, b);
    return 0.0f;
  };
  for_item(bk, r, item, pre, apply);
}

__global__ void adam_kernel(Bucket bk, AdamArgs args) {
  if (should_skip(args.found_inf)) return;
  const WorkItem item = bk.items[blockIdx.x];
  const TensorRecord r = bk.tensors[item.tensor];
  const AdamHyper& h = args.h;
  const float lr = args.lr.get();
  const float grad_scale = args.grad_scale ? *args.grad_scale : 1.0f;
  // Every block of the tensor reads the old step; adam_steps_kernel bumps it afterwards.
  const AdamBias bias = adam_bias(*reinterpret_cast<const float*>(r.aux) + 1.0f, h);
  const int base = has_list(r, kAdamBackup) ? kAdamBackup : kAdamP;
  auto pre = [&](int64_t k) {
    float g, b;
    load<1>(bk, r, kAdamG, k, &g);
    load<1>(bk, r, base, k, &b);
    return adam_grad(g, b, grad_scale, h);
  };
  auto apply = [&](auto vec, int64_t k, float mean) {
    constexpr int V = decltype(vec)::value;
    float g[V], b[V], m[V], v[V], vmax[V];
    load<V>(bk, r, kAdamG, k, g);
    load<V>(bk, r, base, k, b);
    load<V>(bk, r, kAdamM, k, m);
    load<V>(bk, r, kAdamV, k, v);
    if (h.amsgrad) {
      load<V>(bk, r, kAdamVmax, k, vmax);
    } else {
#pragma unroll
      for (int i = 0; i < V; ++i) vmax[i] = 0.0f;  // adam_update's convention without amsgrad
    }
#pragma unroll
    for (int i = 0; i < V; ++i)
      b[i] = adam_update(adam_grad(g[i], b[i], grad_scale, h) - mean, b[i], m[i], v[i], vmax[i], lr, bias, h);
    store<V>(bk, r, kAdamM, k, m);
    store<V>(bk, r, kAdamV, k, v);
    if (h.amsgrad) store<V>(bk, r, kAdamVmax, k, vmax);
    store<V>(bk, r, kAdamP, k, b);
    return 0.0f;
  };
  for_item(bk, r, item, pre, apply);
}

__global__ void adam_steps_kernel(Bucket bk, const float* found_inf) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t < bk.ntensors && !should_skip(found_inf)) *reinterpret_cast<float*>(bk.tensors[t].aux) += 1.0f;
}

__global__ void centralize_kernel(Bucket bk) {
  const WorkItem item = bk.items[blockIdx.x];
  const TensorRecord r = bk.tensors[item.tensor];
  auto pre = [&](int64_t k) {
    float x;
    load<1>(bk, r, kCentralizeX, k, &x);
    return x;
  };
  auto apply = [&](auto vec, int64_t k, float mean) {
    constexpr int V = decltype(vec)::value;
    float x[V];
    load<V>(bk, r, kCentralizeX, k, x);
#pragma unroll
    for (int i = 0; i < V; ++i) x[i] -= mean;
    store<V>(bk, r, kCentralizeX, k, x);
    return 0.0f;
  };
  for_item(bk, r, item, pre, apply);
}

__global__ void axpby_kernel(Bucket bk, AxpbyArgs args) {
  const WorkItem item = bk.items[blockIdx.x];
  const TensorRecord r = bk.tensors[item.tensor];
  const float a = args.a.get(), b = args.b.get();
  auto apply = [&](auto vec, int64_t k, float) {
    constexpr int V = decltype(vec)::value;
    float y[V], x[V];
    if (!args.a_is_zero) load<V>(bk, r, kAxpbyY, k, y);
    load<V>(bk, r, kAxpbyX, k, x);
#pragma unroll
    for (int i = 0; i < V; ++i) y[i] = axpby_value(args.a_is_zero ? 0.0f : y[i], x[i], a, b, args.a_is_zero);
    store<V>(bk, r, kAxpbyY, k, y);
    return 0.0f;
  };
  for_item(bk, r, item, [](int64_t) { return 0.0f; }, apply);
}

unsigned grid(const Bucket& bk) { return static_cast<unsigned>(bk.nitems); }

}  // namespace

void sumsq(const Bucket& bk, const SumsqArgs& args, float* partials, float* out, void* stream) {
  if (bk.nitems > 0) {
    sumsq_kernel<<<grid(bk), kThreads, 0, as_cuda(stream)>>>(bk, args, partials);
    check_launch("sumsq");
  }
  reduce(bk, partials, out, as_cuda(stream));
}

void dot(const Bucket& bk, float* partials, float* out, void* stream) {
  if (bk.nitems > 0) {
    dot_kernel<<<grid(bk), kThreads, 0, as_cuda(stream)>>>(bk, partials);
    check_launch("dot");
  }
  reduce(bk, partials, out, as_cuda(stream));
}

void perturb(const Bucket& bk, const PerturbArgs& args, void* stream) {
  if (bk.nitems == 0) return;
  perturb_kernel<<<grid(bk), kThreads, 0, as_cuda(stream)>>>(bk, args);
  check_launch("perturb_");
}

void noise(const Bucket& bk, const NoiseArgs& args, void* stream) {
  if (bk.nitems == 0) return;
  noise_kernel<<<grid(bk), kThreads, 0, as_cuda(stream)>>>(bk, args);
  check_launch("noise_");
}

void philox(const PhiloxArgs& args, void* stream) {
  if (args.n == 0) return;
  const int64_t blocks = (args.n + kThreads - 1) / kThreads;
  philox_kernel<<<static_cast<unsigned>(blocks < 65535 ? blocks : 65535), kThreads, 0, as_cuda(stream)>>>(args);
  check_launch("philox");
}

void step_sgd(const Bucket& bk, const SgdArgs& args, void* stream) {
  if (bk.nitems == 0) return;
  sgd_kernel<<<grid(bk), kThreads, 0, as_cuda(stream)>>>(bk, args);
  check_launch("step_sgd_");
}

void step_adam(const Bucket& bk, const AdamArgs& args, void* stream) {
  if (bk.nitems > 0) {
    adam_kernel<<<grid(bk), kThreads, 0, as_cuda(stream)>>>(bk, args);
    check_launch("step_adam_");
  }
  if (bk.ntensors > 0) {  // every tensor's step advances, 0-element ones included
    const unsigned blocks = static_cast<unsigned>((bk.ntensors + 255) / 256);
    adam_steps_kernel<<<blocks, 256, 0, as_cuda(stream)>>>(bk, args.found_inf);
    check_launch("step_adam_ (steps)");
  }
}

void centralize(const Bucket& bk, void* stream) {
  if (bk.nitems == 0) return;
  centralize_kernel<<<grid(bk), kThreads, 0, as_cuda(stream)>>>(bk);
  check_launch("centralize_");
}

void axpby(const Bucket& bk, const AxpbyArgs& args, void* stream) {
  if (bk.nitems == 0) return;
  axpby_kernel<<<grid(bk), kThreads, 0, as_cuda(stream)>>>(bk, args);
  check_launch("axpby_");
}

}  // namespace cuda
}  // namespace flatmin
