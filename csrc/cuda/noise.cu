// The CUDA noise: noise_ (p <- b + coef N) and the raw Philox words. Each thread takes whole
// Philox calls, four normals each (both Box-Muller pairs, cos and sin), and writes the elements
// they serve: a tensor whose first global index is not a multiple of the vector width, or whose
// memory order is not row-major (the noise follows logical indices), is written element by
// element, still one call per four normals.
#include "dispatch.cuh"
#include "flatmin/elementwise.h"
#include "flatmin/op_args.h"
#include "flatmin/philox.h"
#include "multi_tensor.cuh"

namespace flatmin {
namespace cuda {
namespace {

using namespace lists;

template <class P, class S>
__global__ void __launch_bounds__(kThreads, 1) noise_kernel(Bucket bk, NoiseArgs args) {
  if (args.found_inf.get()) return;
  constexpr int V = vector_width<P, S>();  // elements per thread step: V / 4 Philox calls
  constexpr int kCalls = V / 4;
  const WorkItem item = bk.items[blockIdx.x];
  const ItemLists<2> li(bk, item.tensor);
  const float coef = args.coef.get();
  const uint32_t step = args.step.get();
  const bool has_base = li.has(kNoiseBase);
  const char* b_list = has_base ? li.at[kNoiseBase] : li.at[kNoiseP];
  const DType b_rt = has_base ? li.rt[kNoiseBase] : li.rt[kNoiseP];
  const uint64_t offset = static_cast<uint64_t>(bk.offsets[item.tensor]);
  // calls [first, last) serve elements [begin, end); groups of kCalls start at multiples of kCalls,
  // so with offset % V == 0 every group's elements are 16-byte aligned
  const uint64_t first = ((offset + item.begin) >> 2) / kCalls * kCalls;
  const uint64_t last = (offset + item.end + 3) >> 2;
  // a permuted layout: the noise follows logical (row-major) indices, memory does not
  const int64_t* layout = bk.layout_at[item.tensor] >= 0 ? bk.layouts + bk.layout_at[item.tensor] : nullptr;
  const bool vec = layout == nullptr && offset % V == 0 && li.aligned(0);
  for (uint64_t c = first + uint64_t(threadIdx.x) * kCalls; c < last; c += uint64_t(blockDim.x) * kCalls) {
    float n[V];
#pragma unroll
    for (int q = 0; q < kCalls; ++q) normals_of_call(philox_call(c + q, args.seed, step, args.sample), n + 4 * q);
    const int64_t k = static_cast<int64_t>(4 * c - offset);  // the element of n[0]
    if (vec && k >= item.begin && k + V <= item.end) {
      float b[V];
      load<P, V>(b_list, k, b_rt, b);
#pragma unroll
      for (int i = 0; i < V; ++i) b[i] = noised(b[i], coef, n[i]);
      store<P, V>(li.at[kNoiseP], k, li.rt[kNoiseP], b);
    } else {
#pragma unroll
      for (int i = 0; i < V; ++i) {
        if (k + i < item.begin || k + i >= item.end) continue;
        const int64_t at = layout ? memory_offset(layout, k + i) : k + i;
        store1<P>(li.at[kNoiseP], at, noised(load1<P>(b_list, at, b_rt), coef, n[i]), li.rt[kNoiseP]);
      }
    }
  }
}

struct NoiseLaunch {
  template <class P, class S>
  static void run(const Bucket& bk, const NoiseArgs& a, void* stream) {
    if (bk.nitems == 0) return;
    noise_kernel<P, S><<<static_cast<unsigned>(bk.nitems), kThreads, 0, as_cuda(stream)>>>(bk, a);
    check_launch("noise_");
  }
};

__global__ void philox_kernel(PhiloxArgs args) {
  const uint32_t step = args.step.get();
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < args.n; k += int64_t(gridDim.x) * blockDim.x) {
    const PhiloxWords w = philox_call(args.offset + static_cast<uint64_t>(k), args.seed, step, args.sample);
    int64_t* row = args.out + 4 * k;
    row[0] = w.x0, row[1] = w.x1, row[2] = w.x2, row[3] = w.x3;
  }
}

}  // namespace

void noise(const Bucket& bk, const NoiseArgs& args, void* stream) {
  dispatch_dtypes<NoiseLaunch>(bk, bit(kNoiseP) | bit(kNoiseBase), 0, bk, args, stream);
}

void philox(const PhiloxArgs& args, void* stream) {
  if (args.n == 0) return;
  const int64_t blocks = (args.n + kThreads - 1) / kThreads;
  philox_kernel<<<static_cast<unsigned>(blocks < 65535 ? blocks : 65535), kThreads, 0, as_cuda(stream)>>>(args);
  check_launch("philox");
}

}  // namespace cuda
}  // namespace flatmin
