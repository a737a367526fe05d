// How one op call sees a table's tensors, identically on the CPU and on CUDA: work items (runs of
// elements of one tensor, built once per table) and, for every list the op reads or writes, an
// array with one data address per tensor (read again at every call, so gradients re-allocated at
// the same shapes cost nothing).
//
// The CPU build reads host arrays; the CUDA build gets device copies of them, uploaded when a
// table is built (items, offsets) and when an address changes (the address arrays).
// Plain C++ only: this header is included by the torch binding, the CPU loops and the .cu files.
#pragma once

#include <cstdint>
#include <vector>

#include "macros.h"

namespace flatmin {

// Storage dtypes; all math is fp32.
enum class DType : int32_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

FLATMIN_HD int dtype_size(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

// Tensor lists one op reads or writes (which list is which is fixed per op, see op_args.h).
constexpr int kMaxLists = 8;

struct WorkItem {
  int64_t tensor;
  int64_t begin;    // element range [begin, end) of the tensor, in memory order
  int64_t end;
  int64_t row_len;  // > 0: the tensor may be centralized; the item holds whole rows of this length
};

struct Bucket {
  const WorkItem* items;
  int64_t nitems;
  int64_t ntensors;
  const int64_t* offsets;           // per tensor: global index of its first element (noise); may be null
  // per tensor: -1 when memory order is row-major, else where its layout (memory_offset) starts
  // in `layouts`; the noise is indexed by logical (row-major) element, whatever the layout
  const int64_t* layout_at;
  const int64_t* layouts;
  const int64_t* ptrs[kMaxLists];   // per list: ntensors data addresses; null when the op has no such list
  DType dtype[kMaxLists];
  int64_t total;  // elements over all items (CPU: small buckets run on the calling thread)
  // CPU only: lists (bits) the op reads while it writes another list bound to the same slot; the
  // CPU loops read them from a private copy, as they never let two list pointers alias.
  uint32_t copy_mask;
};

// The memory offset of the element with logical (row-major) index k of a tensor whose layout is
// [dim, sizes..., strides...].
FLATMIN_HD int64_t memory_offset(const int64_t* layout, int64_t k) {
  const int64_t dim = layout[0];
  int64_t offset = 0;
  for (int64_t d = dim - 1; d >= 0; --d) {
    const int64_t size = layout[1 + d];
    offset += (k % size) * layout[1 + dim + d];
    k /= size;
  }
  return offset;
}

// Elements per work item: large enough to amortise per-item overhead, small enough that a
// 10M-element list gives every CPU core and every GPU SM work.
constexpr int64_t kChunk = 65536;

// Splits every tensor into work items of about kChunk elements; a tensor with rows (row_len > 0)
// only at row boundaries (at least one row per item), so each item can centre its rows on its own.
// Returns the number of elements.
inline int64_t build_work_items(const std::vector<int64_t>& numel, const std::vector<int64_t>& row_len,
                                std::vector<WorkItem>& items) {
  items.clear();
  int64_t total = 0;
  for (int64_t t = 0; t < static_cast<int64_t>(numel.size()); ++t) {
    int64_t step = kChunk;
    if (row_len[t] > 0) {
      const int64_t rows = kChunk / row_len[t];
      step = (rows > 0 ? rows : 1) * row_len[t];
    }
    for (int64_t b = 0; b < numel[t]; b += step) {
      const int64_t e = b + step < numel[t] ? b + step : numel[t];
      items.push_back({t, b, e, row_len[t]});
      total += e - b;
    }
  }
  return total;
}

}  // namespace flatmin
