"""The native CUDA kernels (regattn._cuda).

Without a GPU, every kernel runs in numba's CUDA simulator, in this process: the
CPU tensors given to ``regattn._cuda`` launch the same kernels, whose shells and
thread functions run as Python, one thread per row, and call the row functions
compiled for the CPU. So the simulator checks the kernels' launch, indexing,
scratch rows, masks, dtype conversions and torch-facing layout code against the CPU
kernels, bit for bit; the code compiled for CUDA needs numba's CUDA target with NVVM
(the PTX test) or a device (the tests at the end, skipped without one).
"""

import contextlib
import math
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CASE_IDS, CASES

import regattn
from regattn import _cpu, _cuda
from regattn import functional as F

KINDS = {
    "sparsemax": _cpu.SPARSEMAX,
    "fusedmax": _cpu.FUSEDMAX,
    "oscarmax": _cpu.OSCARMAX,
    "sq_pnorm_max": _cpu.SQ_PNORM_MAX,
    "entmax15": _cpu.ENTMAX15,
}
MAPS = [(name, params) for name, params in CASES if name in KINDS]
MAP_IDS = [i for (name, _), i in zip(CASES, CASE_IDS, strict=True) if name in KINDS]
LENGTHS = [1, 2, 7, 64, 300]
GAMMA = 0.7
HAS_CUDA = torch.cuda.is_available()


def kind_and_param(name, params):
    return KINDS[name], float(params.get("lam", params.get("p", 0.0)))


def random_mask(shape, generator):
    mask = torch.rand(shape, generator=generator) > 0.3
    mask[0] = False  # a fully masked row
    return mask


def run_both(scores, dim, mask, kind, param, grad_output):
    """Forward and VJP through regattn._cuda (the simulator on CPU tensors) and
    through the CPU kernels of regattn.functional."""
    y, saved_y, aux = _cuda.kernel_forward(scores, dim, mask, kind, GAMMA, param, True)
    grad = _cuda.kernel_backward(saved_y, aux, grad_output, dim, kind, GAMMA, param)
    y_cpu, saved_cpu, aux_cpu = F.kernel_forward(scores, dim, mask, kind, GAMMA, param, True)
    grad_cpu = F.kernel_backward(saved_cpu, aux_cpu, grad_output, dim, kind, GAMMA, param)
    return (y, aux, grad), (y_cpu, aux_cpu, grad_cpu)


def assert_same(got, expected):
    (y, aux, grad), (y_cpu, aux_cpu, grad_cpu) = got, expected
    assert isinstance(aux, torch.Tensor) and aux.dtype == torch.int32  # stays on the device
    assert y.dtype == y_cpu.dtype and grad.dtype == grad_cpu.dtype
    torch.testing.assert_close(y, y_cpu, rtol=0, atol=0, equal_nan=True)
    np.testing.assert_array_equal(aux.numpy(), aux_cpu)
    torch.testing.assert_close(grad, grad_cpu, rtol=0, atol=0, equal_nan=True)


# --------------------------------------------------------------- the simulator


@pytest.mark.parametrize(("name", "params"), MAPS, ids=MAP_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", LENGTHS)
def test_kernels_match_the_cpu_kernels(name, params, dtype, d):
    kind, param = kind_and_param(name, params)
    generator = torch.Generator().manual_seed(d)
    rows = 9 if d >= 64 else 40
    x = 2 * torch.randn(rows, d, generator=generator, dtype=dtype)
    g = torch.randn(rows, d, generator=generator, dtype=dtype)
    assert_same(*run_both(x, 1, None, kind, param, g))
    assert_same(*run_both(x, 1, random_mask((rows, d), generator), kind, param, g))


def special_rows(d, dtype):
    """Rows of length d that take each special path of the kernels."""
    big = 1e300 if dtype == torch.float64 else 3e38
    inf, nan = math.inf, math.nan
    i = np.arange(d)
    t = np.linspace(0, 1, d)
    rows = [
        np.full(d, -inf),  # all masked by -inf
        np.where(i % 3 == 0, -inf, t),  # some -inf
        np.where(i == d // 2, inf, t),  # one +inf
        np.where(i % 2 == 0, inf, -t),  # several +inf
        np.where(i == d - 1, nan, t),  # NaN, confined to its row
        np.where(i % 2 == 0, big, -big),  # huge finite scores
        np.where(i == 0, big, big / 2),
        np.full(d, 3.0),  # all equal
        t,  # a ramp: Condat's sweep gives up, Johnson's programme solves it
        np.where(i == 0, 0.0, -0.5 + 1e-9 * np.sin(7 * t)),  # the argsort's fallback
    ]
    return torch.tensor(np.stack(rows), dtype=dtype)


@pytest.mark.parametrize(("name", "params"), MAPS, ids=MAP_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", [1, 7, 300])
def test_special_values_match_the_cpu_kernels(name, params, dtype, d):
    kind, param = kind_and_param(name, params)
    x = special_rows(d, dtype)
    g = torch.randn(x.shape, dtype=dtype)
    got, expected = run_both(x, 1, None, kind, param, g)
    assert_same(got, expected)
    y, _, grad = got
    assert y[4].isnan().all() and grad[4].isnan().all()
    assert not y[torch.arange(len(x)) != 4].isnan().any()  # the NaN stays in its row
    mask = torch.ones(x.shape, dtype=torch.bool)
    mask[7] = False  # a fully masked row among special ones
    assert_same(*run_both(x, 1, mask, kind, param, g))


@pytest.mark.parametrize("name", list(KINDS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_are_computed_in_float32(name, dtype):
    kind, param = kind_and_param(name, {})
    x = torch.randn(12, 7, dtype=dtype)
    g = torch.randn(12, 7, dtype=dtype)
    assert_same(*run_both(x, 1, torch.rand(12, 7) > 0.3, kind, param, g))


@pytest.mark.parametrize("name", list(KINDS))
def test_layouts_match_the_cpu_kernels(name):
    """Rows along dim 0 (a transposed view), along a middle dim (a moved copy), a
    broadcast mask (zero strides) and a non-contiguous input."""
    kind, param = kind_and_param(name, {})
    x = torch.randn(4, 7, 5, dtype=torch.float64)
    g = torch.randn(4, 7, 5, dtype=torch.float64)
    mask = torch.rand(7, 1) > 0.3
    for dim in (0, 1, 2):
        assert_same(*run_both(x, dim, mask.expand(4, 7, 5), kind, param, g))
    for dim in (0, 2):  # neither contiguous nor dense
        assert_same(*run_both(x[:, ::2, 1:], dim, None, kind, param, g[:, ::2, 1:]))
    assert_same(*run_both(x[0].T, 1, None, kind, param, g[0].T))  # rows down the columns


@pytest.mark.parametrize("name", list(KINDS))
def test_empty_inputs(name):
    kind, param = kind_and_param(name, {})
    for shape in [(0, 5), (4, 0)]:
        x = torch.randn(shape, dtype=torch.float64)
        assert_same(*run_both(x, 1, None, kind, param, torch.randn(shape, dtype=torch.float64)))


def test_saved_y_does_not_see_in_place_changes():
    x = torch.randn(5, 6, dtype=torch.float64)
    y, saved_y, _ = _cuda.kernel_forward(x, 1, None, _cpu.SPARSEMAX, 1.0, 0.0, True)
    expected = y.clone()
    y.zero_()
    torch.testing.assert_close(saved_y, expected, rtol=0, atol=0)


# ------------------------------------------------- the route from regattn.functional


@contextlib.contextmanager
def cuda_route():
    """CPU tensors that say they are on CUDA: regattn.functional routes them to
    regattn._cuda, which runs them in the simulator. The CPU kernels must not run,
    and nothing may fall back (a warning is an error). Yields the list of the calls
    made to regattn._cuda."""
    calls = []
    forward, backward = _cuda.kernel_forward, _cuda.kernel_backward

    def spy_forward(*args):
        calls.append("forward")
        return forward(*args)

    def spy_backward(*args):
        calls.append("backward")
        return backward(*args)

    def no_cpu_kernel(*args):
        raise AssertionError("a CPU kernel ran for a CUDA tensor")

    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        warnings.simplefilter("error")
        patch.setattr(_cuda, "_failure", None)
        patch.setattr(_cuda, "kernel_forward", spy_forward)
        patch.setattr(_cuda, "kernel_backward", spy_backward)
        patch.setattr(F, "_run_kernel", no_cpu_kernel)
        patch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
        yield calls


@pytest.mark.parametrize(("name", "params"), MAPS, ids=MAP_IDS)
def test_cuda_tensors_take_the_native_route(name, params):
    f = regattn.get_mapping(name, **params)
    x = torch.randn(3, 6, 9, dtype=torch.float64)
    mask = torch.rand(6, 1) > 0.3
    g = torch.randn(3, 6, 9, dtype=torch.float64)
    expected_x = x.clone().requires_grad_()
    expected = f(expected_x, dim=1, mask=mask)
    expected.backward(g)
    expected_inference = f(x.half(), dim=-1)
    got_x = x.clone().requires_grad_()
    with cuda_route() as calls:
        got = f(got_x, dim=1, mask=mask)
        got.backward(g)
        inference = f(x.half(), dim=-1)
    assert calls == ["forward", "backward", "forward"]
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(got_x.grad, expected_x.grad, rtol=0, atol=0)
    torch.testing.assert_close(inference, expected_inference, rtol=0, atol=0)


def test_a_kernel_that_cannot_run_falls_back_with_one_warning(monkeypatch):
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 5, dtype=torch.float64)
    expected = regattn.fusedmax(x, lam=0.3)
    (expected_grad,) = torch.autograd.grad(expected, x, g)

    def no_nvvm(function, simulated):
        raise RuntimeError("libNVVM cannot be found")

    monkeypatch.setattr(_cuda, "_failure", None)
    monkeypatch.setattr(_cuda, "_kernel", no_nvvm)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    with pytest.warns(RuntimeWarning, match="CUDA kernels cannot run.*libNVVM") as record:
        y = regattn.fusedmax(x, lam=0.3)
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        (grad,) = torch.autograd.grad(regattn.fusedmax(x, lam=0.3), x, g)
        regattn.sparsemax(x)
    monkeypatch.undo()
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=0)


def test_a_backward_that_cannot_run_falls_back_to_the_cpu(monkeypatch):
    """The forward ran on the device (its state is device tensors); the backward
    kernel fails: the state goes to the host and the CPU backward computes."""
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 5, dtype=torch.float64)
    (expected,) = torch.autograd.grad(regattn.entmax15(x), x, g)
    monkeypatch.setattr(_cuda, "_failure", None)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    y = regattn.entmax15(x)

    def launch_fails(*args):
        raise RuntimeError("launch failed")

    monkeypatch.setattr(_cuda, "launch_backward", launch_fails)
    with pytest.warns(RuntimeWarning, match="entmax15 backward"):
        (grad,) = torch.autograd.grad(y, x, g)
    monkeypatch.undo()
    torch.testing.assert_close(grad, expected, rtol=0, atol=0)


def test_out_of_memory_is_not_a_fallback(monkeypatch):
    def full(*args):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(_cuda, "_failure", None)
    monkeypatch.setattr(_cuda, "kernel_forward", full)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    with pytest.raises(torch.OutOfMemoryError):
        regattn.sparsemax(torch.randn(3, 4))
    assert _cuda._failure is None


# ------------------------------------------------------------ compiled for CUDA


def _nvvm_available():
    try:
        from numba import cuda

        if cuda.implementation != "NVIDIA":  # the pinned numba-cuda of the cuda extra
            return False
        from numba.cuda.cudadrv import nvvm

        nvvm.NVVM()
        return True
    except Exception:
        return False


@pytest.mark.skipif(HAS_CUDA, reason="a CUDA device runs the compiled kernels below")
@pytest.mark.skipif(not _nvvm_available(), reason="needs numba-cuda and NVVM (extra 'cuda')")
def test_every_kernel_compiles_to_ptx(monkeypatch):
    """Compile-only check of the CUDA target (numba-cuda with NVVM, no device):
    every kernel shell with the thread and row functions it calls. Device functions
    ask for the current device's compute capability; a fixed one stands in."""
    from numba import cuda
    from numba import types as nb
    from numba.cuda import dispatcher

    monkeypatch.setattr(
        dispatcher, "get_current_device", lambda: types.SimpleNamespace(compute_capability=(8, 0))
    )
    _cuda._load()
    numba_dtype = {torch.float64: nb.float64, torch.int64: nb.int64, torch.int32: nb.int32}
    for dtype, layout, mask in [(nb.float32, "C", nb.none), (nb.float64, "A", nb.boolean[:, :])]:
        rows = nb.Array(dtype, 2, layout)
        for kind, function in _cuda.FORWARD.items():
            scratch = [nb.Array(numba_dtype[t], len(s) + 1, "C")
                       for t, s in _cuda.forward_scratch(kind, 8)]  # fmt: skip
            signature = (rows, mask, rows, nb.int32[:, :], nb.float64, nb.float64, *scratch)
            assert ".entry" in cuda.compile_ptx(function, signature, cc=(8, 0))[0]
        for kind, function in _cuda.BACKWARD.items():
            scratch = [nb.float64[:, :, ::1] for _ in _cuda.backward_scratch(kind, 8)]
            signature = (rows, nb.int32[:, :], rows, rows, nb.float64, nb.float64, *scratch)
            assert ".entry" in cuda.compile_ptx(function, signature, cc=(8, 0))[0]


# ------------------------------------------------------------------- bench_ops


@pytest.mark.skipif(HAS_CUDA, reason="the message is for machines without a CUDA device")
def test_bench_ops_on_cuda_says_clearly_that_there_is_no_device(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_ops.py"
    run = subprocess.run(
        [sys.executable, str(script), "--device", "cuda", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert "--device cuda needs a CUDA device" in run.stderr
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------- on a real device

cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


@cuda_only
@pytest.mark.parametrize(("name", "params"), MAPS, ids=MAP_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_device_kernels_match_the_cpu(name, params, dtype):
    f = regattn.get_mapping(name, **params)
    # Rounding differences only (the device contracts a * b + c into fused multiply-
    # adds): one unit in the last place of the stored dtype.
    atol, grad_atol = {
        torch.float32: (1e-6, 1e-5), torch.float64: (1e-12, 1e-10), torch.bfloat16: (1e-2, 3e-2)
    }[dtype]  # fmt: skip
    for d in LENGTHS + [4096]:
        rows = 4 if d == 4096 else 50
        x = (2 * torch.randn(rows, d, dtype=torch.float64)).to(dtype)
        mask = random_mask((rows, d), torch.Generator().manual_seed(d))
        g = torch.randn(rows, d, dtype=dtype)
        x_cpu = x.clone().requires_grad_()
        y_cpu = f(x_cpu, mask=mask)
        y_cpu.backward(g)
        x_gpu = x.cuda().requires_grad_()
        y_gpu = f(x_gpu, mask=mask.cuda())
        y_gpu.backward(g.cuda())
        assert y_gpu.device == x_gpu.device and x_gpu.grad.device == x_gpu.device
        torch.testing.assert_close(y_gpu.cpu(), y_cpu, rtol=0, atol=atol)
        torch.testing.assert_close(x_gpu.grad.cpu(), x_cpu.grad, rtol=0, atol=grad_atol)
    assert _cuda._failure is None


@cuda_only
@pytest.mark.parametrize(("name", "params"), MAPS, ids=MAP_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_device_special_values_match_the_cpu(name, params, dtype):
    kind, param = kind_and_param(name, params)
    for d in (1, 7, 300):
        x = special_rows(d, dtype)
        y, saved_y, aux = F.kernel_forward(x.cuda(), 1, None, kind, GAMMA, param, True)
        assert aux.is_cuda
        y_cpu, _, _ = F.kernel_forward(x, 1, None, kind, GAMMA, param, True)
        tolerance = 1e-12 if dtype == torch.float64 else 1e-6
        torch.testing.assert_close(y.cpu(), y_cpu, rtol=0, atol=tolerance, equal_nan=True)
    assert _cuda._failure is None


@cuda_only
@pytest.mark.parametrize("name", list(KINDS))
def test_device_broadcast_mask_and_gradient(name):
    """Zero strides reach the kernels: a mask broadcast over the rows and a gradient
    expanded from one row; rows along dim 0 (a transposed view)."""
    f = regattn.get_mapping(name)
    x = torch.randn(9, 33, dtype=torch.float64)
    mask = torch.rand(9, 1) > 0.3
    g = torch.randn(9, 1, dtype=torch.float64)
    for dim in (0, 1):
        x_cpu, x_gpu = x.clone().requires_grad_(), x.cuda().requires_grad_()
        f(x_cpu, dim=dim, mask=mask).backward(g.expand(9, 33))
        y_gpu = f(x_gpu, dim=dim, mask=mask.cuda())
        y_gpu.backward(g.cuda().expand(9, 33))
        torch.testing.assert_close(y_gpu.detach().cpu(), f(x, dim=dim, mask=mask), rtol=0,
                                   atol=1e-12)  # fmt: skip
        torch.testing.assert_close(x_gpu.grad.cpu(), x_cpu.grad, rtol=0, atol=1e-10)
    assert _cuda._failure is None


@cuda_only
@pytest.mark.parametrize(("name", "params"), MAPS, ids=MAP_IDS)
def test_device_gradcheck(name, params):
    f = regattn.get_mapping(name, **params)
    x = 2 * torch.randn(5, 4, 7, dtype=torch.float64, device="cuda", requires_grad=True)
    mask = torch.rand(5, 4, 7, device="cuda") > 0.3
    for dim in (0, -1):
        assert torch.autograd.gradcheck(lambda t, dim=dim: f(t, dim=dim, mask=mask), (x,),
                                        atol=1e-6)  # fmt: skip
    assert _cuda._failure is None


@cuda_only
@pytest.mark.parametrize("name", list(KINDS))
def test_device_calls_do_not_wait_and_follow_the_stream(name):
    """A call returns while the device is still busy with earlier work (no
    synchronisation), and its kernels run after that work on torch's current
    stream (they see its result), here a side stream."""
    f = regattn.get_mapping(name)

    def forward_backward(scores):
        y = f(scores.requires_grad_())
        y.backward(torch.ones_like(y))
        return y

    x = torch.randn(256, 64, device="cuda")
    forward_backward(x.clone())  # compiles (or loads) the kernels of these signatures
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())  # x is ready there too
    with torch.cuda.stream(stream):
        start = time.perf_counter()
        torch.cuda._sleep(2_000_000_000)  # about a second of device time
        y = forward_backward(x + 1.0)  # x + 1 is queued behind the sleep
        host_s = time.perf_counter() - start
    stream.synchronize()
    busy_s = time.perf_counter() - start
    assert host_s < 0.5 * busy_s, (host_s, busy_s)
    torch.testing.assert_close(y.detach().cpu(), f(x.cpu() + 1.0), rtol=0, atol=1e-6)
    assert _cuda._failure is None
