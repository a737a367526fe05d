// The CUDA side of a multi-tensor launch: one block per work item (tensor, element range), storage
// dtypes as template tags (the host picks the instantiation, see dispatch.cuh), explicit 128-bit
// global loads and stores on the aligned body, GC rows by row class, deterministic block sums.
// No torch headers: raw pointers in, plain CUDA out.
//
// An op is a struct (see reductions.cu, updates.cu) whose constructor reads the call's scalars
// and the item's list addresses into registers (every list index is a compile-time constant, so
// nothing is indexed at run time and nothing spills to local memory), with kValues sums (kReduces:
// whether it reduces at all), centralize (whether GC rows apply), and:
//   template <int V> float pre(int64_t k):   what a GC row sums over elements [k, k + V)
//   template <int V> void apply(int64_t k, float mean, float (&acc)[kValues]):
//                                             the op on elements [k, k + V), adding to acc
//   bool aligned(int64_t k):                  every list it touches is 16-byte aligned at k
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "flatmin/bucket.h"

namespace flatmin {
namespace cuda {

constexpr int kThreads = 512;  // per block; 16 warps
constexpr int kWarp = 32;

// ---------------------------------------------------------------------------- dtypes

// Storage dtype tags. AnyDType reads the list's dtype at run time (mixes no instantiation covers).
struct F32 {
  static constexpr int kBytes = 4;
};
struct BF16 {
  static constexpr int kBytes = 2;
};
struct F16 {
  static constexpr int kBytes = 2;
};
struct AnyDType {
  static constexpr int kBytes = 2;  // for the vector width: a 16-bit list may be present
};

// Elements per vector step: 16 bytes of the narrowest list.
template <class P, class S>
__host__ __device__ constexpr int vector_width() {
  return (P::kBytes == 2 || S::kBytes == 2) ? 8 : 4;
}

// ---------------------------------------------------------------------------- explicit vector access

__device__ __forceinline__ uint4 ld_global_v4(const void* p) {
  uint4 r;
  asm volatile("ld.global.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(__cvta_generic_to_global(p)));
  return r;
}

__device__ __forceinline__ void st_global_v4(void* p, uint4 v) {
  asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(__cvta_generic_to_global(p)), "r"(v.x), "r"(v.y),
               "r"(v.z), "r"(v.w)
               : "memory");
}

__device__ __forceinline__ float bf16_bits_to_float(uint32_t bits) { return __uint_as_float(bits << 16); }
__device__ __forceinline__ float half_bits_to_float(uint32_t bits) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(bits)));
}
__device__ __forceinline__ uint32_t float_to_bf16_bits(float x) {  // round to nearest even, as c10
  return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}
__device__ __forceinline__ uint32_t float_to_half_bits(float x) { return __half_as_ushort(__float2half_rn(x)); }

// Whether list storage of tag D (and run-time dtype rt, for AnyDType) is fp32 / bf16.
template <class D>
__device__ __forceinline__ bool is_f32(DType rt) {
  if constexpr (std::is_same<D, AnyDType>::value) return rt == DType::kFloat32;
  return std::is_same<D, F32>::value;
}
template <class D>
__device__ __forceinline__ bool is_bf16(DType rt) {
  if constexpr (std::is_same<D, AnyDType>::value) return rt == DType::kBFloat16;
  return std::is_same<D, BF16>::value;
}

// One element of a list, as fp32 / stored from fp32.
template <class D>
__device__ __forceinline__ float load1(const char* base, int64_t k, DType rt) {
  if (is_f32<D>(rt)) return reinterpret_cast<const float*>(base)[k];
  const uint32_t bits = reinterpret_cast<const uint16_t*>(base)[k];
  return is_bf16<D>(rt) ? bf16_bits_to_float(bits) : half_bits_to_float(bits);
}

template <class D>
__device__ __forceinline__ void store1(char* base, int64_t k, float x, DType rt) {
  if (is_f32<D>(rt)) {
    reinterpret_cast<float*>(base)[k] = x;
  } else {
    reinterpret_cast<uint16_t*>(base)[k] =
        static_cast<uint16_t>(is_bf16<D>(rt) ? float_to_bf16_bits(x) : float_to_half_bits(x));
  }
}

// V elements [k, k + V) of a list, 16-byte aligned when V > 1: V / 4 loads of 16 bytes (fp32) or
// V / 8 (16-bit).
template <class D, int V>
__device__ __forceinline__ void load(const char* base, int64_t k, DType rt, float (&out)[V]) {
  if constexpr (V == 1) {
    out[0] = load1<D>(base, k, rt);
  } else {
    static_assert(V == 4 || V == 8, "vector width");
    if (is_f32<D>(rt)) {
#pragma unroll
      for (int q = 0; q < V / 4; ++q) {
        const uint4 v = ld_global_v4(base + (k + 4 * q) * 4);
        out[4 * q] = __uint_as_float(v.x), out[4 * q + 1] = __uint_as_float(v.y);
        out[4 * q + 2] = __uint_as_float(v.z), out[4 * q + 3] = __uint_as_float(v.w);
      }
    } else if constexpr (V == 8) {  // a 16-bit list only comes with V == 8
      const bool bf16 = is_bf16<D>(rt);
      const uint4 v = ld_global_v4(base + k * 2);
      const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int h = 0; h < 4; ++h) {
        out[2 * h] = bf16 ? bf16_bits_to_float(w[h] & 0xFFFFu) : half_bits_to_float(w[h] & 0xFFFFu);
        out[2 * h + 1] = bf16 ? bf16_bits_to_float(w[h] >> 16) : half_bits_to_float(w[h] >> 16);
      }
    }
  }
}

template <class D, int V>
__device__ __forceinline__ void store(char* base, int64_t k, DType rt, const float (&in)[V]) {
  if constexpr (V == 1) {
    store1<D>(base, k, in[0], rt);
  } else {
    if (is_f32<D>(rt)) {
#pragma unroll
      for (int q = 0; q < V / 4; ++q)
        st_global_v4(base + (k + 4 * q) * 4, make_uint4(__float_as_uint(in[4 * q]), __float_as_uint(in[4 * q + 1]),
                                                       __float_as_uint(in[4 * q + 2]), __float_as_uint(in[4 * q + 3])));
    } else if constexpr (V == 8) {
      const bool bf16 = is_bf16<D>(rt);
      uint32_t w[4];
#pragma unroll
      for (int h = 0; h < 4; ++h) {
        const uint32_t lo = bf16 ? float_to_bf16_bits(in[2 * h]) : float_to_half_bits(in[2 * h]);
        const uint32_t hi = bf16 ? float_to_bf16_bits(in[2 * h + 1]) : float_to_half_bits(in[2 * h + 1]);
        w[h] = lo | (hi << 16);
      }
      st_global_v4(base + k * 2, make_uint4(w[0], w[1], w[2], w[3]));
    }
  }
}

// Copies elements [k, k + V) from one list to another: the bits when the dtypes agree (an exact
// backup, nan payloads included), else rounded through fp32.
template <class From, class To, int V>
__device__ __forceinline__ void copy(const char* from, DType from_rt, char* to, DType to_rt, int64_t k) {
  if (from_rt == to_rt) {
    const int bytes = dtype_size(from_rt);
    if constexpr (V == 1) {
      if (bytes == 4)
        reinterpret_cast<uint32_t*>(to)[k] = reinterpret_cast<const uint32_t*>(from)[k];
      else
        reinterpret_cast<uint16_t*>(to)[k] = reinterpret_cast<const uint16_t*>(from)[k];
    } else {
#pragma unroll
      for (int q = 0; q < V / 4; ++q)  // V elements of 2 or 4 bytes: V / 8 or V / 4 vectors of 16
        if (q * 16 < V * bytes) st_global_v4(to + k * bytes + q * 16, ld_global_v4(from + k * bytes + q * 16));
    }
    return;
  }
  float x[V];
  load<From, V>(from, k, from_rt, x);
  store<To, V>(to, k, to_rt, x);
}

__device__ __forceinline__ bool aligned16(const char* base, int64_t k, DType rt) {
  return (reinterpret_cast<uintptr_t>(base) + static_cast<uintptr_t>(k) * dtype_size(rt)) % 16 == 0;
}

// ---------------------------------------------------------------------------- one item's lists

// The addresses and dtypes of one tensor's lists, in registers: ops index them with constants only.
template <int N>
struct ItemLists {
  char* at[N];
  DType rt[N];
  __device__ __forceinline__ ItemLists(const Bucket& bk, int64_t tensor) {
#pragma unroll
    for (int l = 0; l < N; ++l) {
      at[l] = bk.ptrs[l] ? reinterpret_cast<char*>(bk.ptrs[l][tensor]) : nullptr;
      rt[l] = bk.dtype[l];
    }
  }
  __device__ __forceinline__ bool has(int l) const { return at[l] != nullptr; }
  // every present list is 16-byte aligned at element k
  __device__ __forceinline__ bool aligned(int64_t k) const {
    bool ok = true;
#pragma unroll
    for (int l = 0; l < N; ++l) ok = ok && (at[l] == nullptr || aligned16(at[l], k, rt[l]));
    return ok;
  }
};

// The tag of list L in an op whose S-role lists are the bits of SLists.
template <uint32_t SLists, int L, class P, class S>
using RoleOf = typename std::conditional<((SLists >> L) & 1u) != 0, S, P>::type;

// ---------------------------------------------------------------------------- sums

// Butterfly sum over groups of `width` lanes (a power of two <= 32): every lane of a group ends
// with the same, order-fixed result. All 32 lanes must call it.
__device__ __forceinline__ float group_sum(float x, int width) {
  for (int d = width / 2; d > 0; d /= 2) x += __shfl_xor_sync(0xFFFFFFFFu, x, d);
  return x;
}

// Sum over the block in a fixed order (warps, then warp results in order), returned to every
// thread. Every thread of the block must call it.
__device__ __forceinline__ float block_sum(float x) {
  __shared__ float warp_totals[kThreads / kWarp];
  __shared__ float total;
  x = group_sum(x, kWarp);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  __syncthreads();  // warp_totals may still be read by a previous call
  if (lane == 0) warp_totals[warp] = x;
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = 0.0f;
    for (int w = 0; w < static_cast<int>(blockDim.x) / kWarp; ++w) t += warp_totals[w];
    total = t;
  }
  __syncthreads();
  return total;
}

// ---------------------------------------------------------------------------- one work item

// Runs op over this block's work item. Without GC (row_len 0) the block strides through the
// item V elements per thread where every list is aligned (a scalar tail otherwise). With GC, rows
// go by row class: G threads per row (G a power of two up to a warp, chosen so each thread has a
// few vectors of the row in flight; rows longer than a warp can cover take the whole block),
// several rows at once per block; each group first sums op.pre over its row, then applies op with
// the exact row mean (IEEE division). Returns nothing; reductions land in acc (per thread).
template <int V, class Op>
__device__ __forceinline__ void run_item(Op& op, const WorkItem& item, int64_t row_len, float (&acc)[Op::kValues]) {
  const int tid = threadIdx.x, nthreads = blockDim.x;
  if (row_len == 0) {
    int64_t k = item.begin;
    if (op.aligned(item.begin)) {
      const int64_t body = item.begin + ((item.end - item.begin) / V) * V;
      for (k = item.begin + int64_t(tid) * V; k < body; k += int64_t(nthreads) * V) op.template apply<V>(k, 0.0f, acc);
      k = body;
    }
    for (k += tid; k < item.end; k += nthreads) op.template apply<1>(k, 0.0f, acc);
    return;
  }
  // Row class: threads per row.
  int group = 1;
  while (group < kWarp && int64_t(group) * 2 * V < row_len) group *= 2;
  if (group == kWarp && int64_t(kWarp) * 2 * V < row_len) group = nthreads;  // long rows: a block each
  const int rows_at_once = nthreads / group, mine = tid / group, lane = tid % group;
  const int64_t nrows = (item.end - item.begin) / row_len;
  const bool vec = row_len % V == 0 && op.aligned(item.begin);
  for (int64_t first = 0; first < nrows; first += rows_at_once) {  // the same trip count for every thread
    const int64_t r = first + mine;
    const bool active = r < nrows;
    const int64_t row = item.begin + r * row_len;
    float sum = 0.0f;
    if (active) {
      if (vec)
        for (int64_t k = int64_t(lane) * V; k < row_len; k += int64_t(group) * V) sum += op.template pre<V>(row + k);
      else
        for (int64_t k = lane; k < row_len; k += group) sum += op.template pre<1>(row + k);
    }
    sum = group == nthreads ? block_sum(sum) : group_sum(sum, group);
    const float mean = sum / static_cast<float>(row_len);
    if (active) {
      if (vec)
        for (int64_t k = int64_t(lane) * V; k < row_len; k += int64_t(group) * V) op.template apply<V>(row + k, mean, acc);
      else
        for (int64_t k = lane; k < row_len; k += group) op.template apply<1>(row + k, mean, acc);
    }
  }
}

// Runs an op (a struct as described at the top) on every work item of a bucket: a block per item.
// Ops that reduce (kReduces) write partials[item * kValues + v] when partials is given.
template <class Op, class Args>
__global__ void __launch_bounds__(kThreads, 1) item_kernel(Bucket bk, Args args, float* partials) {
  const WorkItem item = bk.items[blockIdx.x];
  Op op(bk, args, item);
  float acc[Op::kValues] = {};
  run_item<Op::kV>(op, item, op.centralize ? item.row_len : 0, acc);
  if constexpr (Op::kReduces) {
    if (partials == nullptr) return;  // the same for every thread
#pragma unroll
    for (int v = 0; v < Op::kValues; ++v) {
      const float total = block_sum(acc[v]);
      if (threadIdx.x == 0) partials[blockIdx.x * int64_t(Op::kValues) + v] = total;
    }
  }
}

__host__ __device__ constexpr uint32_t bit(int l) { return 1u << l; }

inline cudaStream_t as_cuda(void* stream) { return static_cast<cudaStream_t>(stream); }

inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("flatmin_kernels ") + what + ": " + cudaGetErrorString(err));
}

template <class Op, class Args>
void launch_items(const Bucket& bk, const Args& args, float* partials, void* stream, const char* what) {
  if (bk.nitems == 0) return;
  item_kernel<Op, Args><<<static_cast<unsigned>(bk.nitems), kThreads, 0, as_cuda(stream)>>>(bk, args, partials);
  check_launch(what);
}

}  // namespace cuda
}  // namespace flatmin
