// The CUDA element-wise updates: perturb_, step_sgd_, step_adam_, centralize_. One launch per
// bucket (Adam adds a second launch, a thread per tensor, for its step counters), a block per work
// item, over the per-element math of elementwise.h. Scalars, grad_scale and found_inf are read from device memory
// in the kernels, so nothing here waits for the host or makes the host wait.
#include "dispatch.cuh"
#include "flatmin/elementwise.h"
#include "flatmin/op_args.h"
#include "multi_tensor.cuh"

namespace flatmin {
namespace cuda {
namespace {

using namespace lists;

// ---------------------------------------------------------------------------- perturb_

template <class P, class S>
struct PerturbOp {
  static constexpr int kValues = 1;
  static constexpr bool kReduces = false;
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
    launch_items<PerturbOp<P, S>>(bk, a, nullptr, stream, "perturb_");
  }
};

// ---------------------------------------------------------------------------- step_sgd_, step_adam_

// The lists SGD and Adam have in common.
template <int P, int G, int G2, int Backup>
struct UpdateLists {
  static constexpr int kP = P, kG = G, kG2 = G2, kBackup = Backup;
};

// What SGD and Adam share: the direction from g (and g2) with L2 decay on the base weights b (the
// backup when given), GC's row sums of it, and the restore of a skipped step.
template <class P, class S, uint32_t SLists, int N, class L>
struct UpdateBase {
  static constexpr int kValues = 1;
  static constexpr bool kReduces = false;
  static constexpr int kV = vector_width<P, S>();
  template <int I>
  using D = RoleOf<SLists, I, P, S>;

  ItemLists<N> li;
  Direction dir;
  float l2;
  bool centralize, skip;

  __device__ UpdateBase(const Bucket& bk, const WorkItem& item, const DirectionArgs& d, float l2_decay,
                        bool centralized, SkipFlag found_inf)
      : li(bk, item.tensor), dir(d.get()), l2(l2_decay), centralize(centralized), skip(found_inf.get()) {}

  __device__ bool aligned(int64_t k) const { return li.aligned(k); }

  // the direction before GC into g, and the base weights b, at [k, k + V)
  template <int V>
  __device__ void gradient(int64_t k, float (&g)[V], float (&b)[V]) const {
    float g2[V] = {};
    load<D<L::kG>, V>(li.at[L::kG], k, li.rt[L::kG], g);
    if (li.has(L::kG2)) load<D<L::kG2>, V>(li.at[L::kG2], k, li.rt[L::kG2], g2);
    if (li.has(L::kBackup))
      load<D<L::kBackup>, V>(li.at[L::kBackup], k, li.rt[L::kBackup], b);
    else
      load<D<L::kP>, V>(li.at[L::kP], k, li.rt[L::kP], b);
#pragma unroll
    for (int i = 0; i < V; ++i) g[i] = l2_grad(direction(g[i], g2[i], dir, li.has(L::kG2)), b[i], l2);
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

  // On a skipped step: restores the weights SAM perturbed (p <- backup) and says so.
  template <int V>
  __device__ bool restored(int64_t k) const {
    if (!skip) return false;
    if (li.has(L::kBackup))
      copy<D<L::kBackup>, D<L::kP>, V>(li.at[L::kBackup], li.rt[L::kBackup], li.at[L::kP], li.rt[L::kP], k);
    return true;
  }
};

template <class P, class S>
struct SgdOp : UpdateBase<P, S, bit(kSgdG2) | bit(kSgdBuf), 5, UpdateLists<kSgdP, kSgdG, kSgdG2, kSgdBackup>> {
  using Base = UpdateBase<P, S, bit(kSgdG2) | bit(kSgdBuf), 5, UpdateLists<kSgdP, kSgdG, kSgdG2, kSgdBackup>>;
  template <int I>
  using D = typename Base::template D<I>;
  SgdHyper h;
  float lr;

  __device__ SgdOp(const Bucket& bk, const SgdArgs& a, const WorkItem& item)
      : Base(bk, item, a.dir, a.h.weight_decay, a.centralize, a.found_inf), h(a.h), lr(a.lr.get()) {}

  template <int V>
  __device__ void apply(int64_t k, float mean, float (&)[1]) const {
    if (this->template restored<V>(k)) return;
    const ItemLists<5>& li = this->li;
    float g[V], b[V], buf[V] = {};
    this->template gradient<V>(k, g, b);
    if (h.has_momentum && !h.init_buffers) load<D<kSgdBuf>, V>(li.at[kSgdBuf], k, li.rt[kSgdBuf], buf);
#pragma unroll
    for (int i = 0; i < V; ++i) b[i] = sgd_update(g[i] - mean, b[i], buf[i], lr, h);
    if (h.has_momentum) store<D<kSgdBuf>, V>(li.at[kSgdBuf], k, li.rt[kSgdBuf], buf);
    store<D<kSgdP>, V>(li.at[kSgdP], k, li.rt[kSgdP], b);
  }
};

struct SgdLaunch {
  template <class P, class S>
  static void run(const Bucket& bk, const SgdArgs& a, void* stream) {
    launch_items<SgdOp<P, S>>(bk, a, nullptr, stream, "step_sgd_");
  }
};

constexpr uint32_t kAdamS = bit(kAdamG2) | bit(kAdamM) | bit(kAdamV) | bit(kAdamVmax);
using AdamLists = UpdateLists<kAdamP, kAdamG, kAdamG2, kAdamBackup>;

template <class P, class S>
struct AdamOp : UpdateBase<P, S, kAdamS, 7, AdamLists> {  // kAdamSteps is read once per block, below
  using Base = UpdateBase<P, S, kAdamS, 7, AdamLists>;
  template <int I>
  using D = typename Base::template D<I>;
  AdamHyper h;
  AdamStep step;
  float decay;
  bool amsgrad;

  __device__ AdamOp(const Bucket& bk, const AdamArgs& a, const WorkItem& item)
      : Base(bk, item, a.dir, adam_l2(a.h), a.centralize, a.found_inf), h(a.h), amsgrad(a.amsgrad) {
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

  template <int V>
  __device__ void apply(int64_t k, float mean, float (&)[1]) const {
    if (this->template restored<V>(k)) return;
    const ItemLists<7>& li = this->li;
    float g[V], b[V], m[V], v[V], vmax[V] = {};
    this->template gradient<V>(k, g, b);
    load<D<kAdamM>, V>(li.at[kAdamM], k, li.rt[kAdamM], m);
    load<D<kAdamV>, V>(li.at[kAdamV], k, li.rt[kAdamV], v);
    if (amsgrad) load<D<kAdamVmax>, V>(li.at[kAdamVmax], k, li.rt[kAdamVmax], vmax);
#pragma unroll
    for (int i = 0; i < V; ++i)
      b[i] = adam_update(g[i] - mean, adam_base(b[i], decay, h), m[i], v[i], vmax[i], amsgrad, step, h);
    store<D<kAdamM>, V>(li.at[kAdamM], k, li.rt[kAdamM], m);
    store<D<kAdamV>, V>(li.at[kAdamV], k, li.rt[kAdamV], v);
    if (amsgrad) store<D<kAdamVmax>, V>(li.at[kAdamVmax], k, li.rt[kAdamVmax], vmax);
    store<D<kAdamP>, V>(li.at[kAdamP], k, li.rt[kAdamP], b);
  }
};

struct AdamLaunch {
  template <class P, class S>
  static void run(const Bucket& bk, const AdamArgs& a, void* stream) {
    launch_items<AdamOp<P, S>>(bk, a, nullptr, stream, "step_adam_");
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
