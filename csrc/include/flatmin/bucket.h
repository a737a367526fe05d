// How one op call sees a bucket of tensors, identically on the CPU and on CUDA: a table of
// per-tensor records and a list of work items, each a run of elements of one tensor.
//
// The binding builds both as one int64 buffer on the host. The CPU build reads it in place;
// the CUDA build copies it to the device (asynchronously, from pinned memory) and every block
// reads its own work item from there, so any number of tensors fits in one launch.
// Plain C++ only: this header is included by the torch binding, the CPU loops and the .cu files.
#pragma once

#include <cstdint>
#include <vector>

#include "macros.h"

namespace flatmin {

// Storage dtypes; all math is fp32.
enum class DType : int64_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// Tensor lists one op reads or writes (which list is which is fixed per op, see op_args.h).
constexpr int kMaxLists = 6;

struct TensorRecord {
  int64_t ptr[kMaxLists];  // data pointer of this tensor in each list (0: list absent)
  int64_t numel;
  int64_t row_len;  // > 0: GC this tensor, rows of row_len elements; 0: no GC
  int64_t aux;      // op-specific: noise offset, or the address of Adam's step tensor
  int64_t first_item;  // index of this tensor's first work item (items of a tensor are consecutive)
};

struct WorkItem {
  int64_t tensor;
  int64_t begin;  // element range [begin, end) of the tensor; whole rows when GC'd
  int64_t end;
  int64_t unused;  // keeps the record 32 bytes
};

struct Bucket {
  const TensorRecord* tensors;  // host or device memory, as the implementation expects
  const WorkItem* items;
  int64_t ntensors;
  int64_t nitems;
  DType dtype[kMaxLists];
};

// Elements per work item: large enough to amortise per-item overhead, small enough that a
// 10M-element list gives every CPU core and every GPU SM work.
constexpr int64_t kChunk = 65536;

// Splits every tensor into work items of about kChunk elements; a GC'd tensor only at row
// boundaries (at least one row per item), so each item can centre its rows on its own.
inline void append_work_items(std::vector<TensorRecord>& tensors, std::vector<WorkItem>& items,
                              int64_t chunk = kChunk) {
  for (int64_t t = 0; t < static_cast<int64_t>(tensors.size()); ++t) {
    TensorRecord& r = tensors[t];
    r.first_item = static_cast<int64_t>(items.size());
    int64_t step = chunk;
    if (r.row_len > 0) {
      const int64_t rows = chunk / r.row_len;
      step = (rows > 0 ? rows : 1) * r.row_len;
    }
    for (int64_t b = 0; b < r.numel; b += step) {
      items.push_back({t, b, b + step < r.numel ? b + step : r.numel, 0});
    }
  }
}

}  // namespace flatmin
