// The CUDA element-wise updates: perturb_, step_sgd_, step_adam_, centralize_. One launch per
// bucket (Adam adds a per-tensor launch for its step counters), a block per work item, over the
// per-element math of elementwise.h. Scalars, grad_scale and found_inf are read from device memory
// in the kernels, so nothing here waits for the host or makes the host wait.
#include "dispatch.cuh"
#include "flatmin/elementwise.h"
#include "flatmin/op_args.h"
#include "multi_tensor.cuh"

namespace flatmin {
namespace cuda {
namespace {

using namespace lists;

cudaStream_t as_cuda(void* stream) { return static_cast<cudaStream_t>(stream); }

constexpr uint32_t bit(int l) { return 1u << l; }

// A block per work item; the op does the rest (see multi_tensor.cuh).
template <class Op, class Args>
__global__ void __launch_bounds__(kThreads, 1) item_kernel(Bucket bk, Args args) {
  const WorkItem item = bk.items[blockIdx.x];
  Op op(bk, args, item);
  float acc[Op::kValues] = {};
  run_item<Op::kV>(op, item, op.centralize ? item.row_len : 0, acc);
}

template <class Op, class Args>
void launch_items(const Bucket& bk, const Args& args, void* stream, const char* what) {
  if (bk.nitems == 0) return;
  item_kernel<Op, Args><<<static_cast<unsigned>(bk.nitems), kThreads, 0, as_cuda(stream)>>>(bk, args);
  check_launch(what);
}

// ---------------------------------------------------------------------------- perturb_

template <class P, class S>
struct PerturbOp {
  static constexpr int kValues = 1;
  static constexpr int kV = vector_width<P, S>();
  static constexpr uint32_t kS = bit(kPerturbD) | bit(kPerturbMinus) | bit(kPerturbDCopy);
  template <int L>
  using D = RoleOf<kS, L, P, S>;

  ItemLists<6> li;
  float scale;
  bool adaptive, centralize, skip;

  __device__ PerturbOp(const Bucket& bk, const PerturbArgs& a, const WorkItem& item)
      : li(bk, item.tensor), scale(a.scale.get()), adaptive(a.adaptive), centralize(a.centralize),
        skip(a.found_inf.get()) {}

  __device__ bool aligned(int64_t k) const { return li.aligned(k); }

  template <int V>
  __device__ float pre(int64_t k) const {
    float d[V], m[V] = {};
    load<D<kPerturbD>, V>(li.at[kPerturbD], k, li.rt[kPerturbD], d);
    if (li.has(kPerturbMinus)) load<D<kPerturbMinus>, V>(li.at[kPerturbMinus], k, li.rt[kPerturbMinus], m);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < V; ++i) s += li.has(kPerturbMinus) ? d[i] - m[i] : d[i];
    return s;
  }

  template <int V>
  __device__ void apply(int64_t k, float mean, float (&)[kValues]) const {
    // the exact bytes SAM restores, and GAM's copy of the direction: written even when skipping
    if (li.has(kPerturbSave))
      copy<D<kPerturbP>, D<kPerturbSave>, V>(li.at[kPerturbP], li.rt[kPerturbP], li.at[kPerturbSave], li.rt[kPerturbSave], k);
    if (li.has(kPerturbDCopy))
      copy<D<kPerturbD>, D<kPerturbDCopy>, V>(li.at[kPerturbD], li.rt[kPerturbD], li.at[kPerturbDCopy],
                                              li.rt[kPerturbDCopy], k);
    if (skip) return;
    float d[V], m[V] = {}, b[V];
    load<D<kPerturbD>, V>(li.at[kPerturbD], k, li.rt[kPerturbD], d);
    if (li.has(kPerturbMinus)) load<D<kPerturbMinus>, V>(li.at[kPerturbMinus], k, li.rt[kPerturbMinus], m);
    if (li.has(kPerturbBase))
      load<D<kPerturbBase>, V>(li.at[kPerturbBase], k, li.rt[kPerturbBase], b);
    else
      load<D<kPerturbP>, V>(li.at[kPerturbP], k, li.rt[kPerturbP], b);
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const float dir = li.has(kPerturbMinus) ? d[i] - m[i] : d[i];
      b[i] = perturbed(b[i], dir - mean, scale, adaptive);
    }
    store<D<kPerturbP>, V>(li.at[kPerturbP], k, li.rt[kPerturbP], b);
  }
};

struct PerturbLaunch {
  template <class P, class S>
  static void run(const Bucket& bk, const PerturbArgs& a, void* stream) {
    launch_items<PerturbOp<P, S>>(bk, a, stream, "perturb_");
  }
};

// ---------------------------------------------------------------------------- step_sgd_

template <class P, class S>
struct SgdOp {
  static constexpr int kValues = 1;
  static constexpr int kV = vector_width<P, S>();
  static constexpr uint32_t kS = bit(kSgdG2) | bit(kSgdBuf);
  template <int L>
  using D = RoleOf<kS, L, P, S>;

  ItemLists<5> li;
  SgdHyper h;
  Direction dir;
  float lr;
  bool centralize, skip;

  __device__ SgdOp(const Bucket& bk, const SgdArgs& a, const WorkItem& item)
      : li(bk, item.tensor), h(a.h), dir(a.dir.get()), lr(a.lr.get()), centralize(a.centralize),
        skip(a.found_inf.get()) {}

  __device__ bool aligned(int64_t k) const { return li.aligned(k); }

  // g (and g2) and the base weights b at [k, k + V); the direction before GC into g
  template <int V>
  __device__ void gradient(int64_t k, float (&g)[V], float (&b)[V]) const {
    float g2[V] = {};
    load<D<kSgdG>, V>(li.at[kSgdG], k, li.rt[kSgdG], g);
    if (li.has(kSgdG2)) load<D<kSgdG2>, V>(li.at[kSgdG2], k, li.rt[kSgdG2], g2);
    if (li.has(kSgdBackup))
      load<D<kSgdBackup>, V>(li.at[kSgdBackup], k, li.rt[kSgdBackup], b);
    else
      load<D<kSgdP>, V>(li.at[kSgdP], k, li.rt[kSgdP], b);
#pragma unroll
    for (int i = 0; i < V; ++i) g[i] = sgd_grad(direction(g[i], g2[i], dir, li.has(kSgdG2)), b[i], h);
  }

  template <int V>
  __device__ float pre(int64_t k) const {
    float g[V], b[V];
    gradient<V>(k, g, b);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < V; ++i) s += g[i];
    return s;
  }

  template <int V>
  __device__ void apply(int64_t k, float mean, float (&)[kValues]) const {
    if (skip) {  // a skipped step still restores the weights SAM perturbed
      if (li.has(kSgdBackup))
        copy<D<kSgdBackup>, D<kSgdP>, V>(li.at[kSgdBackup], li.rt[kSgdBackup], li.at[kSgdP], li.rt[kSgdP], k);
      return;
    }
    float g[V], b[V], buf[V];
    gradient<V>(k, g, b);
    if (h.has_momentum && !h.init_buffers) {
      load<D<kSgdBuf>, V>(li.at[kSgdBuf], k, li.rt[kSgdBuf], buf);
    } else {
#pragma unroll
      for (int i = 0; i < V; ++i) buf[i] = 0.0f;
    }
#pragma unroll
    for (int i = 0; i < V; ++i) b[i] = sgd_update(g[i] - mean, b[i], buf[i], lr, h);
    if (h.has_momentum) store<D<kSgdBuf>, V>(li.at[kSgdBuf], k, li.rt[kSgdBuf], buf);
    store<D<kSgdP>, V>(li.at[kSgdP], k, li.rt[kSgdP], b);
  }
};

struct SgdLaunch {
  template <class P, class S>
  static void run(const Bucket& bk, const SgdArgs& a, void* stream) {
    launch_items<SgdOp<P, S>>(bk, a, stream, "step_sgd_");
  }
};

// ---------------------------------------------------------------------------- step_adam_

template <class P, class S>
struct AdamOp {
  static constexpr int kValues = 1;
  static constexpr int kV = vector_width<P, S>();
  static constexpr uint32_t kS = bit(kAdamG2) | bit(kAdamM) | bit(kAdamV) | bit(kAdamVmax);
  template <int L>
  using D = RoleOf<kS, L, P, S>;

  ItemLists<7> li;  // kAdamSteps is read once per block, below
  AdamHyper h;
  Direction dir;
  AdamStep step;
  float decay;
  bool amsgrad, centralize, skip;

  __device__ AdamOp(const Bucket& bk, const AdamArgs& a, const WorkItem& item)
      : li(bk, item.tensor), h(a.h), dir(a.dir.get()), amsgrad(a.amsgrad), centralize(a.centralize),
        skip(a.found_inf.get()) {
    const float lr = a.lr.get();
    decay = adam_decay_factor(a.lr_number, lr, a.lr.is_number(), h.weight_decay);
    // The bias corrections once per block (two fp64 pow), shared with every thread. Every block
    // reads the old step; adam_steps_kernel bumps it after the update.
    __shared__ AdamStep shared_step;
    if (threadIdx.x == 0) {
      const float new_step = *reinterpret_cast<const float*>(bk.ptrs[kAdamSteps][item.tensor]) + 1.0f;
      shared_step = adam_step_values(new_step, lr, a.lr.is_number(), h);
    }
    __syncthreads();
    step = shared_step;
  }

  __device__ bool aligned(int64_t k) const { return li.aligned(k); }

  template <int V>
  __device__ void gradient(int64_t k, float (&g)[V], float (&b)[V]) const {
    float g2[V] = {};
    load<D<kAdamG>, V>(li.at[kAdamG], k, li.rt[kAdamG], g);
    if (li.has(kAdamG2)) load<D<kAdamG2>, V>(li.at[kAdamG2], k, li.rt[kAdamG2], g2);
    if (li.has(kAdamBackup))
      load<D<kAdamBackup>, V>(li.at[kAdamBackup], k, li.rt[kAdamBackup], b);
    else
      load<D<kAdamP>, V>(li.at[kAdamP], k, li.rt[kAdamP], b);
#pragma unroll
    for (int i = 0; i < V; ++i) g[i] = adam_grad(direction(g[i], g2[i], dir, li.has(kAdamG2)), b[i], h);
  }

  template <int V>
  __device__ float pre(int64_t k) const {
    float g[V], b[V];
    gradient<V>(k, g, b);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < V; ++i) s += g[i];
    return s;
  }

  template <int V>
  __device__ void apply(int64_t k, float mean, float (&)[kValues]) const {
    if (skip) {  // a skipped step still restores the weights SAM perturbed
      if (li.has(kAdamBackup))
        copy<D<kAdamBackup>, D<kAdamP>, V>(li.at[kAdamBackup], li.rt[kAdamBackup], li.at[kAdamP], li.rt[kAdamP], k);
      return;
    }
    float g[V], b[V], m[V], v[V], vmax[V] = {};
    gradient<V>(k, g, b);
    load<D<kAdamM>, V>(li.at[kAdamM], k, li.rt[kAdamM], m);
    load<D<kAdamV>, V>(li.at[kAdamV], k, li.rt[kAdamV], v);
    if (amsgrad) load<D<kAdamVmax>, V>(li.at[kAdamVmax], k, li.rt[kAdamVmax], vmax);
#pragma unroll
    for (int i = 0; i < V; ++i) b[i] = adam_update(g[i] - mean, adam_base(b[i], decay, h), m[i], v[i], vmax[i], amsgrad, step, h);
    store<D<kAdamM>, V>(li.at[kAdamM], k, li.rt[kAdamM], m);
    store<D<kAdamV>, V>(li.at[kAdamV], k, li.rt[kAdamV], v);
    if (amsgrad) store<D<kAdamVmax>, V>(li.at[kAdamVmax], k, li.rt[kAdamVmax], vmax);
    store<D<kAdamP>, V>(li.at[kAdamP], k, li.rt[kAdamP], b);
  }
};

struct AdamLaunch {
  template <class P, class S>
  static void run(const Bucket& bk, const AdamArgs& a, void* stream) {
    launch_items<AdamOp<P, S>>(bk, a, stream, "step_adam_");
  }
};

__global__ void adam_steps_kernel(Bucket bk, SkipFlag found_inf) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t < bk.ntensors && !found_inf.get()) *reinterpret_cast<float*>(bk.ptrs[kAdamSteps][t]) += 1.0f;
}

// ---------------------------------------------------------------------------- centralize_

template <class P, class S>
struct CentralizeOp {
  static constexpr int kValues = 1;
  static constexpr int kV = vector_width<P, S>();
  ItemLists<1> li;
  bool centralize = true;

  __device__ CentralizeOp(const Bucket& bk, const int&, const WorkItem& item) : li(bk, item.tensor) {}
  __device__ bool aligned(int64_t k) const { return li.aligned(k); }

  template <int V>
  __device__ float pre(int64_t k) const {
    float x[V];
    load<P, V>(li.at[kCentralizeX], k, li.rt[kCentralizeX], x);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < V; ++i) s += x[i];
    return s;
  }

  template <int V>
  __device__ void apply(int64_t k, float mean, float (&)[kValues]) const {
    float x[V];
    load<P, V>(li.at[kCentralizeX], k, li.rt[kCentralizeX], x);
#pragma unroll
    for (int i = 0; i < V; ++i) x[i] -= mean;
    store<P, V>(li.at[kCentralizeX], k, li.rt[kCentralizeX], x);
  }
};

// Only the items of centralized tensors do anything.
template <class P, class S>
__global__ void __launch_bounds__(kThreads, 1) centralize_kernel(Bucket bk) {
  const WorkItem item = bk.items[blockIdx.x];
  if (item.row_len == 0) return;
  CentralizeOp<P, S> op(bk, 0, item);
  float acc[1] = {};
  run_item<CentralizeOp<P, S>::kV>(op, item, item.row_len, acc);
}

struct CentralizeLaunch {
  template <class P, class S>
  static void run(const Bucket& bk, void* stream) {
    if (bk.nitems == 0) return;
    centralize_kernel<P, S><<<static_cast<unsigned>(bk.nitems), kThreads, 0, as_cuda(stream)>>>(bk);
    check_launch("centralize_");
  }
};

}  // namespace

void perturb(const Bucket& bk, const PerturbArgs& args, void* stream) {
  dispatch_dtypes<PerturbLaunch>(bk, bit(kPerturbP) | bit(kPerturbBase) | bit(kPerturbSave),
                                 bit(kPerturbD) | bit(kPerturbMinus) | bit(kPerturbDCopy), bk, args, stream);
}

void step_sgd(const Bucket& bk, const SgdArgs& args, void* stream) {
  dispatch_dtypes<SgdLaunch>(bk, bit(kSgdP) | bit(kSgdG) | bit(kSgdBackup), bit(kSgdG2) | bit(kSgdBuf), bk, args,
                             stream);
}

void step_adam(const Bucket& bk, const AdamArgs& args, void* stream) {
  dispatch_dtypes<AdamLaunch>(bk, bit(kAdamP) | bit(kAdamG) | bit(kAdamBackup),
                              bit(kAdamG2) | bit(kAdamM) | bit(kAdamV) | bit(kAdamVmax), bk, args, stream);
  if (bk.ntensors > 0) {  // every tensor's step advances, 0-element ones included
    const unsigned blocks = static_cast<unsigned>((bk.ntensors + 255) / 256);
    adam_steps_kernel<<<blocks, 256, 0, as_cuda(stream)>>>(bk, args.found_inf);
    check_launch("step_adam_ (steps)");
  }
}

void centralize(const Bucket& bk, void* stream) {
  dispatch_dtypes<CentralizeLaunch>(bk, bit(kCentralizeX), 0, bk, stream);
}

}  // namespace cuda
}  // namespace flatmin
