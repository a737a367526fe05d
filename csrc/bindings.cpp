// The torch binding of flatmin_kernels._C: checks the tensor lists of one op call, describes
// them as a Bucket (op_args.h) and runs the CPU or the CUDA implementation by device.
//
// This file uses only device-generic torch headers, so it compiles against a CPU-only torch
// too; the CUDA kernels (csrc/cuda/*.cu) see raw pointers and a stream handle, never torch.
// The Python side (flatmin_kernels/backends/cpp_backend.py) passes the current CUDA stream.
#include <torch/extension.h>
#include <c10/core/DeviceGuard.h>

#include <optional>
#include <string>
#include <vector>

#include "flatmin/op_args.h"

namespace py = pybind11;

namespace flatmin {
namespace {

using TensorList = std::vector<at::Tensor>;
using OptionalList = std::optional<TensorList>;
using Flags = std::optional<std::vector<bool>>;

#ifdef FLATMIN_WITH_CUDA
constexpr bool kBuiltWithCuda = true;
#else
constexpr bool kBuiltWithCuda = false;
#endif

// Whether t's elements sit in the same memory order as a tensor of its shape with these strides
// (a dimension of size 1 may have any stride).
bool same_layout(const at::Tensor& t, const std::vector<int64_t>& strides) {
  if (t.dim() != static_cast<int64_t>(strides.size())) return false;
  for (int64_t d = 0; d < t.dim(); ++d)
    if (t.size(d) > 1 && t.stride(d) != strides[d]) return false;
  return true;
}

DType dtype_of(const at::Tensor& t, const char* list, size_t i) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kHalf: return DType::kFloat16;
    default:
      TORCH_CHECK(false, "cpp backend: tensor ", i, " of ", list, " has dtype ", t.scalar_type(),
                  "; only float32, bfloat16 and float16 are supported");
  }
  return DType::kFloat32;
}

// Everything one op call needs alive until its work is enqueued: the bucket description,
// its device copy (CUDA), and fp32 copies of scalar tensors.
class BucketBuilder {
 public:
  BucketBuilder(const TensorList& first, const char* name) : device_(first.at(0).device()) {
    TORCH_CHECK(device_.is_cpu() || device_.is_cuda(), "cpp backend: tensors on ", device_,
                " are not supported (cpu or cuda only)");
    TORCH_CHECK(device_.is_cpu() || kBuiltWithCuda,
                "cpp backend: flatmin_kernels._C was built without CUDA; cannot run on ", device_);
    records_.resize(first.size());
    for (size_t i = 0; i < first.size(); ++i) {
      TensorRecord& r = records_[i];
      for (int l = 0; l < kMaxLists; ++l) r.ptr[l] = 0;
      r.numel = first[i].numel();
      r.row_len = 0;
      r.aux = 0;
      r.first_item = 0;
    }
    add(0, first, name);
  }

  const at::Device& device() const { return device_; }
  bool on_cuda() const { return device_.is_cuda(); }

  // List l of the bucket: same length, device, shapes as the first list; one dtype; contiguous.
  void add(int l, const TensorList& ts, const char* name) {
    TORCH_CHECK(ts.size() == records_.size(), "cpp backend: ", name, " has ", ts.size(),
                " tensors, expected ", records_.size());
    for (size_t i = 0; i < ts.size(); ++i) {
      const at::Tensor& t = ts[i];
      TORCH_CHECK(t.device() == device_, "cpp backend: tensor ", i, " of ", name, " is on ", t.device(),
                  ", expected ", device_);
      TORCH_CHECK(t.numel() == records_[i].numel, "cpp backend: tensor ", i, " of ", name, " has ",
                  t.numel(), " elements, expected ", records_[i].numel);
      // Ops run in memory order, so any dense layout works (channels_last weights too) as long
      // as every list lays tensor i out the same way.
      TORCH_CHECK(t.is_non_overlapping_and_dense(), "cpp backend: tensor ", i, " of ", name,
                  " is not dense (a view with gaps or overlaps)");
      if (l == 0) strides_.push_back(t.strides().vec());
      TORCH_CHECK(same_layout(t, strides_[i]), "cpp backend: tensor ", i, " of ", name, " has strides ",
                  t.strides(), ", the first list has ", c10::IntArrayRef(strides_[i]));
      const DType dtype = dtype_of(t, name, i);
      TORCH_CHECK(i == 0 || dtype == dtypes_[l], "cpp backend: ", name, " mixes dtypes (tensor ", i,
                  " is ", t.scalar_type(), ")");
      dtypes_[l] = dtype;
      records_[i].ptr[l] = reinterpret_cast<int64_t>(t.data_ptr());
    }
  }

  void add(int l, const OptionalList& ts, const char* name) {
    if (ts) add(l, *ts, name);
  }

  // GC rows: row length numel / shape[0] for flagged, non-empty tensors.
  void centralize(const Flags& flags, const TensorList& shapes) {
    if (!flags) return;
    TORCH_CHECK(flags->size() == records_.size(), "cpp backend: centralize has ", flags->size(),
                " flags for ", records_.size(), " tensors");
    for (size_t i = 0; i < records_.size(); ++i) {
      if (!(*flags)[i] || records_[i].numel == 0) continue;
      const at::Tensor& t = shapes[i];
      const int64_t row_len = records_[i].numel / t.size(0);
      // A GC row is a run of memory: dim 0 must be the outermost dimension.
      TORCH_CHECK(t.size(0) == 1 || t.stride(0) == row_len, "cpp backend: tensor ", i,
                  " cannot be centralized in memory order: dim 0 is not its outermost dimension (strides ",
                  t.strides(), ")");
      records_[i].row_len = row_len;
    }
  }

  void set_aux(size_t i, int64_t value) { records_[i].aux = value; }

  // A scalar argument: a python number, or a one-element tensor read on the bucket's device.
  Scalar scalar(const py::handle& obj, const char* name) {
    if (THPVariable_Check(obj.ptr())) return {0.0f, tensor_scalar(THPVariable_Unpack(obj.ptr()), name)};
    return {py::cast<float>(obj), nullptr};
  }

  const float* tensor_scalar(const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.numel() == 1, "cpp backend: ", name, " must be a number or a one-element tensor, got shape ",
                t.sizes());
    keep_.push_back(t.to(device_, at::kFloat).contiguous());
    return keep_.back().data_ptr<float>();
  }

  const float* optional_scalar(const std::optional<at::Tensor>& t, const char* name) {
    return t ? tensor_scalar(*t, name) : nullptr;
  }

  // The finished description; on CUDA the tables are copied to the device without waiting.
  Bucket finish() {
    items_.clear();
    append_work_items(records_, items_);
    Bucket bucket{records_.data(), items_.data(), static_cast<int64_t>(records_.size()),
                  static_cast<int64_t>(items_.size()), {}};
    for (int l = 0; l < kMaxLists; ++l) bucket.dtype[l] = dtypes_[l];
    if (on_cuda()) {
      const int64_t n_rec = static_cast<int64_t>(records_.size() * sizeof(TensorRecord) / sizeof(int64_t));
      const int64_t n_items = static_cast<int64_t>(items_.size() * sizeof(WorkItem) / sizeof(int64_t));
      at::Tensor host = at::empty({n_rec + n_items}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
      std::memcpy(host.data_ptr<int64_t>(), records_.data(), n_rec * sizeof(int64_t));
      std::memcpy(host.data_ptr<int64_t>() + n_rec, items_.data(), n_items * sizeof(int64_t));
      keep_.push_back(host.to(device_, /*non_blocking=*/true));
      const int64_t* dev = keep_.back().data_ptr<int64_t>();
      bucket.tensors = reinterpret_cast<const TensorRecord*>(dev);
      bucket.items = reinterpret_cast<const WorkItem*>(dev + n_rec);
    }
    return bucket;
  }

  at::Tensor empty_floats(int64_t n) const {
    return at::empty({n}, at::TensorOptions().dtype(at::kFloat).device(device_));
  }

 private:
  at::Device device_;
  std::vector<TensorRecord> records_;
  std::vector<WorkItem> items_;
  std::vector<std::vector<int64_t>> strides_;  // of the first list's tensors
  DType dtypes_[kMaxLists] = {};
  std::vector<at::Tensor> keep_;
};

[[maybe_unused]] void* as_stream(int64_t stream) { return reinterpret_cast<void*>(stream); }

// Runs the CPU implementation or, on CUDA, the CUDA one (which exists only in CUDA builds).
#ifdef FLATMIN_WITH_CUDA
#define FLATMIN_DISPATCH(builder, cpu_call, cuda_call) \
  do {                                                 \
    if ((builder).on_cuda()) {                         \
      cuda_call;                                       \
    } else {                                           \
      cpu_call;                                        \
    }                                                  \
  } while (0)
#else
#define FLATMIN_DISPATCH(builder, cpu_call, cuda_call) \
  do {                                                 \
    cpu_call;                                          \
  } while (0)
#endif

// --------------------------------------------------------------------------- ops

at::Tensor sumsq(const TensorList& xs, const OptionalList& weights, const Flags& centralize, int64_t stream) {
  BucketBuilder bb(xs, "tensors");
  bb.add(lists::kSumsqW, weights, "weights");
  bb.centralize(centralize, xs);
  c10::DeviceGuard guard(bb.device());
  const SumsqArgs args{weights.has_value()};
  const Bucket bucket = bb.finish();
  at::Tensor out = bb.empty_floats(bucket.ntensors);
  FLATMIN_DISPATCH(bb, cpu::sumsq(bucket, args, out.data_ptr<float>()), {
    at::Tensor partials = bb.empty_floats(std::max<int64_t>(bucket.nitems, 1));
    cuda::sumsq(bucket, args, partials.data_ptr<float>(), out.data_ptr<float>(), as_stream(stream));
  });
  return out;
}

at::Tensor dot(const TensorList& xs, const TensorList& ys, int64_t stream) {
  BucketBuilder bb(xs, "xs");
  bb.add(lists::kDotY, ys, "ys");
  c10::DeviceGuard guard(bb.device());
  const Bucket bucket = bb.finish();
  at::Tensor out = bb.empty_floats(bucket.ntensors);
  FLATMIN_DISPATCH(bb, cpu::dot(bucket, out.data_ptr<float>()), {
    at::Tensor partials = bb.empty_floats(std::max<int64_t>(bucket.nitems, 1));
    cuda::dot(bucket, partials.data_ptr<float>(), out.data_ptr<float>(), as_stream(stream));
  });
  return out;
}

void perturb(const TensorList& params, const TensorList& directions, const py::object& scale,
             const OptionalList& save_to, const OptionalList& base, const Flags& centralize, bool adaptive,
             const std::optional<at::Tensor>& found_inf, int64_t stream) {
  BucketBuilder bb(params, "params");
  bb.add(lists::kPerturbD, directions, "directions");
  bb.add(lists::kPerturbBase, base, "base");
  bb.add(lists::kPerturbSave, save_to, "save_to");
  if (save_to) {
    for (size_t i = 0; i < params.size(); ++i)
      TORCH_CHECK((*save_to)[i].scalar_type() == params[i].scalar_type(),
                  "cpp backend: save_to must have the params' dtype (an exact backup)");
  }
  bb.centralize(centralize, params);
  c10::DeviceGuard guard(bb.device());
  const PerturbArgs args{bb.scalar(scale, "scale"), adaptive, bb.optional_scalar(found_inf, "found_inf")};
  const Bucket bucket = bb.finish();
  FLATMIN_DISPATCH(bb, cpu::perturb(bucket, args), cuda::perturb(bucket, args, as_stream(stream)));
}

void noise(const TensorList& params, const py::object& coef, uint64_t seed, int64_t step, int64_t sample,
           const std::vector<int64_t>& offsets, const OptionalList& base, const std::optional<at::Tensor>& found_inf,
           int64_t stream) {
  BucketBuilder bb(params, "params");
  bb.add(lists::kNoiseBase, base, "base");
  TORCH_CHECK(offsets.size() == params.size(), "cpp backend: ", offsets.size(), " offsets for ", params.size(),
              " params");
  for (size_t i = 0; i < offsets.size(); ++i) bb.set_aux(i, offsets[i]);
  c10::DeviceGuard guard(bb.device());
  const NoiseArgs args{bb.scalar(coef, "coef"), seed, static_cast<uint32_t>(step), static_cast<uint32_t>(sample),
                       bb.optional_scalar(found_inf, "found_inf")};
  const Bucket bucket = bb.finish();
  FLATMIN_DISPATCH(bb, cpu::noise(bucket, args), cuda::noise(bucket, args, as_stream(stream)));
}

void philox(at::Tensor& out, uint64_t seed, int64_t step, int64_t sample, uint64_t offset, int64_t stream) {
  TORCH_CHECK(out.scalar_type() == at::kLong && out.dim() == 2 && out.size(1) == 4 && out.is_contiguous(),
              "cpp backend: philox needs a contiguous (n, 4) int64 output");
  TORCH_CHECK(out.is_cpu() || kBuiltWithCuda, "cpp backend: built without CUDA");
  c10::DeviceGuard guard(out.device());
  const PhiloxArgs args{out.size(0), offset, seed, static_cast<uint32_t>(step), static_cast<uint32_t>(sample),
                        out.data_ptr<int64_t>()};
  if (args.n == 0) return;
#ifdef FLATMIN_WITH_CUDA
  if (out.is_cuda()) {
    cuda::philox(args, as_stream(stream));
    return;
  }
#endif
  cpu::philox(args);
}

void step_sgd(const TensorList& params, const TensorList& grads, const OptionalList& momentum_buffers,
              const py::object& lr, double weight_decay, double momentum, double dampening, bool nesterov,
              bool maximize, bool init_buffers, const Flags& centralize, const OptionalList& backups,
              const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
              int64_t stream) {
  BucketBuilder bb(params, "params");
  bb.add(lists::kSgdG, grads, "grads");
  TORCH_CHECK(momentum == 0 || momentum_buffers, "cpp backend: momentum needs momentum_buffers");
  if (momentum != 0) bb.add(lists::kSgdBuf, momentum_buffers, "momentum_buffers");
  bb.add(lists::kSgdBackup, backups, "backups");
  bb.centralize(centralize, params);
  c10::DeviceGuard guard(bb.device());
  const SgdHyper h{static_cast<float>(weight_decay), static_cast<float>(momentum),
                   static_cast<float>(1.0 - dampening), nesterov, maximize, init_buffers, momentum != 0};
  const SgdArgs args{h, bb.scalar(lr, "lr"), bb.optional_scalar(grad_scale, "grad_scale"),
                     bb.optional_scalar(found_inf, "found_inf")};
  const Bucket bucket = bb.finish();
  FLATMIN_DISPATCH(bb, cpu::step_sgd(bucket, args), cuda::step_sgd(bucket, args, as_stream(stream)));
}

void step_adam(const TensorList& params, const TensorList& grads, const TensorList& exp_avgs,
               const TensorList& exp_avg_sqs, const OptionalList& max_exp_avg_sqs, const TensorList& steps,
               const py::object& lr, double beta1, double beta2, double eps, double weight_decay, bool decoupled,
               bool amsgrad, bool maximize, const Flags& centralize, const OptionalList& backups,
               const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
               int64_t stream) {
  BucketBuilder bb(params, "params");
  bb.add(lists::kAdamG, grads, "grads");
  bb.add(lists::kAdamM, exp_avgs, "exp_avgs");
  bb.add(lists::kAdamV, exp_avg_sqs, "exp_avg_sqs");
  TORCH_CHECK(!amsgrad || max_exp_avg_sqs, "cpp backend: amsgrad needs max_exp_avg_sqs");
  if (amsgrad) bb.add(lists::kAdamVmax, max_exp_avg_sqs, "max_exp_avg_sqs");
  bb.add(lists::kAdamBackup, backups, "backups");
  TORCH_CHECK(steps.size() == params.size(), "cpp backend: ", steps.size(), " steps for ", params.size(), " params");
  for (size_t i = 0; i < steps.size(); ++i) {
    TORCH_CHECK(steps[i].numel() == 1 && steps[i].scalar_type() == at::kFloat && steps[i].device() == bb.device(),
                "cpp backend: steps[", i, "] must be a one-element float32 tensor on ", bb.device());
    bb.set_aux(i, reinterpret_cast<int64_t>(steps[i].data_ptr<float>()));
  }
  bb.centralize(centralize, params);
  c10::DeviceGuard guard(bb.device());
  const float wd = static_cast<float>(weight_decay);
  const AdamHyper h{beta1, beta2, static_cast<float>(1.0 - beta1), static_cast<float>(1.0 - beta2),
                    static_cast<float>(beta2), static_cast<float>(eps), maximize ? -1.0f : 1.0f,
                    decoupled ? 0.0f : wd, decoupled ? wd : 0.0f, amsgrad};
  const AdamArgs args{h, bb.scalar(lr, "lr"), bb.optional_scalar(grad_scale, "grad_scale"),
                      bb.optional_scalar(found_inf, "found_inf")};
  const Bucket bucket = bb.finish();
  FLATMIN_DISPATCH(bb, cpu::step_adam(bucket, args), cuda::step_adam(bucket, args, as_stream(stream)));
}

void centralize(const TensorList& tensors, const std::vector<bool>& flags, int64_t stream) {
  TORCH_CHECK(flags.size() == tensors.size(), "cpp backend: centralize has ", flags.size(), " flags for ",
              tensors.size(), " tensors");
  TensorList flagged;  // only the tensors to centre take part
  for (size_t i = 0; i < tensors.size(); ++i)
    if (flags[i] && tensors[i].numel() > 0) flagged.push_back(tensors[i]);
  if (flagged.empty()) return;
  BucketBuilder bb(flagged, "tensors");
  bb.centralize(std::vector<bool>(flagged.size(), true), flagged);
  c10::DeviceGuard guard(bb.device());
  const Bucket bucket = bb.finish();
  FLATMIN_DISPATCH(bb, cpu::centralize(bucket), cuda::centralize(bucket, as_stream(stream)));
}

void axpby(const TensorList& ys, const TensorList& xs, const py::object& a, const py::object& b, bool a_is_zero,
           int64_t stream) {
  BucketBuilder bb(ys, "ys");
  bb.add(lists::kAxpbyX, xs, "xs");
  c10::DeviceGuard guard(bb.device());
  const AxpbyArgs args{bb.scalar(a, "a"), bb.scalar(b, "b"), a_is_zero};
  const Bucket bucket = bb.finish();
  FLATMIN_DISPATCH(bb, cpu::axpby(bucket, args), cuda::axpby(bucket, args, as_stream(stream)));
}

}  // namespace
}  // namespace flatmin

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace flatmin;
  m.doc() = "flatmin_kernels compiled ops (see flatmin_kernels/backends/contract.py); called by cpp_backend.py";
  m.attr("with_cuda") = py::bool_(kBuiltWithCuda);
  m.def("sumsq", &sumsq);
  m.def("dot", &dot);
  m.def("perturb_", &perturb);
  m.def("noise_", &noise);
  m.def("philox_", &philox);
  m.def("step_sgd_", &step_sgd);
  m.def("step_adam_", &step_adam);
  m.def("centralize_", &centralize);
  m.def("axpby_", &axpby);
}
