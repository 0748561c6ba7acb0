"""Inputs and call patterns that once broke the operators: huge scores, slowly
varying and nearly equal rows (the worst cases of the TV sweep and of the sort),
in-place operations on outputs, parameters passed by position or as tensors,
fork after a parallel call, and concurrent calls from several threads."""

import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import case_params

import regattn
from regattn import _cpu

SPARSE = ["sparsemax", "fusedmax", "oscarmax", "sq_pnorm_max", "entmax15"]


def apply(name, params, scores, **kwargs):
    return regattn.get_mapping(name, **params)(scores, **kwargs)


# ---------------------------------------------------------------------- huge scores


@case_params()
@pytest.mark.parametrize(
    ("dtype", "big"), [(torch.float64, 1e300), (torch.float64, 1e17), (torch.float32, 3e38)]
)
def test_huge_scores_give_finite_distributions_and_gradients(name, params, dtype, big):
    x = torch.tensor(
        [[big, big / 2, 0.0], [big, big, -big], [big, -big, big], [-big, -big, -big]], dtype=dtype
    ).requires_grad_()
    y = apply(name, params, x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.sum(-1), torch.ones(4, dtype=dtype))
    expected = torch.tensor(
        [[1, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [1 / 3, 1 / 3, 1 / 3]], dtype=dtype
    )
    torch.testing.assert_close(y, expected)
    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", SPARSE)
def test_one_huge_row_does_not_abort_a_parallel_batch(name):
    x = torch.randn(4096, 64, dtype=torch.float64)  # above the parallel threshold
    x[7] *= 1e17
    x[9] = float("nan")
    y = apply(name, {}, x)
    assert torch.isfinite(y[7]).all() and y[9].isnan().all()
    # The other rows are what the serial path gives them.
    torch.testing.assert_close(y[:7], apply(name, {}, x[:7].clone()), rtol=0, atol=0)
    torch.testing.assert_close(y[10:500], apply(name, {}, x[10:500].clone()), rtol=0, atol=0)


@case_params()
def test_large_shift_changes_nothing(name, params):
    x = torch.randn(5, 12, dtype=torch.float64)
    torch.testing.assert_close(apply(name, params, x + 1e6), apply(name, params, x), atol=1e-8,
                               rtol=0)  # fmt: skip


# -------------------------------------------------------------- linear worst cases


def _tv(y, lam, solver):
    n = y.size
    z, seg = np.empty(n), np.empty(n, dtype=np.int32)
    if solver == "condat":
        assert _cpu._tv_prox_condat(y, n, lam, z, seg, 10 * n * n + 100)
    else:
        _cpu._tv_prox_dp(y, n, lam, z, seg, np.empty((3, 2 * n + 2)), np.empty((2, n)))
    return z, seg


def _rows(rng, n):
    t = np.linspace(0, 1, n)
    return {
        "randn": rng.standard_normal(n),
        "ramp": t,
        "sine": np.sin(6 * t),
        "steps": np.round(3 * rng.standard_normal(n)) / 3,
        "noisy ramp": t + 0.01 * rng.standard_normal(n),
    }


@pytest.mark.parametrize("lam", [1e-3, 0.05, 0.3, 2.0, 50.0])
@pytest.mark.parametrize("n", [1, 2, 3, 17, 200])
def test_tv_dynamic_programme_matches_condat(n, lam):
    """Johnson's DP (the linear worst-case fallback) and Condat's sweep solve the same
    problem: same values, same segments."""
    rng = np.random.default_rng(n)
    for kind, y in _rows(rng, n).items():
        z_dp, seg_dp = _tv(y, lam, "dp")
        z_condat, seg_condat = _tv(y, lam, "condat")
        np.testing.assert_allclose(z_dp, z_condat, rtol=0, atol=1e-12, err_msg=kind)
        if kind != "steps":  # round scores can tie exactly: fused or not by rounding
            np.testing.assert_array_equal(seg_dp, seg_condat, err_msg=kind)


def test_tv_dynamic_programme_matches_the_qp():
    from reference import fusedmax as reference_fusedmax

    rng = np.random.default_rng(3)
    for y in _rows(rng, 25).values():
        x = torch.tensor(y)
        expected, _ = reference_fusedmax(y, lam=0.05)
        torch.testing.assert_close(regattn.fusedmax(x, lam=0.05), torch.tensor(expected),
                                   atol=1e-6, rtol=0)  # fmt: skip
        z, _ = _tv(y, 0.05, "dp")  # the prox the fallback computes, then sparsemax
        torch.testing.assert_close(regattn.sparsemax(torch.tensor(z)), torch.tensor(expected),
                                   atol=1e-6, rtol=0)  # fmt: skip


def test_condat_gives_up_on_a_ramp_and_fusedmax_still_exact():
    n = 3000
    y = np.linspace(0, 30, n)
    z, seg = np.empty(n), np.empty(n, dtype=np.int32)
    assert not _cpu._tv_prox_condat(y, n, 0.1, z, seg, 4 * n + 16)  # the hybrid switches
    x = torch.tensor(y)
    z_dp, _ = _tv(y, 0.1, "dp")
    torch.testing.assert_close(regattn.fusedmax(x, lam=0.1), regattn.sparsemax(torch.tensor(z_dp)))


@pytest.mark.parametrize("m", [30, 300, 4096])
@pytest.mark.parametrize(
    "kind", ["randn", "nearly equal 1e-9", "nearly equal 1e-6 f32", "ties", "sorted", "reversed"]
)
def test_argsort_is_a_descending_sort_on_every_kind_of_row(m, kind):
    rng = np.random.default_rng(m)
    vals = {
        "randn": rng.standard_normal(m),
        "nearly equal 1e-9": 1 + 1e-9 * rng.standard_normal(m),
        "nearly equal 1e-6 f32": (1 + 1e-6 * rng.standard_normal(m)).astype(np.float32),
        "ties": rng.integers(0, 3, m).astype(np.float64),
        "sorted": np.sort(rng.standard_normal(m)),
        "reversed": np.sort(rng.standard_normal(m))[::-1].copy(),
    }[kind].astype(np.float64)
    order = np.empty(m, dtype=np.int64)
    keys, spare = np.empty(m, dtype=np.int64), np.empty(m, dtype=np.int64)
    _cpu._argsort_desc(vals, m, order, keys, spare, np.empty((4, 256), dtype=np.int64))
    assert sorted(order) == list(range(m))
    assert (np.diff(vals[order]) <= 0).all()


def test_oscarmax_on_nearly_equal_scores_matches_the_qp():
    from reference import oscarmax as reference_oscarmax

    rng = np.random.default_rng(0)
    x = 1 + 1e-3 * rng.standard_normal(40)
    expected, _ = reference_oscarmax(x, lam=1e-5)
    torch.testing.assert_close(regattn.oscarmax(torch.tensor(x), lam=1e-5),
                               torch.tensor(expected), atol=1e-6, rtol=0)  # fmt: skip


# ------------------------------------------------------------ outputs and arguments


@case_params()
@pytest.mark.parametrize("dim", [-1, 0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_in_place_ops_on_outputs_keep_gradients_right(name, params, dim, dtype):
    x = torch.randn(6, 7, dtype=dtype, requires_grad=True)
    keep = torch.rand(6, 7) > 0.3
    weights = torch.randn(6, 7, dtype=dtype)

    y = apply(name, params, x, dim=dim)
    y.masked_fill_(~keep, 0.0)  # in place on the output
    F.dropout(y, p=0.0, training=True, inplace=True)
    if name == "softmax":
        # torch.softmax's backward uses its output, and autograd says so; never wrong.
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            (y * weights).sum().backward()
        return
    (y * weights).sum().backward()
    in_place_grad = x.grad.clone()

    x.grad = None
    (apply(name, params, x, dim=dim).masked_fill(~keep, 0.0) * weights).sum().backward()
    torch.testing.assert_close(in_place_grad, x.grad)


@pytest.mark.parametrize("name", list(regattn.MAPPINGS))
def test_parameters_after_dim_are_keyword_only(name):
    f = regattn.MAPPINGS[name]
    x = torch.randn(3, 4)
    with pytest.raises(TypeError, match="positional"):
        f(x, -1, 1.0)
    with pytest.raises(TypeError, match="positional"):
        f(x, -1, x > 0)  # a mask by position cannot land in a parameter


def test_a_tensor_p_is_refused_with_a_clear_message():
    """gamma and lam may be tensors (tests/test_learnable.py); p may not."""
    with pytest.raises(TypeError, match=r"p must be a Python number.*tensors are not"):
        regattn.sq_pnorm_max(torch.randn(3, 4), p=torch.tensor(1.5))


# ----------------------------------------------------------- processes and threads


def test_fork_after_a_parallel_call_computes_in_the_child():
    """GNU OpenMP aborts a forked child of a process whose thread pool has started;
    the child must use the serial kernels and get the same results. (The child only
    runs regattn on inputs above regattn's parallel threshold: torch's own
    multithreaded ops can hang in such a child, which is why DataLoader workers set
    one thread.)"""
    script = textwrap.dedent(
        """
        import os, sys, numba, numpy as np, torch, regattn
        torch.set_num_threads(2)
        x = torch.randn(1024, 40, dtype=torch.float64)  # above the parallel threshold
        names = ["sparsemax", "fusedmax", "oscarmax", "sq_pnorm_max", "entmax15"]
        expected = {n: regattn.MAPPINGS[n](x).numpy().copy() for n in names}
        assert regattn.functional._parallel_used, "the parent did not run in parallel"
        print("threading layer", numba.threading_layer(), flush=True)
        pid = os.fork()
        if pid == 0:
            with torch.no_grad():  # (a gradient would need torch copies of x's size)
                same = [np.array_equal(regattn.MAPPINGS[n](x).numpy(), expected[n]) for n in names]
            small = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
            regattn.fusedmax(small).sum().backward()
            os._exit(0 if all(same) else 3)
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert "Terminating" not in done.stderr


@pytest.mark.parametrize("name", SPARSE)
def test_concurrent_calls_from_threads_match_serial_results(name):
    torch.manual_seed(0)
    inputs = [torch.randn(1024, 64, requires_grad=True) for _ in range(6)]  # parallel path

    def run(x):
        y = apply(name, {}, x)
        (grad,) = torch.autograd.grad((y * y).sum(), x)
        return y.detach(), grad

    expected = [run(x) for x in inputs]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(run, inputs))
    for (y, grad), (y_ref, grad_ref) in zip(results, expected, strict=True):
        assert torch.equal(y, y_ref) and torch.equal(grad, grad_ref)


@pytest.mark.parametrize("huge", [-3.4e38, -1e300, -1e12])
def test_tv_fallback_is_exact_beside_huge_scores(huge):
    """A huge score (masked_fill padding with the dtype's lowest value, say) beside a
    slowly varying run: Condat exhausts its budget, and the dynamic programme must
    not lose the run to rounding (it solves the blocks between certain jumps apart)."""
    y = np.concatenate([[huge], np.linspace(0, -3, 299), [huge], np.linspace(-1, 0, 150)])
    n = y.size
    z, seg = np.empty(n), np.empty(n, dtype=np.int32)
    assert not _cpu._tv_prox_condat(y, n, 0.1, z, seg, 4 * n + 16)  # the fallback runs
    _cpu._tv_prox(y, n, 0.1, z, seg, np.empty((3, 2 * n + 2)), np.empty((3, n)))
    z_condat, seg_condat = _tv(y, 0.1, "condat")
    np.testing.assert_allclose(z[1:], z_condat[1:], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(seg, seg_condat)
    x = torch.tensor(y)
    torch.testing.assert_close(
        regattn.fusedmax(x, lam=0.1), regattn.sparsemax(torch.tensor(z_condat)), rtol=0, atol=1e-9
    )


@case_params()
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_with_a_mask(name, params, dtype):
    x = torch.randn(3, 9)
    mask = torch.rand(3, 9) > 0.3
    mask[:, 0] = True
    y = apply(name, params, x.to(dtype), mask=mask)
    assert y.dtype == dtype and (y[~mask] == 0).all()
    torch.testing.assert_close(y.float(), apply(name, params, x.to(dtype).float(), mask=mask),
                               atol=1e-2, rtol=0)  # fmt: skip


@case_params()
def test_trailing_singleton_dims_give_an_ordinary_output(name, params):
    """scores of shape (B, T, 1) along dim 1 (Bahdanau-style): the output is not a view."""
    x = torch.randn(4, 6, 1, dtype=torch.float64, requires_grad=True)
    y = apply(name, params, x, dim=1)
    assert y._base is None
    weights = torch.randn_like(y)
    expected = torch.autograd.grad((apply(name, params, x, dim=1) * weights).sum(), x)[0]
    if name != "softmax":
        y.mul_(1.0)  # in place on the output
    (grad,) = torch.autograd.grad((y * weights).sum(), x)
    torch.testing.assert_close(grad, expected)
