// The CUDA side of a multi-tensor launch: one block per work item (tensor, element range), the
// bucket tables read from device memory, loads and stores by dtype with 4-wide vector access
// where the tensor is aligned, GC rows handled a warp per row, and deterministic block sums.
// No torch headers: raw pointers in, plain CUDA out.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "flatmin/bucket.h"

namespace flatmin {
namespace cuda {

constexpr int kThreads = 512;  // per block; 16 warps
constexpr int kWarp = 32;

template <int N>
struct Vec {
  static constexpr int value = N;
};

__device__ __forceinline__ float bits_to_float(uint16_t bits, DType dtype) {
  return dtype == DType::kBFloat16 ? __uint_as_float(static_cast<uint32_t>(bits) << 16)
                                   : __half2float(__ushort_as_half(bits));
}

__device__ __forceinline__ uint16_t float_to_bits(float x, DType dtype) {  // round to nearest even
  return dtype == DType::kBFloat16 ? __bfloat16_as_ushort(__float2bfloat16_rn(x))
                                   : __half_as_ushort(__float2half_rn(x));
}

// out[0..V) = list l of tensor r at elements [k, k + V), as fp32 (64-bit element offsets).
template <int V>
__device__ __forceinline__ void load(const Bucket& bk, const TensorRecord& r, int l, int64_t k, float* out) {
  const DType dtype = bk.dtype[l];
  if (dtype == DType::kFloat32) {
    const float* p = reinterpret_cast<const float*>(r.ptr[l]) + k;
    if (V == 4) {
      const float4 v = *reinterpret_cast<const float4*>(p);
      out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
    } else {
#pragma unroll
      for (int i = 0; i < V; ++i) out[i] = p[i];
    }
  } else {
    const uint16_t* p = reinterpret_cast<const uint16_t*>(r.ptr[l]) + k;
    if (V == 4) {
      const uint2 v = *reinterpret_cast<const uint2*>(p);
      out[0] = bits_to_float(v.x & 0xFFFF, dtype), out[1] = bits_to_float(v.x >> 16, dtype);
      out[2] = bits_to_float(v.y & 0xFFFF, dtype), out[3] = bits_to_float(v.y >> 16, dtype);
    } else {
#pragma unroll
      for (int i = 0; i < V; ++i) out[i] = bits_to_float(p[i], dtype);
    }
  }
}

// Rounds in[0..V) to list l's dtype and stores it at elements [k, k + V).
template <int V>
__device__ __forceinline__ void store(const Bucket& bk, const TensorRecord& r, int l, int64_t k, const float* in) {
  const DType dtype = bk.dtype[l];
  if (dtype == DType::kFloat32) {
    float* p = reinterpret_cast<float*>(r.ptr[l]) + k;
    if (V == 4) {
      *reinterpret_cast<float4*>(p) = make_float4(in[0], in[1], in[2], in[3]);
    } else {
#pragma unroll
      for (int i = 0; i < V; ++i) p[i] = in[i];
    }
  } else {
    uint16_t* p = reinterpret_cast<uint16_t*>(r.ptr[l]) + k;
    if (V == 4) {
      uint2 v;
      v.x = float_to_bits(in[0], dtype) | (static_cast<uint32_t>(float_to_bits(in[1], dtype)) << 16);
      v.y = float_to_bits(in[2], dtype) | (static_cast<uint32_t>(float_to_bits(in[3], dtype)) << 16);
      *reinterpret_cast<uint2*>(p) = v;
    } else {
#pragma unroll
      for (int i = 0; i < V; ++i) p[i] = float_to_bits(in[i], dtype);
    }
  }
}

// Copies elements [k, k + V) of list `from` to list `to` bit for bit (same dtype): the exact
// backup, nan payloads included, with no round trip through fp32.
template <int V>
__device__ __forceinline__ void copy_bits(const Bucket& bk, const TensorRecord& r, int from, int to, int64_t k) {
  if (bk.dtype[from] == DType::kFloat32) {
    const uint32_t* src = reinterpret_cast<const uint32_t*>(r.ptr[from]) + k;
    uint32_t* dst = reinterpret_cast<uint32_t*>(r.ptr[to]) + k;
    if (V == 4) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
#pragma unroll
      for (int i = 0; i < V; ++i) dst[i] = src[i];
    }
  } else {
    const uint16_t* src = reinterpret_cast<const uint16_t*>(r.ptr[from]) + k;
    uint16_t* dst = reinterpret_cast<uint16_t*>(r.ptr[to]) + k;
    if (V == 4) {
      *reinterpret_cast<uint2*>(dst) = *reinterpret_cast<const uint2*>(src);
    } else {
#pragma unroll
      for (int i = 0; i < V; ++i) dst[i] = src[i];
    }
  }
}

__device__ __forceinline__ bool has_list(const TensorRecord& r, int l) { return r.ptr[l] != 0; }

// Whether every list of tensor r starts on a 4-element boundary (items start at multiples of
// kChunk, so then every 4-element group of the item is aligned for one vector access).
__device__ __forceinline__ bool aligned4(const Bucket& bk, const TensorRecord& r) {
  bool ok = true;
#pragma unroll
  for (int l = 0; l < kMaxLists; ++l) {
    const int64_t bytes = bk.dtype[l] == DType::kFloat32 ? 16 : 8;
    ok = ok && (r.ptr[l] % bytes == 0);
  }
  return ok;
}

// Butterfly sum over a warp: every lane ends with the same, order-fixed result.
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int d = kWarp / 2; d > 0; d /= 2) x += __shfl_xor_sync(0xFFFFFFFFu, x, d);
  return x;
}

// Sum over the block in a fixed order (warps, then warp results in order); valid in thread 0.
__device__ __forceinline__ float block_sum(float x) {
  __shared__ float warp_totals[kThreads / kWarp];
  x = warp_sum(x);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (lane == 0) warp_totals[warp] = x;
  __syncthreads();
  float total = 0.0f;
  if (threadIdx.x == 0)
    for (int w = 0; w < static_cast<int>(blockDim.x) / kWarp; ++w) total += warp_totals[w];
  return total;
}

// Runs this block's work item: apply(Vec<V>{}, k, mean) for elements [k, k + V), returning what
// the element group adds to the item's reduction (0 for element-wise ops); returns this thread's
// share of that reduction. A GC'd tensor goes a warp per row: the row sum of pre(k) first, then
// apply with the row mean. Otherwise the block strides through the item, 4 elements at a time
// where the lists are aligned.
template <class Pre, class Apply>
__device__ __forceinline__ float for_item(const Bucket& bk, const TensorRecord& r, const WorkItem& item, Pre pre,
                                          Apply apply) {
  float acc = 0.0f;
  if (r.row_len > 0) {
    const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, nwarps = blockDim.x / kWarp;
    for (int64_t row = item.begin + warp * r.row_len; row < item.end; row += nwarps * r.row_len) {
      float sum = 0.0f;
      for (int64_t k = row + lane; k < row + r.row_len; k += kWarp) sum += pre(k);
      const float mean = warp_sum(sum) / static_cast<float>(r.row_len);
      for (int64_t k = row + lane; k < row + r.row_len; k += kWarp) acc += apply(Vec<1>{}, k, mean);
    }
    return acc;
  }
  int64_t tail = item.begin;
  if (aligned4(bk, r)) {
    tail = item.begin + ((item.end - item.begin) & ~int64_t(3));
    for (int64_t k = item.begin + 4 * int64_t(threadIdx.x); k < tail; k += 4 * int64_t(blockDim.x))
      acc += apply(Vec<4>{}, k, 0.0f);
  }
  for (int64_t k = tail + threadIdx.x; k < item.end; k += blockDim.x) acc += apply(Vec<1>{}, k, 0.0f);
  return acc;
}

inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("flatmin_kernels ") + what + ": " + cudaGetErrorString(err));
}

}  // namespace cuda
}  // namespace flatmin
