"""The Triton backend's tables: built once, refreshed by re-reading pointers only, the layouts
they take (channels_last, other dense permutations, alike in every slot) or refuse, every GC
row class and multi-item tensor against the reference, and every error message."""
import contextlib

import pytest
import torch

from flatmin_kernels.backends import available_backends
from flatmin_kernels.backends import torch_backend as ref
from flatmin_kernels.backends.contract import InvNorm, StaleTable

if "triton" not in available_backends():
    pytest.skip("the triton backend is not available here", allow_module_level=True)

from flatmin_kernels.backends import triton_backend as tb  # noqa: E402
from flatmin_kernels.backends.triton_backend.tables import Items, Table  # noqa: E402

from .op_cases import assert_lists_close, build_table, clone_lists, offsets_of  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(4, 6), (7,), (3, 2, 3, 3)]


def _randn(shapes, seed, like=None):
    """Random tensors of ``shapes``, laid out like ``like`` (same strides) when given."""
    gen = torch.Generator().manual_seed(seed)
    out = [torch.randn(s, generator=gen).to(DEVICE) for s in shapes]
    if like is not None:
        out = [torch.empty_like(x).copy_(o) for x, o in zip(like, out)]
    return out


def _flat(shapes, seed, order=None):
    """Tensors of ``shapes`` as views of one new buffer, placed in ``order`` (default: in order)."""
    tensors = _randn(shapes, seed)
    order = order or list(range(len(shapes)))
    buffer = torch.empty(sum(t.numel() for t in tensors), device=DEVICE)
    views, at = [None] * len(shapes), 0
    for i in order:
        views[i] = buffer[at: at + tensors[i].numel()].view(shapes[i]).copy_(tensors[i])
        at += tensors[i].numel()
    return views


@pytest.fixture
def counted(monkeypatch):
    """Counts of table builds, offset uploads and full list checks."""
    counts = {"build": 0, "upload": 0, "check": 0}
    for name, key in (("_build", "build"), ("_upload", "upload"), ("_check_list", "check")):
        real = getattr(Table, name)

        def wrapper(self, *args, _real=real, _key=key, **kwargs):
            counts[_key] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(Table, name, wrapper)
    return counts


def _sgd(impl, table):
    impl.step_sgd_(table, "param", "grad", "buf", lr=0.1, weight_decay=0.01, momentum=0.9, dampening=0.0,
                   nesterov=False, maximize=False, centralize=True)


def _sgd_tables(grads):
    """A triton table (reading ``grads`` themselves) and a reference table (reading copies) over
    the same parameters, with momentum."""
    tables = []
    params, bufs = _randn(SHAPES, 0), _randn(SHAPES, 1)
    for impl, impl_grads in ((tb, grads), (ref, [g.clone() for g in grads])):
        lists = clone_lists({"param": params, "buf": bufs})
        tables.append(build_table(impl, lists, gc=[p.dim() > 1 for p in params], grads=impl_grads))
    return tables


# ----------------------------------------------------------------------------- refresh


def test_reallocated_gradients_refresh_their_offsets_only(counted):
    """zero_grad(set_to_none=True) + backward: new gradient storage. refresh re-reads the
    pointers, uploads the grad slot's offsets (only: the shape part is not rebuilt), and the
    next op reads the new gradients."""
    table, want = _sgd_tables(_flat(SHAPES, 2))
    assert counted == {"build": 1, "upload": 4, "check": 2}  # work items; param, buf, grad offsets
    new = _flat(SHAPES, 3, order=[2, 0, 1])  # old gradients stay alive: other addresses, other offsets
    for impl_table in (table, want):
        for p, g in zip(impl_table.tensors, new):
            p.grad = g.clone() if impl_table is want else g
        impl_table.refresh()
    assert counted == {"build": 1, "upload": 5, "check": 3}
    _sgd(tb, table)
    _sgd(ref, want)
    assert_lists_close(table.get("param"), want.get("param"))
    assert_lists_close(table.get("buf"), want.get("buf"))


def test_a_moved_slot_with_the_same_offsets_uploads_nothing(counted):
    """Gradients re-allocated in one buffer laid out as before: only the base moved."""
    table, want = _sgd_tables(_flat(SHAPES, 2))
    uploads = counted["upload"]
    old = table.get("grad")
    for p, g in zip(table.tensors, _flat(SHAPES, 4)):
        p.grad = g
    table.refresh()
    assert table.slot("grad").base.data_ptr() != old[0].data_ptr()
    assert counted["upload"] == uploads
    for p, g in zip(want.tensors, _flat(SHAPES, 4)):
        p.grad = g
    want.refresh()
    _sgd(tb, table)
    _sgd(ref, want)
    assert_lists_close(table.get("param"), want.get("param"))


def test_steady_state_refresh_and_ops_check_and_upload_nothing(counted):
    table, _ = _sgd_tables(_flat(SHAPES, 2))
    before = dict(counted)
    for _ in range(3):
        table.refresh()
        _sgd(tb, table)
        tb.sumsq(table, "grad", centralize=True, out=torch.zeros(1, device=DEVICE))
    assert counted == before


@pytest.mark.parametrize("change, message", [
    ("none", r"grad\[1\] is None \(parameter 1 has no gradient\)"),
    ("layout", r"grad\[0\] is laid out as \(\(4, 6\), \(1, 4\)\), tensor 0 as contiguous"),
    ("numel", r"tensor 1 changed to 5 elements of torch.float32"),
    ("dtype", r"tensor 2 changed to 54 elements of torch.float16"),
])
def test_a_stale_refresh_raises_and_changes_nothing(change, message):
    table, _ = _sgd_tables(_flat(SHAPES, 2))
    old = table.get("grad")
    p = table.tensors
    if change == "none":
        p[1].grad = None
    elif change == "layout":  # same shape, transposed storage
        p[0].grad = torch.randn(6, 4, device=DEVICE).t()
    elif change == "numel":
        p[1].data = torch.randn(5, device=DEVICE)
    else:
        p[2].data = p[2].data.half()
    with pytest.raises(StaleTable, match=message):
        table.refresh()
    assert table.get("grad") is old
    assert table.slot("param").ptrs != [t.data_ptr() for t in p] or change in ("none", "layout")


def test_a_refresh_that_would_upload_during_capture_raises(monkeypatch):
    table, _ = _sgd_tables(_flat(SHAPES, 2))
    monkeypatch.setattr(table, "_cuda", True)
    monkeypatch.setattr(table, "_capturing", lambda: True)
    table.refresh()  # nothing moved: nothing to do, capture or not
    old = table.get("grad")
    for p, g in zip(table.tensors, _flat(SHAPES, 3)):
        p.grad = g
    with pytest.raises(RuntimeError, match="storage of 'grad' moved, so a table would be rebuilt during capture"):
        table.refresh()
    assert table.get("grad") is old


def test_a_grad_slot_reads_gradients_at_the_first_refresh():
    params = _randn(SHAPES, 0)
    table = tb.Table(params)
    table.bind_grads()
    out = torch.zeros(1, device=DEVICE)
    with pytest.raises(RuntimeError, match=r"slot 'grad' has not read its gradients yet: call refresh\(\)"):
        tb.sumsq(table, "grad", out=out)
    for p, g in zip(params, _randn(SHAPES, 1)):
        p.grad = g
    table.refresh()
    tb.sumsq(table, "grad", out=out)
    torch.testing.assert_close(out, sum((p.grad.double() ** 2).sum() for p in params).float().reshape(1))


def test_rebinding_a_slot_reuses_its_device_offsets():
    params = _randn(SHAPES, 0)
    table = tb.Table(params)
    table.bind("m", _randn(SHAPES, 1))
    vector = table.slot("m").offsets
    table.bind("m", _flat(SHAPES, 2, order=[1, 2, 0]))
    assert table.slot("m").offsets is vector, "a captured graph keeps reading the same device vector"
    table.bind_grads("m")  # rebinding replaces: now a grad slot
    with pytest.raises(RuntimeError, match="slot 'm' has not read its gradients yet"):
        table.slot("m")


# ----------------------------------------------------------------------------- layouts and classes

# channels_last (GC rows stay contiguous), a permuted 3-d tensor whose dim 0 stays outermost (GC
# too), a transposed matrix (dense, dim 0 innermost: no GC), and a contiguous vector
PERMUTED = [
    lambda g: torch.randn(8, 3, 3, 3, generator=g).to(memory_format=torch.channels_last),
    lambda g: torch.randn(5, 3, 4, generator=g).transpose(1, 2),
    lambda g: torch.randn(6, 4, generator=g).t(),
    lambda g: torch.randn(11, generator=g),
]


def _permuted(seed):
    gen = torch.Generator().manual_seed(seed)
    return [make(gen).to(DEVICE) for make in PERMUTED]


def _run_both(lists, op, *args, gc=None, offsets=None, **kwargs):
    results = []
    for impl in (tb, ref):
        copies = {name: [t.clone() for t in ts] for name, ts in lists.items()}  # clone keeps dense strides
        table = build_table(impl, copies, gc=gc, offsets=offsets)
        getattr(impl, op)(table, *args, **kwargs)
        results.append(copies)
    return results


def test_permuted_layouts_alike_in_every_slot_match_the_reference():
    params = _permuted(0)
    assert [p.is_contiguous() for p in params] == [False, False, False, True]
    gc = [True, True, False, False]
    assert [tb.serves(p, gc=True) for p in params] == [True, True, False, True]
    lists = {"param": params, "g": _permuted(1), "buf": _permuted(2)}
    got, want = _run_both(lists, "step_sgd_", "param", "g", "buf", gc=gc, lr=0.1, weight_decay=0.01, momentum=0.9,
                          dampening=0.0, nesterov=True, maximize=False, centralize=True)
    assert_lists_close(got["param"], want["param"])
    assert_lists_close(got["buf"], want["buf"])
    for x, y in zip(got["param"], params):
        assert x.stride() == y.stride()
    got, want = _run_both({"param": params}, "centralize_", "param", gc=gc)
    assert_lists_close(got["param"], want["param"])


@pytest.mark.parametrize("start", [0, 2**32 + 3])
def test_noise_follows_the_logical_order_of_permuted_tensors(start):
    """The reference draws element j for logical (row-major) index k; so does the kernel."""
    params = [torch.zeros_like(p) for p in _permuted(0)]
    got, want = _run_both({"param": params}, "noise_", "param", 1.0, offsets=offsets_of(params, start=start),
                          seed=7, step=5, sample=1)
    for a, b in zip(got["param"], want["param"]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


# GC rows of every kind: one element (CB 1), short rows sharing tiles, a (512, 128, 1, 1) weight,
# rows of 1000 (one per tile, several items), rows longer than a tile; a vector of two items
CLASSES = [(5, 1), (8, 3, 3, 3), (512, 128, 1, 1), (70, 1000), (3, 2500), (70000,)]


def test_every_gc_row_class_and_multi_item_tensor_match_the_reference():
    gen = torch.Generator().manual_seed(3)
    params = [torch.randn(s, generator=gen).to(DEVICE) for s in CLASSES]
    gc = [p.dim() > 1 for p in params]
    table = tb.Table(params, gc_rows=gc)
    assert table.block == 1024
    assert table.centralized.classes == (1 << 0) | (1 << 1) | (1 << 6) | (1 << 8) | (1 << 11) | (1 << 12)
    assert table.plain.count == 1 + 1 + 1 + 2 + 1 + 2  # chunks of 65536 elements
    assert table.gc_only.count == 1 + 1 + 1 + 2 + 1  # whole rows: 65 rows of 1000 per item
    gen = torch.Generator().manual_seed(4)
    lists = {"param": params, "g": [torch.randn(s, generator=gen).to(DEVICE) for s in CLASSES]}
    got, want = _run_both(lists, "perturb_", "param", "g", 0.3, gc=gc, centralize=True, adaptive=True)
    assert_lists_close(got["param"], want["param"])
    sums = []
    for impl in (tb, ref):
        out = torch.zeros(3, device=DEVICE)
        impl.sumsq(build_table(impl, dict(lists), gc=gc), "g", centralize=True, out=out,
                   epilogue=InvNorm(eps=1e-12, inv=1, inf=2))
        sums.append(out)
    torch.testing.assert_close(sums[0], sums[1], rtol=2e-5, atol=0)


def test_offsets_and_indices_beyond_two_to_the_31_elements():
    """64-bit addressing: a slot offset past 2**31 elements (two views of one 4 GiB buffer,
    never touched but where written), and element indices past 2**31 inside one tensor (only
    its last item is launched, the rest of the work is the same code)."""
    if DEVICE != "cpu":
        pytest.skip("a 4 GiB scratch buffer is cheap only on the CPU, where untouched pages cost nothing")
    huge = torch.empty(2**31 + 4096, dtype=torch.float16)
    far = [huge[:16], huge[2**31 + 64: 2**31 + 64 + 1000]]
    for x, seed in zip(far, (1, 2)):
        x.copy_(torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)))
    table = tb.Table(far)
    assert table.slot("param").host_offsets == [0, 2**31 + 64]
    out = torch.zeros(1)
    tb.sumsq(table, "param", out=out)
    torch.testing.assert_close(out, sum((x.double() ** 2).sum() for x in far).float().reshape(1))

    huge[-5000:].fill_(1.5)
    table = tb.Table([huge])
    last = table.plain.table.view(5, -1)[:, -1]
    assert last[1] == 2**31 and last[2] == 2**31 + 4096
    table.plain = Items(last.clone(), 1, 1, 1)
    tb.axpby_(table, "param", "param", 0.0, 2.0)
    assert bool((huge[-4096:] == 3.0).all()) and bool((huge[-5000:-4096] == 1.5).all())


def test_reductions_are_deterministic():
    params = _randn([(3000,), (17, 5), (70000,)], 7)
    table = tb.Table(params, gc_rows=[False, True, False])
    outs = []
    for _ in range(3):
        out = torch.zeros(1, device=DEVICE)
        tb.sumsq(table, "param", centralize=True, out=out)
        outs.append(out)
    assert all(torch.equal(outs[0], o) for o in outs[1:])


# ----------------------------------------------------------------------------- refusals and errors


def test_views_with_gaps_are_not_served():
    x = torch.randn(6, 8, device=DEVICE)
    assert tb.serves(x) and tb.serves(x.t())
    assert not tb.serves(x[:, ::2]) and not tb.serves(x[::2]) and not tb.serves(x[:, :4])
    assert not tb.serves(x.double()) and not tb.serves(torch.tensor(1.0, device=DEVICE), gc=True)


def _at_odd_byte(n):
    """n float32 elements two bytes past a 4-byte boundary (a view of a python buffer: torch
    itself makes no such tensor, so there is none on CUDA)."""
    if DEVICE != "cpu":
        pytest.skip("only a CPU buffer can put a float32 tensor at an odd address")
    return torch.frombuffer(bytearray(4 * n + 2), dtype=torch.float32, offset=2, count=n)


def _error_cases():
    x = _randn(SHAPES, 0)
    return {
        "gap": (lambda: tb.Table([x[0], x[0][:, ::2]]), ValueError,
                r"does not serve tensor 1: it is not dense \(shape \(4, 3\), strides \(6, 2\)\)"),
        "gc_transposed": (lambda: tb.Table([x[0].t()], gc_rows=[True]), ValueError,
                          r"dim 0 is not outermost in memory \(strides \(1, 6\)\), so GC rows are not contiguous"),
        "gc_0d": (lambda: tb.Table([torch.tensor(1.0, device=DEVICE)], gc_rows=[True]), ValueError,
                  r"tensor 0: it is 0-d \(GC needs a dim 0\)"),
        "fp64": (lambda: tb.Table([x[0].double()]), ValueError,
                 r"it is torch.float64 \(torch.strided\); served: torch.float32, torch.bfloat16, torch.float16"),
        "subclass": (lambda: tb.Table([x[0].as_subclass(type("Sub", (torch.Tensor,), {}))]), ValueError,
                     r"it is a Sub \(tensor subclasses are not served\)"),
        "mixed": (lambda: tb.Table([x[0], x[1].half()]), ValueError,
                  r"a table's tensors must share one dtype, got \['torch.float16', 'torch.float32'\]"),
        "gc_rows": (lambda: tb.Table(x, gc_rows=[True]), ValueError, r"gc_rows has 1 flags for 3 tensors"),
        "offsets": (lambda: tb.Table(x, offsets=[0]), ValueError, r"offsets has 1 entries for 3 tensors"),
        "bind_length": (lambda: tb.Table(x).bind("m", x[:2]), ValueError, r"m has 2 tensors for 3"),
        "bind_numel": (lambda: tb.Table(x).bind("m", [x[0], x[0], x[2]]), ValueError,
                       rf"m\[1\] \(24 elements on {DEVICE}\S*\) does not match tensor 1 \(7 elements on {DEVICE}"),
        "bind_layout": (lambda: tb.Table(x).bind("m", [torch.randn(6, 4, device=DEVICE).t(), x[1], x[2]]),
                        ValueError, r"m\[0\] is laid out as \(\(4, 6\), \(1, 4\)\), tensor 0 as contiguous: "
                                    r"the triton backend needs every slot laid out alike"),
        "bind_dtype": (lambda: tb.Table(x).bind("m", [x[0], x[1].half(), x[2]]), ValueError,
                       r"m mixes dtypes torch.float32 and torch.float16 \(m\[1\]\); a slot has one dtype"),
        "bind_fp64": (lambda: tb.Table(x).bind("m", [t.double() for t in x]), ValueError,
                      r"m\[0\] is torch.float64 \(torch.strided\); served"),
        "bind_none": (lambda: tb.Table(x).bind("m", [x[0], None, x[2]]), ValueError,
                      r"m\[1\] is None \(parameter 1 has no gradient\)"),
        "bind_odd_address": (lambda: tb.Table(x).bind("m", [x[0], _at_odd_byte(7), x[2]]), ValueError,
                             r"m\[1\] is not a whole number of elements away from m\[0\]"),
        "scalars": (lambda: tb.Table(x).bind_scalars("steps", [torch.zeros(1, device=DEVICE)] * 2 + [torch.zeros(2, device=DEVICE)]),
                    ValueError, rf"steps\[2\] must be a one-element float32 tensor on {DEVICE}"),
        "scalars_length": (lambda: tb.Table(x).bind_scalars("steps", []), ValueError, r"steps has 0 tensors for 3"),
        "no_slot": (lambda: tb.Table(x).slot("m"), ValueError, r"no slot named 'm' is bound to this table"),
        "noise_offsets": (lambda: tb.noise_(tb.Table(x), "param", 1.0, seed=0, step=0, sample=0), ValueError,
                          r"noise_ needs a table built with offsets"),
        "seed": (lambda: tb.philox(4, seed=-1, step=0, sample=0, offset=0, device=DEVICE), ValueError,
                 r"seed must be in \[0, 2\*\*64\), got -1"),
        "reduce": (lambda: tb.axpby_(tb.Table(x), "param", "param", 1.0, 1.0, reduce="z"), ValueError,
                   r"reduce must be None, 'x' or 'y', got 'z'"),
        "reduce_out": (lambda: tb.axpby_(tb.Table(x), "param", "param", 1.0, 1.0, reduce="x"), ValueError,
                       r"axpby_ with reduce='x' needs out"),
        "epilogue": (lambda: tb.sumsq(tb.Table(x), "param", out=torch.zeros(1, device=DEVICE), epilogue="norm"),
                     TypeError,
                     r"unknown epilogue 'norm'"),
    }


@pytest.mark.parametrize("case", list(_error_cases()))
def test_errors_say_what_is_wrong(case):
    call, error, message = _error_cases()[case]
    with pytest.raises(error, match=message):
        call()


def test_a_table_spans_one_device():
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"a table's tensors must share one device, got \['cpu', 'meta'\]"):
            tb.Table([torch.zeros(2), torch.zeros(2, device="meta")])
    else:
        with pytest.raises(ValueError, match=r"a table's tensors must share one device"):
            tb.Table([torch.zeros(2, device="cuda"), torch.zeros(2)])


# ----------------------------------------------------------------------------- devices and streams


class _FakeStream:
    def __init__(self, number):
        self.cuda_stream, self.waited = number, []

    def wait_stream(self, other):
        self.waited.append(other.cuda_stream)


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch's CUDA stream and device queries answered by fakes, to check on a machine without
    a GPU what a table does when the current stream or device is not the one it last used."""
    state = {"stream": 1, "device": 0, "capturing": False, "recorded": [], "guards": []}
    streams = {n: _FakeStream(n) for n in (1, 2, 3)}
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda index: state["stream"], raising=False)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda index=None: streams[state["stream"]])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: state["device"])
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: state["capturing"])
    monkeypatch.setattr(torch.cuda, "device", lambda index: state["guards"].append(index) or contextlib.nullcontext())
    monkeypatch.setattr(torch.Tensor, "record_stream",
                        lambda self, stream: state["recorded"].append((self.data_ptr(), stream.cuda_stream)))
    state["streams"] = streams
    return state


def _as_if_on_cuda(table, index):
    table.device, table._cuda, table._index = torch.device("cuda", index), True, index
    return table


def test_a_table_follows_the_current_stream(fake_cuda):
    table = tb.Table(_randn(SHAPES, 0))
    table.bind("m", _randn(SHAPES, 1))
    _as_if_on_cuda(table, 0)
    owned = {t.data_ptr() for t in (table._work, table.partials, table.slot("param").offsets, table.slot("m").offsets)}
    streams = fake_cuda["streams"]
    with table.launching():
        pass
    assert {ptr for ptr, s in fake_cuda["recorded"]} == owned and streams[1].waited == []
    fake_cuda["recorded"].clear()
    with table.launching():  # same stream: nothing to do
        pass
    assert fake_cuda["recorded"] == []
    fake_cuda["stream"] = 2
    with table.launching():  # a new stream waits for the old one, then claims the table's tensors
        pass
    assert streams[2].waited == [1]
    assert sorted(fake_cuda["recorded"]) == sorted((ptr, 2) for ptr in owned)
    fake_cuda["stream"], fake_cuda["capturing"] = 3, True
    with table.launching():  # torch.cuda.graph synchronized before capturing: no wait
        pass
    assert streams[3].waited == []


def test_a_launch_runs_under_the_tables_device_only_when_it_is_not_current(fake_cuda):
    table = _as_if_on_cuda(tb.Table(_randn(SHAPES, 0)), 1)
    fake_cuda["device"] = 1
    with table.launching():
        pass
    assert fake_cuda["guards"] == []
    fake_cuda["device"] = 0
    with table.launching():
        pass
    assert fake_cuda["guards"] == [1]


def test_no_upload_while_capturing(fake_cuda):
    """bind (like refresh) uploads offsets; a graph would replay that copy from a freed buffer."""
    table = _as_if_on_cuda(tb.Table(_randn(SHAPES, 0)), 0)
    fake_cuda["capturing"] = True
    with pytest.raises(RuntimeError, match=r"a table would be rebuilt during CUDA graph capture \(its offsets "
                                           r"uploaded\); bind and refresh before capturing"):
        table._upload([0, 24, 31])


@pytest.mark.gpu
def test_a_table_used_on_another_stream_gives_the_same_result():
    table, want = _sgd_tables(_flat(SHAPES, 2))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        _sgd(tb, table)
        for p, g in zip(table.tensors, _flat(SHAPES, 3, order=[2, 1, 0])):
            p.grad = g
        table.refresh()  # uploads on the side stream
    _sgd(tb, table)  # back on the default stream: waits for the side stream first
    _sgd(ref, want)
    for p, g in zip(want.tensors, _flat(SHAPES, 3, order=[2, 1, 0])):
        p.grad = g
    want.refresh()
    _sgd(ref, want)
    torch.cuda.synchronize()
    assert_lists_close(table.get("param"), want.get("param"))


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_bucket_on_another_device_launches_there():
    with torch.cuda.device(1):
        params = [torch.randn(s, device="cuda:1") for s in SHAPES]
    table = tb.Table(params)
    out = torch.zeros(1, device="cuda:1")
    with torch.cuda.device(0):
        tb.sumsq(table, "param", out=out)
    torch.testing.assert_close(out, sum((p.double() ** 2).sum() for p in params).float().reshape(1))
