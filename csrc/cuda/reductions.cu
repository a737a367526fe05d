// The CUDA reductions: sumsq, dot and axpby_ (whose reduce modes are GAM's norms in the same
// pass). Deterministic in two stages without atomics: each block writes its item's partial sums,
// then one block adds them in item order, accumulates them into out and runs the epilogue
// (finish_reduction, elementwise.h), all on the device.
#include "dispatch.cuh"
#include "flatmin/elementwise.h"
#include "flatmin/op_args.h"
#include "multi_tensor.cuh"

namespace flatmin {
namespace cuda {
namespace {

using namespace lists;

// Stage 2: one block adds every item's partials in a fixed order, then stores and finishes.
__global__ void __launch_bounds__(kThreads, 1) finish_kernel(int64_t nitems, const float* partials, Reduction red) {
  float totals[2];
#pragma unroll
  for (int v = 0; v < 2; ++v) {  // constant indices: totals stays in registers
    float sum = 0.0f;
    if (v < red.nvalues)
      for (int64_t i = threadIdx.x; i < nitems; i += blockDim.x) sum += partials[i * red.nvalues + v];
    totals[v] = block_sum(sum);
  }
  if (threadIdx.x == 0) finish_reduction(red, totals[0], totals[1]);
}

template <class Op, class Args>
void reduce(const Bucket& bk, const Args& args, const Reduction& red, float* partials, void* stream,
            const char* what) {
  launch_items<Op>(bk, args, partials, stream, what);  // stage 1: partials per item
  finish_kernel<<<1, kThreads, 0, as_cuda(stream)>>>(bk.nitems, partials, red);
  check_launch(what);
}

// A reduction over whole items, never centralized.
struct FlatReduction {
  static constexpr bool kReduces = true;
  bool centralize = false;
  template <int V>
  __device__ float pre(int64_t) const {
    return 0.0f;
  }
};

// ---------------------------------------------------------------------------- sumsq

template <class P, class S>
struct SumsqOp {
  static constexpr int kValues = 1;
  static constexpr bool kReduces = true;
  static constexpr int kV = vector_width<P, S>();
  template <int L>
  using D = RoleOf<0u, L, P, S>;  // x and w are both parameter-like

  ItemLists<2> li;
  bool centralize;

  __device__ SumsqOp(const Bucket& bk, const SumsqArgs& a, const WorkItem& item)
      : li(bk, item.tensor), centralize(a.centralize) {}
  __device__ bool aligned(int64_t k) const { return li.aligned(k); }

  template <int V>
  __device__ float pre(int64_t k) const {
    float x[V];
    load<D<kSumsqX>, V>(li.at[kSumsqX], k, li.rt[kSumsqX], x);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < V; ++i) s += x[i];
    return s;
  }

  template <int V>
  __device__ void apply(int64_t k, float mean, float (&acc)[kValues]) const {
    float x[V], w[V] = {};
    load<D<kSumsqX>, V>(li.at[kSumsqX], k, li.rt[kSumsqX], x);
    const bool weighted = li.has(kSumsqW);
    if (weighted) load<D<kSumsqW>, V>(li.at[kSumsqW], k, li.rt[kSumsqW], w);
#pragma unroll
    for (int i = 0; i < V; ++i) acc[0] += weighted_square(x[i] - mean, w[i], weighted);
  }
};

struct SumsqLaunch {
  template <class P, class S>
  static void run(const Bucket& bk, const SumsqArgs& a, const Reduction& red, float* partials, void* stream) {
    reduce<SumsqOp<P, S>>(bk, a, red, partials, stream, "sumsq");
  }
};

// ---------------------------------------------------------------------------- dot

template <class P, class S>
struct DotOp : FlatReduction {
  static constexpr int kValues = 1;
  static constexpr int kV = vector_width<P, S>();
  template <int L>
  using D = RoleOf<bit(kDotY), L, P, S>;

  ItemLists<2> li;

  __device__ DotOp(const Bucket& bk, const int&, const WorkItem& item) : li(bk, item.tensor) {}
  __device__ bool aligned(int64_t k) const { return li.aligned(k); }

  template <int V>
  __device__ void apply(int64_t k, float, float (&acc)[kValues]) const {
    float x[V], y[V];
    load<D<kDotX>, V>(li.at[kDotX], k, li.rt[kDotX], x);
    load<D<kDotY>, V>(li.at[kDotY], k, li.rt[kDotY], y);
#pragma unroll
    for (int i = 0; i < V; ++i) acc[0] += x[i] * y[i];
  }
};

struct DotLaunch {
  template <class P, class S>
  static void run(const Bucket& bk, const Reduction& red, float* partials, void* stream) {
    reduce<DotOp<P, S>>(bk, 0, red, partials, stream, "dot");
  }
};

// ---------------------------------------------------------------------------- axpby_

// y = a y + b x, with GAM's norms of the same pass: reduce x sums (|w| (x - z))^2, reduce y sums
// y'^2 and y' z (y' the new value before rounding).
template <class P, class S, int Values>
struct AxpbyOp : FlatReduction {
  static constexpr int kValues = Values;
  static constexpr int kV = vector_width<P, S>();
  template <int L>
  using D = RoleOf<bit(kAxpbyY) | bit(kAxpbyZ), L, P, S>;

  ItemLists<4> li;
  float a, b;
  bool a_is_zero;
  AxpbyReduce reduce;

  __device__ AxpbyOp(const Bucket& bk, const AxpbyArgs& args, const WorkItem& item)
      : li(bk, item.tensor), a(args.a.get()), b(args.b.get()), a_is_zero(args.a_is_zero), reduce(args.reduce) {}
  __device__ bool aligned(int64_t k) const { return li.aligned(k); }

  template <int V>
  __device__ void apply(int64_t k, float, float (&acc)[kValues]) const {
    float y[V] = {}, x[V], z[V] = {}, w[V] = {};
    load<D<kAxpbyX>, V>(li.at[kAxpbyX], k, li.rt[kAxpbyX], x);
    if (!a_is_zero) load<D<kAxpbyY>, V>(li.at[kAxpbyY], k, li.rt[kAxpbyY], y);
    const bool has_z = li.has(kAxpbyZ), has_w = li.has(kAxpbyW);
    if (has_z) load<D<kAxpbyZ>, V>(li.at[kAxpbyZ], k, li.rt[kAxpbyZ], z);
    if (has_w && reduce == AxpbyReduce::kX) load<D<kAxpbyW>, V>(li.at[kAxpbyW], k, li.rt[kAxpbyW], w);
#pragma unroll
    for (int i = 0; i < V; ++i) {
      if (reduce == AxpbyReduce::kX) acc[0] += weighted_square(has_z ? x[i] - z[i] : x[i], w[i], has_w);
      y[i] = axpby_value(y[i], x[i], a, b, a_is_zero);
      if (reduce == AxpbyReduce::kY) {
        acc[0] += y[i] * y[i];
        if (Values == 2) acc[Values - 1] += y[i] * z[i];
      }
    }
    store<D<kAxpbyY>, V>(li.at[kAxpbyY], k, li.rt[kAxpbyY], y);
  }
};

struct AxpbyLaunch {
  template <class P, class S>
  static void run(const Bucket& bk, const AxpbyArgs& a, const Reduction& red, float* partials, void* stream) {
    if (a.reduce == AxpbyReduce::kNone) {
      launch_items<AxpbyOp<P, S, 1>>(bk, a, nullptr, stream, "axpby_");
    } else if (red.nvalues == 2) {
      reduce<AxpbyOp<P, S, 2>>(bk, a, red, partials, stream, "axpby_");
    } else {
      reduce<AxpbyOp<P, S, 1>>(bk, a, red, partials, stream, "axpby_");
    }
  }
};

}  // namespace

void sumsq(const Bucket& bk, const SumsqArgs& args, const Reduction& red, float* partials, void* stream) {
  dispatch_dtypes<SumsqLaunch>(bk, bit(kSumsqX) | bit(kSumsqW), 0, bk, args, red, partials, stream);
}

void dot(const Bucket& bk, const Reduction& red, float* partials, void* stream) {
  dispatch_dtypes<DotLaunch>(bk, bit(kDotX), bit(kDotY), bk, red, partials, stream);
}

void axpby(const Bucket& bk, const AxpbyArgs& args, const Reduction& red, float* partials, void* stream) {
  dispatch_dtypes<AxpbyLaunch>(bk, bit(kAxpbyX) | bit(kAxpbyW), bit(kAxpbyY) | bit(kAxpbyZ), bk, args, red, partials,
                               stream);
}

}  // namespace cuda
}  // namespace flatmin
