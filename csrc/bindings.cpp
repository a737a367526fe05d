// The torch binding of flatmin_kernels._C: the Table class (table.h) and every op of the contract
// over a table. An op reads its lists from the table by slot name, parses its scalars, and runs
// the CPU or the CUDA implementation (op_args.h) by the table's device, on torch's current stream
// of that device under a device guard. flatmin_kernels/backends/cpp_backend.py adapts the
// contract's keyword signatures to these positional ones.
//
// This file uses only device-generic torch headers, so it compiles against a CPU-only torch
// too; the CUDA kernels (csrc/cuda/*.cu) see raw pointers and a stream handle, never torch.
#include <torch/extension.h>
#include <torch/csrc/autograd/python_variable.h>

#include <optional>
#include <sstream>
#include <string>

#include "flatmin/op_args.h"
#include "table.h"

namespace py = pybind11;

namespace flatmin {
namespace {

using namespace lists;
using List = Table::List;

#ifdef FLATMIN_WITH_CUDA
constexpr bool kBuiltWithCuda = true;
#else
constexpr bool kBuiltWithCuda = false;
#endif

std::string where(const Table& t) {
  std::ostringstream s;
  s << t.device();
  return s.str();
}

// ---------------------------------------------------------------------------- arguments

// A 1-element tensor on the table's device, of `dtype`, that the extension may read; else
// ValueError(message).
const void* scalar_tensor(const Table& t, py::handle obj, at::ScalarType dtype, const std::string& message) {
  const at::Tensor& x = THPVariable_Unpack(obj.ptr());
  if (x.numel() != 1 || x.scalar_type() != dtype || x.device() != t.device() ||
      x.unsafeGetTensorImpl()->is_python_dispatch() || !x.unsafeGetTensorImpl()->has_storage())
    throw py::value_error(message);
  return x.unsafeGetTensorImpl()->mutable_data();
}

// A contract scalar: a number, a 1-element fp32 tensor on the table's device, or (number, tensor).
Scalar scalar(const Table& t, py::handle obj, const char* name, double* number = nullptr) {
  const std::string message = std::string(name) + " must be a number, a one-element float32 tensor on " + where(t) +
                              ", or a (number, tensor) pair";
  PyObject* o = obj.ptr();
  if (THPVariable_Check(o)) return {1.0f, static_cast<const float*>(scalar_tensor(t, obj, at::kFloat, message))};
  // (number, tensor): their product
  if (PyTuple_Check(o) && PyTuple_GET_SIZE(o) == 2 && THPVariable_Check(PyTuple_GET_ITEM(o, 1)) &&
      (PyFloat_Check(PyTuple_GET_ITEM(o, 0)) || PyLong_Check(PyTuple_GET_ITEM(o, 0)))) {
    const double value = PyFloat_AsDouble(PyTuple_GET_ITEM(o, 0));
    return {static_cast<float>(value),
            static_cast<const float*>(scalar_tensor(t, PyTuple_GET_ITEM(o, 1), at::kFloat, message))};
  }
  if (!PyTuple_Check(o)) {
    const double value = PyFloat_AsDouble(o);  // python numbers, numpy scalars: anything with __float__
    if (!(value == -1.0 && PyErr_Occurred())) {
      if (number) *number = value;
      return {static_cast<float>(value), nullptr};
    }
    PyErr_Clear();
  }
  throw py::value_error(message);
}

// found_inf and grad_scale: None or a 1-element fp32 tensor on the table's device.
const float* optional_tensor(const Table& t, py::handle obj, const char* name) {
  if (obj.is_none()) return nullptr;
  const std::string message = std::string(name) + " must be None or a one-element float32 tensor on " + where(t);
  if (!THPVariable_Check(obj.ptr())) throw py::value_error(message);
  return static_cast<const float*>(scalar_tensor(t, obj, at::kFloat, message));
}

// Noise step: a python int (its low 32 bits), or a 1-element int64 tensor on the device.
StepCounter step_counter(const Table* t, const at::Device& device, py::handle obj) {
  if (THPVariable_Check(obj.ptr())) {
    const at::Tensor& x = THPVariable_Unpack(obj.ptr());
    if (x.numel() != 1 || x.scalar_type() != at::kLong || x.device() != device ||
        x.unsafeGetTensorImpl()->is_python_dispatch())
      throw py::value_error("step must be a python int or a one-element int64 tensor on " +
                            (t ? where(*t) : std::string(c10::DeviceTypeName(device.type(), true))));
    return {0u, static_cast<const int64_t*>(x.unsafeGetTensorImpl()->mutable_data())};
  }
  if (!PyLong_Check(obj.ptr())) throw py::value_error("step must be a python int or a one-element int64 tensor");
  return {static_cast<uint32_t>(PyLong_AsUnsignedLongLongMask(obj.ptr())), nullptr};
}

uint32_t low_word(py::handle obj, const char* name) {
  if (!PyLong_Check(obj.ptr())) throw py::value_error(std::string(name) + " must be a python int");
  return static_cast<uint32_t>(PyLong_AsUnsignedLongLongMask(obj.ptr()));
}

List optional_list(Table& t, const py::object& name) {
  return name.is_none() ? List{} : t.list(name.cast<std::string>());
}

// Where a reduction goes: out (1-D fp32 on the table's device), nvalues slots from index, and the
// epilogue: None or (kind, eps, gamma, slot, inf, inf_accumulate) from cpp_backend.py.
Reduction reduction(const Table& t, const at::Tensor& out, int64_t index, bool accumulate, int nvalues,
                    const py::object& epilogue) {
  if (out.dim() != 1 || out.scalar_type() != at::kFloat || out.device() != t.device() ||
      out.unsafeGetTensorImpl()->is_python_dispatch())
    throw py::value_error("out must be a 1-D float32 tensor on " + where(t));
  Reduction red{out.data_ptr<float>(), out.stride(0), index, nvalues, accumulate, {}};
  const int64_t size = out.size(0);
  auto check = [&](int64_t i, const char* what) {
    if (i < 0 || i >= size)
      throw py::index_error(std::string(what) + " " + std::to_string(i) + " is out of range for out of size " +
                            std::to_string(size));
  };
  check(index, "index");
  check(index + nvalues - 1, "index");
  red.epilogue.kind = Epilogue::kNone;
  if (!epilogue.is_none()) {
    const py::tuple e = epilogue.cast<py::tuple>();
    red.epilogue.kind = e[0].cast<int32_t>();
    red.epilogue.eps = e[1].cast<float>();
    red.epilogue.gamma = e[2].cast<float>();
    red.epilogue.slot = e[3].cast<int64_t>();
    red.epilogue.inf = e[4].cast<int64_t>();
    red.epilogue.inf_accumulate = e[5].cast<bool>();
    check(red.epilogue.slot, "epilogue slot");
    check(red.epilogue.inf, "epilogue slot");
    if (red.epilogue.kind == Epilogue::kRatio) check(index + 1, "index");
  }
  return red;
}

// Runs one call: the bucket of `lists` (lists[l] is the op's list l), then `cpu(bucket)` or, on
// CUDA, `cuda(bucket, stream)` under a guard of the table's device. Every list is read (and
// checked) before anything runs, so a stale table writes nothing.
template <class Cpu, class Cuda>
void run(Table& t, const List* lists, int nlists, uint32_t written, const Cpu& cpu, const Cuda& cuda) {
  if (t.device().is_cpu()) {
    const Bucket bucket = t.bucket(lists, nlists, written);
    py::gil_scoped_release no_gil;
    cpu(bucket);
    return;
  }
#ifdef FLATMIN_WITH_CUDA
  c10::DeviceGuard guard(t.device());
  const Bucket bucket = t.bucket(lists, nlists, written);
  cuda(bucket, t.current_stream().native_handle());
#else
  (void)cuda;
#endif
}

// fp32 scratch for CUDA reductions: nvalues partials per work item.
[[maybe_unused]] at::Tensor partials(const Table& t, const Bucket& bucket, int nvalues) {
  return at::empty({std::max<int64_t>(1, bucket.nitems * nvalues)},
                   at::TensorOptions().dtype(at::kFloat).device(t.device()));
}

constexpr uint32_t bit(int l) { return 1u << l; }

// ---------------------------------------------------------------------------- ops

void sumsq(Table& t, const std::string& x, const py::object& weights, bool centralize, const at::Tensor& out,
           int64_t index, bool accumulate, const py::object& epilogue) {
  const List lists[] = {t.list(x), optional_list(t, weights)};
  const Reduction red = reduction(t, out, index, accumulate, 1, epilogue);
  const SumsqArgs args{centralize};
  run(t, lists, 2, 0, [&](const Bucket& b) { cpu::sumsq(b, args, red); },
      [&](const Bucket& b, void* stream) {
        at::Tensor scratch = partials(t, b, 1);
        cuda::sumsq(b, args, red, scratch.data_ptr<float>(), stream);
      });
}

void dot(Table& t, const std::string& x, const std::string& y, const at::Tensor& out, int64_t index,
         bool accumulate) {
  const List lists[] = {t.list(x), t.list(y)};
  const Reduction red = reduction(t, out, index, accumulate, 1, py::none());
  run(t, lists, 2, 0, [&](const Bucket& b) { cpu::dot(b, red); },
      [&](const Bucket& b, void* stream) {
        at::Tensor scratch = partials(t, b, 1);
        cuda::dot(b, red, scratch.data_ptr<float>(), stream);
      });
}

void axpby(Table& t, const std::string& y, const std::string& x, py::handle a, py::handle b, bool a_is_zero,
           const py::object& reduce, const py::object& z, const py::object& weights, const py::object& out,
           int64_t index, bool accumulate, const py::object& epilogue) {
  AxpbyArgs args{scalar(t, a, "a"), scalar(t, b, "b"), a_is_zero, AxpbyReduce::kNone};
  const List lists[] = {t.list(y), t.list(x), optional_list(t, z), optional_list(t, weights)};
  Reduction red{};
  if (!reduce.is_none()) {
    const std::string mode = reduce.cast<std::string>();
    if (mode != "x" && mode != "y")
      throw py::value_error("reduce must be None, 'x' or 'y', got '" + mode + "'");
    args.reduce = mode == "x" ? AxpbyReduce::kX : AxpbyReduce::kY;
    if (out.is_none()) throw py::value_error("axpby_ with reduce needs out");
    const int nvalues = args.reduce == AxpbyReduce::kY && !z.is_none() ? 2 : 1;
    red = reduction(t, out.cast<at::Tensor>(), index, accumulate, nvalues, epilogue);
  }
  run(t, lists, 4, bit(kAxpbyY), [&](const Bucket& bk) { cpu::axpby(bk, args, red); },
      [&](const Bucket& bk, void* stream) {
        at::Tensor scratch = partials(t, bk, red.nvalues > 0 ? red.nvalues : 1);
        cuda::axpby(bk, args, red, scratch.data_ptr<float>(), stream);
      });
}

void perturb(Table& t, const std::string& p, const std::string& d, py::handle scale, const py::object& minus,
             const py::object& base, const py::object& save_to, const py::object& copy_d_to, bool centralize,
             bool adaptive, py::handle found_inf) {
  const PerturbArgs args{scalar(t, scale, "scale"), adaptive, centralize, {optional_tensor(t, found_inf, "found_inf")}};
  const List lists[] = {t.list(p), t.list(d), optional_list(t, minus), optional_list(t, base),
                        optional_list(t, save_to), optional_list(t, copy_d_to)};
  run(t, lists, 6, bit(kPerturbP) | bit(kPerturbSave) | bit(kPerturbDCopy),
      [&](const Bucket& b) { cpu::perturb(b, args); },
      [&](const Bucket& b, void* stream) { cuda::perturb(b, args, stream); });
}

void noise(Table& t, const std::string& p, py::handle coef, uint64_t seed, py::handle step, py::handle sample,
           const py::object& base, py::handle found_inf) {
  if (t.size() == 0) return;
  if (!t.has_offsets()) throw py::value_error("noise_ needs a table built with offsets");
  const NoiseArgs args{scalar(t, coef, "coef"), seed, step_counter(&t, t.device(), step), low_word(sample, "sample"),
                       {optional_tensor(t, found_inf, "found_inf")}};
  const List lists[] = {t.list(p), optional_list(t, base)};
  run(t, lists, 2, bit(kNoiseP), [&](const Bucket& b) { cpu::noise(b, args); },
      [&](const Bucket& b, void* stream) { cuda::noise(b, args, stream); });
}

void philox(at::Tensor& out, uint64_t seed, py::handle step, py::handle sample, uint64_t offset) {
  TORCH_CHECK(out.scalar_type() == at::kLong && out.dim() == 2 && out.size(1) == 4 && out.is_contiguous(),
              "cpp backend: philox needs a contiguous (n, 4) int64 output");
  if (!(out.is_cpu() || (out.is_cuda() && kBuiltWithCuda)))
    throw py::value_error("the cpp backend's philox runs on cpu" + std::string(kBuiltWithCuda ? " and cuda" : ""));
  const PhiloxArgs args{out.size(0), offset, seed, step_counter(nullptr, out.device(), step), low_word(sample, "sample"),
                        out.data_ptr<int64_t>()};
  if (args.n == 0) return;
  if (out.is_cpu()) {
    py::gil_scoped_release no_gil;
    cpu::philox(args);
    return;
  }
#ifdef FLATMIN_WITH_CUDA
  c10::DeviceGuard guard(out.device());
  cuda::philox(args, c10::impl::getDeviceGuardImpl(out.device().type())->getStream(out.device()).native_handle());
#endif
}

DirectionArgs direction_args(const Table& t, py::handle g_coef, py::handle g2_coef, py::handle grad_scale, bool maximize) {
  return {scalar(t, g_coef, "g_coef"), scalar(t, g2_coef, "g2_coef"), optional_tensor(t, grad_scale, "grad_scale"),
          maximize};
}

void step_sgd(Table& t, const std::string& p, const std::string& g, const py::object& buf, py::handle lr,
              double weight_decay, double momentum, double dampening, bool nesterov, bool maximize, bool init_buffers,
              bool centralize, const py::object& backup, const py::object& g2, py::handle g_coef, py::handle g2_coef,
              py::handle grad_scale, py::handle found_inf) {
  if (momentum != 0 && buf.is_none()) throw py::value_error("step_sgd_ with momentum needs buf");
  const SgdHyper h{static_cast<float>(weight_decay), static_cast<float>(momentum),
                   static_cast<float>(1.0 - dampening), nesterov, init_buffers, momentum != 0};
  const SgdArgs args{h, scalar(t, lr, "lr"), direction_args(t, g_coef, g2_coef, grad_scale, maximize), centralize,
                     {optional_tensor(t, found_inf, "found_inf")}};
  const List lists[] = {t.list(p), t.list(g), optional_list(t, g2), momentum != 0 ? t.list(buf.cast<std::string>()) : List{},
                        optional_list(t, backup)};
  run(t, lists, 5, bit(kSgdP) | bit(kSgdBuf), [&](const Bucket& b) { cpu::step_sgd(b, args); },
      [&](const Bucket& b, void* stream) { cuda::step_sgd(b, args, stream); });
}

void step_adam(Table& t, const std::string& p, const std::string& g, const std::string& m, const std::string& v,
               const py::object& vmax, const std::string& steps, py::handle lr, double beta1, double beta2, double eps,
               double weight_decay, bool decoupled, bool amsgrad, bool maximize, bool centralize,
               const py::object& backup, const py::object& g2, py::handle g_coef, py::handle g2_coef,
               py::handle grad_scale, py::handle found_inf) {
  if (amsgrad && vmax.is_none()) throw py::value_error("step_adam_ with amsgrad needs vmax");
  const AdamHyper h{beta1, beta2, static_cast<float>(1.0 - beta1), static_cast<float>(1.0 - beta2),
                    static_cast<float>(beta2), static_cast<float>(eps), static_cast<float>(weight_decay), decoupled};
  double lr_number = 0.0;
  const Scalar lr_scalar = scalar(t, lr, "lr", &lr_number);
  const AdamArgs args{h, lr_scalar, lr_number, direction_args(t, g_coef, g2_coef, grad_scale, maximize), amsgrad,
                      centralize, {optional_tensor(t, found_inf, "found_inf")}};
  const List lists[] = {t.list(p), t.list(g), optional_list(t, g2), t.list(m), t.list(v),
                        amsgrad ? t.list(vmax.cast<std::string>()) : List{}, optional_list(t, backup), t.list(steps)};
  if (t.size() > 0 && !t.is_scalar_slot(lists[kAdamSteps].slot))
    throw py::value_error("steps must name a slot bound with bind_scalars (one-element float32 tensors)");
  run(t, lists, 8, bit(kAdamP) | bit(kAdamM) | bit(kAdamV) | bit(kAdamVmax) | bit(kAdamSteps),
      [&](const Bucket& b) { cpu::step_adam(b, args); },
      [&](const Bucket& b, void* stream) { cuda::step_adam(b, args, stream); });
}

void centralize(Table& t, const std::string& x) {
  const List lists[] = {t.list(x)};
  run(t, lists, 1, bit(kCentralizeX), [&](const Bucket& b) { cpu::centralize(b); },
      [&](const Bucket& b, void* stream) { cuda::centralize(b, stream); });
}

// The normals of the active CPU instruction set, for tests: (ncalls * 4,) fp32.
at::Tensor cpu_normals(uint64_t first_call, int64_t ncalls, uint64_t seed, int64_t step, int64_t sample) {
  at::Tensor out = at::empty({ncalls * 4 + 64}, at::TensorOptions().dtype(at::kFloat));
  cpu::normals(first_call, ncalls, seed, static_cast<uint32_t>(step), static_cast<uint32_t>(sample),
               out.data_ptr<float>());
  return out.narrow(0, 0, ncalls * 4);
}

}  // namespace
}  // namespace flatmin

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace flatmin;
  m.doc() = "flatmin_kernels compiled ops (see flatmin_kernels/backends/contract.py); called by cpp_backend.py";
  m.attr("with_cuda") = py::bool_(kBuiltWithCuda);

  // StaleTableError -> the contract's StaleTable (the host path catches that class and rebuilds).
  // (Kept for the life of the process: a static py::object would be released after Python.)
  static PyObject* stale_table =
      py::object(py::module_::import("flatmin_kernels.backends.contract").attr("StaleTable")).release().ptr();
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const StaleTableError& e) {
      PyErr_SetString(stale_table, e.what());
    }
  });

  py::class_<Table>(m, "Table", "A bucket's tensors prepared once (contract v2); see csrc/table.h.")
      .def(py::init<const py::sequence&, const py::object&, const py::object&>(), py::arg("tensors"), py::kw_only(),
           py::arg("gc_rows") = py::none(), py::arg("offsets") = py::none())
      .def("bind", &Table::bind, py::arg("name"), py::arg("tensors"))
      .def("bind_scalars", &Table::bind_scalars, py::arg("name"), py::arg("tensors"))
      .def("bind_grads", &Table::bind_grads, py::arg("name") = "grad")
      .def("refresh", &Table::refresh, py::arg("grads") = true)
      .def("get", &Table::get, py::arg("name"), "The current tensors of a slot (gradients read now).")
      .def("stats", &Table::stats, "Counters: builds, list_conversions, address_changes, uploads.")
      .def_property_readonly("device", [](const Table& t) { return t.device(); });

  m.def("sumsq", &sumsq);
  m.def("dot", &dot);
  m.def("axpby_", &axpby);
  m.def("perturb_", &perturb);
  m.def("noise_", &noise);
  m.def("philox_", &philox);
  m.def("step_sgd_", &step_sgd);
  m.def("step_adam_", &step_adam);
  m.def("centralize_", &centralize);
  m.def("is_dense", [](const at::Tensor& t) { return t.is_non_overlapping_and_dense(); },
        "Whether a tensor's elements fill its memory span without gaps or overlaps.");
  m.def("cpu_isa", &cpu::isa, "The instruction set of the CPU loops (avx512, avx2 or baseline).");
  m.def("set_cpu_isa", [](const std::string& name) { return cpu::set_isa(name.c_str()); },
        "Use a lower instruction set (tests); False if this CPU lacks it.");
  m.def("cpu_normals", &cpu_normals, "The contract's normals of Philox calls, by the CPU vector math (tests).");
}
