// The cpp backend's table: see table.h.
#include "table.h"

#include <c10/core/Event.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/csrc/autograd/python_variable.h>

#include <cstring>
#include <sstream>

namespace py = pybind11;

namespace flatmin {
namespace {

#ifdef FLATMIN_WITH_CUDA
constexpr bool kBuiltWithCuda = true;
#else
constexpr bool kBuiltWithCuda = false;
#endif

std::string describe(const at::Tensor& t) {
  std::ostringstream s;
  s << t.numel() << " elements of " << t.scalar_type() << " on " << t.device() << " with sizes " << t.sizes()
    << " and strides " << t.strides();
  return s.str();
}

// Why the extension cannot read t's memory directly (tensor subclasses, sparse, views that only
// look like tensors), or "" if it can.
std::string unreadable(const at::Tensor& t) {
  const c10::TensorImpl* impl = t.unsafeGetTensorImpl();
  if (impl->is_python_dispatch())
    return "is a tensor subclass with __torch_dispatch__ (e.g. a DTensor); pass the local tensors";
  if (impl->layout() != c10::kStrided) return "is not a strided tensor (sparse or another layout)";
  if (!impl->has_storage()) return "has no storage (a wrapper or functional tensor)";
  if (impl->is_conj() || impl->is_neg() || impl->_is_zerotensor())
    return "is a lazy view (conjugate, negative or zero bit); materialise it first";
  return "";
}

// Tensors whose memory the extension must not read directly: subclasses with __torch_dispatch__,
// functional and batched wrappers, lazy conjugate/negative/zero views, non-strided layouts.
const c10::DispatchKeySet kRefusedKeys =
    c10::DispatchKeySet({c10::DispatchKey::Python, c10::DispatchKey::PythonTLSSnapshot, c10::DispatchKey::Functionalize,
                         c10::DispatchKey::FuncTorchBatched, c10::DispatchKey::NestedTensor, c10::DispatchKey::Conjugate,
                         c10::DispatchKey::Negative, c10::DispatchKey::ZeroTensor}) |
    c10::sparse_ks | c10::sparse_csr_ks | c10::mkldnn_ks;

// The tensors of a Python sequence, each a plain tensor or an nn.Parameter that the extension can
// read (a tensor subclass is refused with ValueError, never read).
std::vector<at::Tensor> tensors_of(const py::sequence& seq, const std::string& name) {
  std::vector<at::Tensor> out;
  out.reserve(py::len(seq));
  for (size_t i = 0; i < py::len(seq); ++i) {
    py::object item = seq[i];
    const std::string at = name + "[" + std::to_string(i) + "]";
    if (!THPVariable_CheckExact(item.ptr())) {
      const std::string type = py::str(py::type::handle_of(item).attr("__qualname__"));
      throw py::value_error(at + " is a " + type +
                            "; the cpp backend takes torch.Tensor and nn.Parameter only (no tensor subclasses)");
    }
    out.push_back(THPVariable_Unpack(item.ptr()));
    const std::string why = unreadable(out.back());
    if (!why.empty()) throw py::value_error(at + " " + why);
  }
  return out;
}

}  // namespace

bool storage_dtype(at::ScalarType type, DType* out) {
  switch (type) {
    case at::kFloat: *out = DType::kFloat32; return true;
    case at::kBFloat16: *out = DType::kBFloat16; return true;
    case at::kHalf: *out = DType::kFloat16; return true;
    default: return false;
  }
}

Table::Table(const py::sequence& tensors, const py::object& gc_rows, const py::object& offsets)
    : device_(at::kCPU) {
  ++builds_;
  ++list_conversions_;
  params_ = tensors_of(tensors, "tensors");
  const size_t n = params_.size();
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& t = params_[i];
    const std::string at = "tensors[" + std::to_string(i) + "]";
    if (i == 0) device_ = t.device();
    if (t.device() != device_) {
      std::ostringstream s;
      s << "a table's tensors must share one device, got " << device_ << " and " << t.device();
      throw py::value_error(s.str());
    }
    DType dtype;
    if (!storage_dtype(t.scalar_type(), &dtype))
      throw py::value_error(at + " has dtype " + std::string(c10::toString(t.scalar_type())) +
                            "; the cpp backend serves float32, bfloat16 and float16");
    if (t.scalar_type() != params_[0].scalar_type())
      throw py::value_error("tensors mixes dtypes; a table's tensors share one dtype");
    if (!t.is_non_overlapping_and_dense()) throw py::value_error(at + " is not dense (a view with gaps or overlaps)");
    numel_.push_back(t.numel());
    layout_at_.push_back(static_cast<int64_t>(layout_.size()));
    layout_.push_back(t.dim());
    layout_.insert(layout_.end(), t.sizes().begin(), t.sizes().end());
    layout_.insert(layout_.end(), t.strides().begin(), t.strides().end());
    int64_t row_major_stride = 1;
    bool row_major = true;
    for (int64_t d = t.dim() - 1; d >= 0; --d) {
      row_major = row_major && (t.size(d) <= 1 || t.stride(d) == row_major_stride);
      row_major_stride *= t.size(d);
    }
    permuted_at_.push_back(row_major ? -1 : layout_at_.back());
  }
  if (!device_.is_cpu() && !(device_.is_cuda() && kBuiltWithCuda)) {
    std::ostringstream s;
    s << "the cpp backend runs on cpu" << (kBuiltWithCuda ? " and cuda" : " (built without CUDA)") << ", not on "
      << device_;
    throw py::value_error(s.str());
  }

  row_len_.assign(n, 0);
  if (!gc_rows.is_none()) {
    const std::vector<bool> flags = gc_rows.cast<std::vector<bool>>();
    if (flags.size() != n)
      throw py::value_error("gc_rows has " + std::to_string(flags.size()) + " flags for " + std::to_string(n) +
                            " tensors");
    for (size_t i = 0; i < n; ++i) {
      const at::Tensor& t = params_[i];
      if (!flags[i] || t.numel() == 0) continue;
      const int64_t rows = t.dim() == 0 ? 1 : t.size(0);
      // A GC row is a run of memory: dim 0 must be the outermost dimension.
      if (rows > 1 && t.stride(0) != t.numel() / rows) {
        std::ostringstream s;
        s << "tensors[" << i << "] cannot be centralized in memory order: dim 0 is not its outermost dimension "
          << "(sizes " << t.sizes() << ", strides " << t.strides() << ")";
        throw py::value_error(s.str());
      }
      row_len_[i] = t.numel() / rows;
    }
  }
  if (!offsets.is_none()) {
    offsets_ = offsets.cast<std::vector<int64_t>>();
    if (offsets_.size() != n)
      throw py::value_error("offsets has " + std::to_string(offsets_.size()) + " values for " + std::to_string(n) +
                            " tensors");
  }
  total_ = build_work_items(numel_, row_len_, items_);

  const int param = add_slot("param");
  slots_[param].tensors = params_;
  slot_dtype_[param] = n > 0 ? params_[0].scalar_type() : at::kFloat;
  list("param");
}

int Table::slot_index(const std::string& name) const {
  const auto it = slot_of_.find(name);
  return it == slot_of_.end() ? -1 : it->second;
}

int Table::add_slot(const std::string& name) {
  const int s = static_cast<int>(slots_.size());
  slots_.push_back({name, {}, false, false});
  slot_of_[name] = s;
  slot_dtype_.push_back(at::kFloat);
  addresses_.resize(addresses_.size() + numel_.size(), 0);
  addresses_changed_ = true;
  return s;
}

int64_t Table::address_if_fits(const c10::TensorImpl* impl, int64_t i, caffe2::TypeMeta dtype, bool scalar) const {
  if (!(impl->key_set() & kRefusedKeys).empty() || impl->dtype() != dtype || impl->device() != device_) return -1;
  const c10::Storage& storage = impl->unsafe_storage();
  if (!storage) return -1;
  const int64_t numel = impl->numel();
  if (numel != (scalar ? 1 : numel_[i])) return -1;
  if (!scalar && numel > 1) {  // one element or none: any layout addresses it
    const int64_t* layout = layout_.data() + layout_at_[i];
    const int64_t dim = layout[0];
    const c10::IntArrayRef sizes = impl->sizes(), strides = impl->strides();
    if (static_cast<int64_t>(sizes.size()) != dim) return -1;
    for (int64_t d = 0; d < dim; ++d)
      if (sizes[d] != layout[1 + d] || (sizes[d] > 1 && strides[d] != layout[1 + dim + d])) return -1;
  }
  // mutable_data: a copy-on-write storage is materialised before anything is written through it
  return reinterpret_cast<int64_t>(storage.mutable_data()) +
         impl->storage_offset() * static_cast<int64_t>(dtype.itemsize());
}

std::string Table::misfit(const at::Tensor& t, int64_t i, at::ScalarType dtype, bool scalar) const {
  const std::string why = unreadable(t);
  if (!why.empty()) return why;
  std::ostringstream s;
  if (scalar) {
    s << "must be a one-element float32 tensor on " << device_ << ", got " << describe(t);
  } else {
    const int64_t* layout = layout_.data() + layout_at_[i];
    const c10::IntArrayRef sizes(layout + 1, layout[0]), strides(layout + 1 + layout[0], layout[0]);
    s << "(" << describe(t) << ") does not match tensor " << i << " (" << numel_[i] << " elements of " << dtype
      << " on " << device_ << " with sizes " << sizes << " and strides " << strides << ")";
  }
  return s.str();
}

void Table::check_list(const std::string& name, const std::vector<at::Tensor>& tensors, bool scalars) const {
  if (tensors.size() != numel_.size())
    throw py::value_error(name + " has " + std::to_string(tensors.size()) + " tensors for " +
                          std::to_string(numel_.size()));
  if (tensors.empty()) return;
  const at::ScalarType dtype = scalars ? at::kFloat : tensors[0].scalar_type();
  DType unused;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    const std::string at = name + "[" + std::to_string(i) + "]";
    if (!scalars && !storage_dtype(t.scalar_type(), &unused))
      throw py::value_error(at + " has dtype " + std::string(c10::toString(t.scalar_type())) +
                            "; the cpp backend serves float32, bfloat16 and float16");
    if (!scalars && t.scalar_type() != dtype)
      throw py::value_error(name + " mixes dtypes (" + at + " is " + c10::toString(t.scalar_type()) + ", " + name +
                            "[0] is " + c10::toString(dtype) + "); a slot has one dtype");
    if (address_if_fits(t.unsafeGetTensorImpl(), static_cast<int64_t>(i), c10::scalarTypeToTypeMeta(dtype), scalars) < 0)
      throw py::value_error(at + " " + misfit(t, i, dtype, scalars));
  }
}

int64_t Table::read_row(int s, const c10::TensorImpl* const* impls, caffe2::TypeMeta dtype, bool scalar) {
  const int64_t n = size();
  int64_t* row = addresses_.data() + static_cast<size_t>(s) * n;
  bool changed = false;
  // The tensors' metadata is scattered over the heap: fetch a few tensors ahead.
  constexpr int64_t kAhead = 16;
  for (int64_t i = 0; i < n; ++i) {
    if (i + kAhead < n) {
      const char* ahead = reinterpret_cast<const char*>(impls[i + kAhead]);
      __builtin_prefetch(ahead);
      __builtin_prefetch(ahead + 64);
      __builtin_prefetch(ahead + 128);
    }
    if (i + kAhead / 2 < n) __builtin_prefetch(impls[i + kAhead / 2]->unsafe_storage().unsafeGetStorageImpl());
    const int64_t address = address_if_fits(impls[i], i, dtype, scalar);
    if (address < 0) return i;
    changed = changed || row[i] != address;
    row[i] = address;
  }
  if (changed) {
    addresses_changed_ = true;
    ++address_changes_;
  }
  return -1;
}

void Table::bind(const std::string& name, const py::sequence& tensors) { bind_list(name, tensors, false); }

void Table::bind_scalars(const std::string& name, const py::sequence& tensors) { bind_list(name, tensors, true); }

void Table::bind_list(const std::string& name, const py::sequence& tensors, bool scalars) {
  ++list_conversions_;
  std::vector<at::Tensor> given = tensors_of(tensors, name);
  check_list(name, given, scalars);
  int s = slot_index(name);
  if (s < 0) s = add_slot(name);
  Slot& slot = slots_[s];
  slot.tensors = std::move(given);
  slot.scalars = scalars;
  slot.grads = false;  // rebinding replaces a slot, a grad slot included (as the reference)
  slot_dtype_[s] = scalars || slot.tensors.empty() ? at::kFloat : slot.tensors[0].scalar_type();
  list(name);
}

void Table::bind_grads(const std::string& name) {
  int s = slot_index(name);
  if (s < 0) s = add_slot(name);
  slots_[s].grads = true;
  slots_[s].tensors.clear();
}

Table::List Table::list(const std::string& name) {
  const int s = slot_index(name);
  if (s < 0) throw py::value_error("no slot named '" + name + "' is bound to this table");
  const Slot& slot = slots_[s];
  const int64_t n = size();
  impls_.resize(n);
  if (slot.grads) {
    // The gradients as they are now, read through TensorImpl: no Python object is touched.
    for (int64_t i = 0; i < n; ++i) {
      if (i + 8 < n) __builtin_prefetch(params_[i + 8].unsafeGetTensorImpl());
      const at::Tensor& g = params_[i].unsafeGetTensorImpl()->grad();
      if (!g.defined())
        throw StaleTableError(name + "[" + std::to_string(i) + "] is None (parameter " + std::to_string(i) +
                              " has no gradient)");
      impls_[i] = g.unsafeGetTensorImpl();
    }
    if (n > 0) slot_dtype_[s] = impls_[0]->dtype().toScalarType();
  } else {
    for (int64_t i = 0; i < n; ++i) impls_[i] = slot.tensors[i].unsafeGetTensorImpl();
  }
  const at::ScalarType dtype = slot_dtype_[s];
  const int64_t bad = read_row(s, impls_.data(), c10::scalarTypeToTypeMeta(dtype), slot.scalars);
  if (bad >= 0) {
    const at::Tensor& t = slot.grads ? params_[bad].grad() : slot.tensors[bad];
    const std::string at = name + "[" + std::to_string(bad) + "]";
    DType unused;
    if (slot.grads && t.scalar_type() != dtype && storage_dtype(t.scalar_type(), &unused))
      throw StaleTableError(name + " mixes dtypes (" + at + " is " + c10::toString(t.scalar_type()) + ", " + name +
                            "[0] is " + c10::toString(dtype) + "); a slot has one dtype");
    throw StaleTableError(at + " " + misfit(t, bad, dtype, slot.scalars));
  }
  List out;
  out.slot = s;
  out.ptrs = addresses_.data() + static_cast<size_t>(s) * n;
  if (n > 0 && !storage_dtype(dtype, &out.dtype))
    throw StaleTableError(name + " has dtype " + std::string(c10::toString(dtype)) +
                          "; the cpp backend serves float32, bfloat16 and float16");
  return out;
}

void Table::refresh(bool grads) {
  list("param");
  if (!grads) return;
  for (const Slot& slot : slots_)
    if (slot.grads) list(slot.name);
#ifdef FLATMIN_WITH_CUDA
  if (device_.is_cuda()) {
    c10::DeviceGuard guard(device_);
    upload(current_stream());
  }
#endif
}

std::vector<at::Tensor> Table::get(const std::string& name) const {
  const int s = slot_index(name);
  if (s < 0) throw py::value_error("no slot named '" + name + "' is bound to this table");
  if (!slots_[s].grads) return slots_[s].tensors;
  std::vector<at::Tensor> grads;
  for (const at::Tensor& p : params_) grads.push_back(p.grad());
  return grads;
}

py::dict Table::stats() const {
  py::dict d;
  d["builds"] = builds_;
  d["list_conversions"] = list_conversions_;
  d["address_changes"] = address_changes_;
  d["uploads"] = uploads_;
  return d;
}

c10::Stream Table::current_stream() const {
  return c10::impl::getDeviceGuardImpl(device_.type())->getStream(device_);
}

Bucket Table::bucket(const List* lists, int nlists, uint32_t written_mask) {
  Bucket b{};
  b.nitems = static_cast<int64_t>(items_.size());
  b.ntensors = size();
  b.total = total_;
  for (int l = 0; l < nlists; ++l) {
    if (lists[l].slot < 0) continue;
    b.ptrs[l] = lists[l].ptrs;
    b.dtype[l] = lists[l].dtype;
  }
  // A list read while a list of the same slot is written: read from a private copy (CPU). Two
  // written lists of one slot have no meaning.
  for (int w = 0; w < nlists; ++w) {
    if (!((written_mask >> w) & 1u) || lists[w].slot < 0) continue;
    for (int l = 0; l < nlists; ++l) {
      if (l == w || lists[l].slot != lists[w].slot) continue;
      if ((written_mask >> l) & 1u)
        throw py::value_error("slot '" + slots_[lists[w].slot].name + "' is passed for two lists the op writes");
      b.copy_mask |= 1u << l;
    }
  }
  b.items = items_.data();
  b.offsets = offsets_.empty() ? nullptr : offsets_.data();
  b.layout_at = permuted_at_.data();
  b.layouts = layout_.data();
#ifdef FLATMIN_WITH_CUDA
  if (device_.is_cuda()) {
    upload(current_stream());
    const int64_t* items = device_static_.data_ptr<int64_t>();
    b.items = reinterpret_cast<const WorkItem*>(items);
    // items, offsets, permuted_at_, layout_, as uploaded
    const int64_t* after_items = items + items_.size() * (sizeof(WorkItem) / sizeof(int64_t));
    b.offsets = offsets_.empty() ? nullptr : after_items;
    b.layout_at = after_items + offsets_.size();
    b.layouts = b.layout_at + permuted_at_.size();
    const int64_t* addresses = device_addresses_.data_ptr<int64_t>();
    for (int l = 0; l < nlists; ++l)
      if (lists[l].slot >= 0) b.ptrs[l] = addresses + static_cast<size_t>(lists[l].slot) * size();
  }
#endif
  return b;
}

#ifdef FLATMIN_WITH_CUDA
namespace {

// host[0 .. n) on the device, copied asynchronously on the current stream from pinned memory; the
// pinned block goes back to torch's host cache, which reuses it only once the copy is done.
at::Tensor to_device(const int64_t* host, size_t n, const at::Device& device) {
  at::Tensor pinned = at::empty({static_cast<int64_t>(n)}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  if (n > 0) std::memcpy(pinned.data_ptr<int64_t>(), host, n * sizeof(int64_t));
  at::Tensor on_device = at::empty({static_cast<int64_t>(n)}, at::TensorOptions().dtype(at::kLong).device(device));
  on_device.copy_(pinned, /*non_blocking=*/true);
  return on_device;
}

}  // namespace

void Table::upload(const c10::Stream& stream) {
  const bool capturing = cuda::stream_is_capturing(stream.native_handle());
  if (!device_static_.defined() || addresses_changed_) {
    if (capturing)
      throw std::runtime_error(
          "cpp backend: a table would be rebuilt during CUDA graph capture (a tensor's storage moved since the "
          "last refresh); warm up with the same tensors before capturing");
    if (!device_static_.defined()) {
      std::vector<int64_t> host(reinterpret_cast<const int64_t*>(items_.data()),
                                reinterpret_cast<const int64_t*>(items_.data() + items_.size()));
      host.insert(host.end(), offsets_.begin(), offsets_.end());
      host.insert(host.end(), permuted_at_.begin(), permuted_at_.end());
      host.insert(host.end(), layout_.begin(), layout_.end());
      device_static_ = to_device(host.data(), host.size(), device_);
    }
    if (device_addresses_.defined() && used_in_capture_) kept_for_graphs_.push_back(device_addresses_);
    device_addresses_ = to_device(addresses_.data(), addresses_.size(), device_);
    used_in_capture_ = false;
    addresses_changed_ = false;
    ++uploads_;
    if (!upload_done_) upload_done_ = std::make_unique<c10::Event>(device_.type());
    upload_done_->record(stream);
    synced_stream_ = stream;
  }
  if (capturing) {
    // Captured kernels read these buffers at every replay: keep them (no record_stream or event
    // wait inside a capture; torch.cuda.graph synchronises the device before capturing).
    used_in_capture_ = true;
    return;
  }
  if (!synced_stream_ || *synced_stream_ != stream) {
    // Another stream: wait for the upload, and make the allocator wait for this stream before it
    // reuses the buffers.
    upload_done_->block(stream);
    device_static_.record_stream(stream);
    device_addresses_.record_stream(stream);
    synced_stream_ = stream;
  }
}
#endif

}  // namespace flatmin
