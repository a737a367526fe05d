// The cpp backend's table (contract v2): one bucket of tensors prepared once, so that an op call
// costs a few nanoseconds per tensor and no Python list conversion.
//
// Built once: the shape part (element counts, sizes, strides), the GC rows, the noise offsets and
// the work items. Bound once per slot: the tensor lists (held here as at::Tensor, so Python never
// converts them again). At every op: each list the op uses is read again in C++ -- a data
// address per tensor, gradients through TensorImpl::grad() -- and checked cheaply against the
// shape part (dtype, device, element count, sizes and strides); whatever no longer fits raises
// StaleTable before anything is written.
//
// CUDA: the items and offsets go to the device once; the address arrays of all slots live in one
// device buffer, uploaded again (asynchronously, from pinned memory, into a fresh buffer) only
// when an address changed. A table used on another stream than its upload's waits for the upload
// (an event) and records the stream on its buffers (so freeing them is safe); during CUDA-graph
// capture nothing is allocated or copied: a changed address raises instead.
#pragma once

#include <torch/extension.h>

#include <c10/core/Event.h>

#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "flatmin/op_args.h"

namespace flatmin {

// The host path catches this (as contract.StaleTable) and rebuilds the table.
struct StaleTableError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Storage dtype of a tensor the cpp backend serves, or false.
bool storage_dtype(at::ScalarType type, DType* out);

class Table {
 public:
  // tensors: a sequence of plain tensors or nn.Parameters; gc_rows, offsets: None or sequences.
  Table(const pybind11::sequence& tensors, const pybind11::object& gc_rows, const pybind11::object& offsets);

  void bind(const std::string& name, const pybind11::sequence& tensors);
  void bind_scalars(const std::string& name, const pybind11::sequence& tensors);
  void bind_grads(const std::string& name);
  void refresh(bool grads);

  const at::Device& device() const { return device_; }
  int64_t size() const { return static_cast<int64_t>(numel_.size()); }
  bool is_scalar_slot(int slot) const { return slots_[slot].scalars; }
  bool has_offsets() const { return !offsets_.empty() || numel_.empty(); }
  std::vector<at::Tensor> get(const std::string& name) const;
  pybind11::dict stats() const;

  // ---- one op call
  // A list of the call: the slot's address array (host) and its storage dtype.
  struct List {
    int slot = -1;
    const int64_t* ptrs = nullptr;
    DType dtype = DType::kFloat32;
  };
  // Reads slot `name` now: addresses and dtype; raises StaleTable if it no longer fits.
  List list(const std::string& name);
  // The bucket of a call over these lists (index = the op's list number; slot -1: absent).
  // On CUDA (under a guard of the table's device) this uploads changed addresses first and
  // returns device arrays for the current stream.
  Bucket bucket(const List* lists, int nlists, uint32_t written_mask);
  // The current stream of the table's device.
  c10::Stream current_stream() const;

 private:
  struct Slot {
    std::string name;
    std::vector<at::Tensor> tensors;
    bool grads = false;    // read from the table tensors' .grad at every use
    bool scalars = false;  // one-element fp32 tensors (bind_scalars)
  };

  int slot_index(const std::string& name) const;
  int add_slot(const std::string& name);
  void bind_list(const std::string& name, const pybind11::sequence& tensors, bool scalars);
  // The data address of impl if it can stand for tensor i (dtype, device, element count, memory
  // layout; a scalar slot: one element), else -1.
  int64_t address_if_fits(const c10::TensorImpl* impl, int64_t i, caffe2::TypeMeta dtype, bool scalar) const;
  // Why t cannot stand for tensor i (the slow path of address_if_fits, for the error message).
  std::string misfit(const at::Tensor& t, int64_t i, at::ScalarType dtype, bool scalar) const;
  void check_list(const std::string& name, const std::vector<at::Tensor>& tensors, bool scalars) const;
  // Reads the addresses of impls[0 .. size()) into slot s's row; the first index that does not
  // fit, or -1.
  int64_t read_row(int s, const c10::TensorImpl* const* impls, caffe2::TypeMeta dtype, bool scalar);
  void upload(const c10::Stream& stream);

  at::Device device_;
  std::vector<at::Tensor> params_;  // the table's tensors (their .grad feeds the grad slots)
  std::vector<int64_t> numel_;
  std::vector<int64_t> layout_at_, layout_;  // tensor i: dim, sizes, strides at layout_[layout_at_[i]]
  std::vector<int64_t> permuted_at_;          // layout_at_[i], or -1 where memory order is row-major
  std::vector<int64_t> row_len_, offsets_;
  std::vector<WorkItem> items_;
  int64_t total_ = 0;  // elements
  std::vector<Slot> slots_;
  std::unordered_map<std::string, int> slot_of_;
  std::vector<at::ScalarType> slot_dtype_;  // per slot, as last read
  std::vector<int64_t> addresses_;          // slot s, tensor i at [s * size() + i]
  std::vector<const c10::TensorImpl*> impls_;  // scratch: the tensors of the list being read

  // CUDA only
  at::Tensor device_static_;     // items, then offsets (uploaded once)
  at::Tensor device_addresses_;  // addresses_ as last uploaded
  bool addresses_changed_ = true;
  std::vector<at::Tensor> kept_for_graphs_;  // buffers a captured graph may still read
  bool used_in_capture_ = false;
  std::optional<c10::Stream> synced_stream_;  // the stream that last waited for the upload
  std::unique_ptr<c10::Event> upload_done_;

  // what a test can check: steady-state calls convert no list and build nothing
  int64_t builds_ = 0, list_conversions_ = 0, address_changes_ = 0, uploads_ = 0;
};

}  // namespace flatmin
