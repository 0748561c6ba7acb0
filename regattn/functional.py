"""The regularized attention mappings, functional API.

Each mapping sends scores to probability distributions along ``dim``:

    y = argmax_{y in simplex} <y, x> - gamma * Omega(y)

(Niculae & Blondel, 2017). ``mask`` is a bool tensor broadcastable to the scores,
True where a position takes part; masked positions and ``-inf`` scores get exactly
0, receive no gradient and do not influence the others. Half-precision inputs are
computed in float32 and returned in their own dtype. CPU tensors run compiled
kernels (``regattn._cpu``), CUDA tensors the same algorithms compiled for the GPU
(``regattn._cuda``, with numba-cuda installed: the ``cuda`` extra), falling back to
the CPU kernels with one warning when those cannot run; softmax is PyTorch's on
every device.
"""

import functools
import inspect
import math
import numbers
import os

import numba
import numpy as np
import torch
from torch.autograd import forward_ad

from . import _cpu

_HALF_TYPES = (torch.float16, torch.bfloat16)
# Below this many scores one thread is faster than starting the parallel region.
_PARALLEL_MIN_NUMEL = 32768


# ----------------------------------------------------------------------- validation


def _check_number(name, value, allowed, ok):
    if isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name} must be a Python number ({allowed}); tensors are not accepted, got a "
            f"tensor of shape {tuple(value.shape)}: pass {name}=float(...) for a fixed value"
        )
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not ok(float(value)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return float(value)


def _check_tensor_param(name, value, allowed, ok):
    """A tensor parameter (learnable, one value per row): floating point, and
    ``ok`` elementwise. Its shape is checked against the scores at the call."""
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if value.numel() == 0 or _traced(value):  # a traced tensor has no values to check
        return value
    # Under a torch.func transform detach() returns a wrapped tensor, which numpy cannot
    # read: it keeps the torch check.
    values = value.detach()
    if values.device.type == "cpu" and not _traced(values):
        # numpy's elementwise operations cost a fraction of torch's on the few values
        # a parameter has (one per row), a sizeable part of a decoder step's call.
        good = ok(_numpy(values, torch.float64)).all()
    else:
        good = ok(values).all()  # one sync
    if not good:
        bad = values[~ok(values)][0].item()
        raise ValueError(
            f"{name} must be {allowed} elementwise, got a tensor of shape "
            f"{tuple(value.shape)} holding {bad!r}"
        )
    return value


def check_gamma(gamma):
    if isinstance(gamma, torch.Tensor):
        return _check_tensor_param(
            "gamma", gamma, "finite and > 0", lambda g: (g > 0) & (g < math.inf)
        )
    return _check_number("gamma", gamma, "a finite number > 0", lambda v: 0 < v < math.inf)


def check_lam(lam):
    if isinstance(lam, torch.Tensor):
        return _check_tensor_param(
            "lam", lam, "finite and >= 0", lambda v: (v >= 0) & (v < math.inf)
        )
    return _check_number("lam", lam, "a finite number >= 0", lambda v: 0 <= v < math.inf)


def check_p(p):
    return _check_number("p", p, "a number in (1, 2]", lambda v: 1 < v <= 2)


PARAM_CHECKS = {"gamma": check_gamma, "lam": check_lam, "p": check_p}


def _check_scores(scores, dim):
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if not scores.is_floating_point():
        raise TypeError(
            "scores must be a floating-point tensor (float16, bfloat16, float32 or "
            f"float64), got {scores.dtype}"
        )
    if scores.dim() == 0:
        raise ValueError("scores must have at least one dimension, got a 0-d tensor")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -scores.dim() <= dim < scores.dim():
        raise ValueError(
            f"dim must be an integer in [{-scores.dim()}, {scores.dim() - 1}] for scores "
            f"of shape {tuple(scores.shape)}, got {dim!r}"
        )
    return dim % scores.dim()


def _check_mask(mask, scores):
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        kind = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"mask must be a bool tensor (True = take part), got {kind}")
    if mask.device != scores.device:
        raise ValueError(
            f"mask is on {mask.device} but scores are on {scores.device}: put both on the "
            "same device"
        )
    if mask.shape == scores.shape:
        return mask
    try:  # expand applies the broadcasting rules to a target shape, and is cheap
        if mask.dim() > scores.dim():
            raise RuntimeError
        return mask.expand(scores.shape)
    except RuntimeError:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to scores of shape "
            f"{tuple(scores.shape)}"
        ) from None


# --------------------------------------------------------------------------- layout


def _compute_dtype(dtype):
    return torch.float32 if dtype in _HALF_TYPES else dtype


def _layout(shape, dim):
    """(outer, d, inner): the sizes before ``dim``, along it and after it."""
    return math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1 :])


def _input_rows(array, dim, layout):
    """``array`` (numpy) as (rows, d) with ``dim`` last, for a kernel to read: a view
    of it when the dims of size > 1 are all on one side of ``dim`` ((..., d) along
    the last dim, (d, batch) along the first), a copy otherwise."""
    outer, d, inner = layout
    if inner == 1:
        return array.reshape(outer, d)
    if outer == 1:
        return array.reshape(d, inner).T
    return np.moveaxis(array, dim, -1).reshape(outer * inner, d)


def _output_rows(shape, dim, layout, dtype):
    """A new tensor for a kernel to write through ``rows``, its (rows, d) numpy view.

    When such a view of a tensor of ``shape`` exists (see ``_input_rows``), the
    kernel writes the result in place; otherwise the tensor has ``dim`` moved last,
    and ``_finished`` moves it back (a copy)."""
    outer, d, inner = layout
    if inner == 1 or outer == 1:
        tensor = torch.empty(shape, dtype=dtype)
        return tensor, _input_rows(tensor.numpy(), dim, layout)
    tensor = torch.empty((*shape[:dim], *shape[dim + 1 :], d), dtype=dtype)
    return tensor, tensor.numpy().reshape(outer * inner, d)


def _finished(tensor, like, dim, layout):
    """A tensor of ``_output_rows`` with the shape, dtype and device of ``like``."""
    outer, _, inner = layout
    if not (inner == 1 or outer == 1):
        tensor = tensor.movedim(-1, dim).contiguous()
    if tensor.dtype != like.dtype or tensor.device != like.device:
        tensor = tensor.to(device=like.device, dtype=like.dtype)
    return tensor


def _numpy(tensor, dtype):
    """``tensor`` as a numpy array of ``dtype`` (a view when it already is one)."""
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    return (tensor.detach() if tensor.requires_grad else tensor).numpy()


def _parallel_chunks(rows):
    if rows.size < _PARALLEL_MIN_NUMEL or not _parallel_allowed:
        return 1
    return min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS, rows.shape[0])


# The parallel kernels run on numba's "omp" threading layer when GNU OpenMP is there
# (it is with the PyPI wheels): it is safe for concurrent calls from several Python
# threads, which "workqueue" is not, and needs no extra package, which "tbb" does.
# But GNU OpenMP aborts a forked child of a process that has started its thread
# pool (multiprocessing and DataLoader workers fork on Linux). So a child forked
# after a parallel call computes with the serial kernels, which use no OpenMP.
_parallel_allowed = True
_parallel_used = False


def _after_fork_in_child():
    global _parallel_allowed
    if _parallel_used:
        _parallel_allowed = False


os.register_at_fork(after_in_child=_after_fork_in_child)


def _run_kernel(kernels, parallel, kind, rows, *args):
    global _parallel_used
    chunks = _parallel_chunks(rows)
    if chunks > 1:
        _parallel_used = True
        parallel(kind, chunks, *args)
    else:
        kernels[kind](*args, 0, rows.shape[0])


# ------------------------------------------------------------- compiled-kernel maps

# Decoder steps call the maps with a few thousand scores, where each tensor operation
# costs about as much as the kernel itself: the kernels read the scores and the mask
# and write the output through numpy views of the tensors (any strides), so a call
# is two allocations and one kernel, with no transposed or masked copies.


def _forward_rows(scores, dim, mask):
    """What a forward kernel reads and writes: the layout, the scores and the mask
    as (rows, d) arrays, and the output tensor with its (rows, d) view."""
    layout = _layout(scores.shape, dim)
    dtype = _compute_dtype(scores.dtype)
    x = _input_rows(_numpy(scores, dtype), dim, layout)
    valid = None if mask is None else _input_rows(_numpy(mask, torch.bool), dim, layout)
    out, out_rows = _output_rows(scores.shape, dim, layout, dtype)
    return layout, x, valid, out, out_rows


def kernel_forward(scores, dim, mask, kind, gamma, param, keep_y):
    """Run a forward kernel of ``regattn._cpu``: returns the output (a tensor of its
    own, never a view: autograd refuses in-place operations on views of a Function's
    outputs), what the backward needs of y (a numpy (rows, d) copy when ``keep_y``
    for the threshold maps, else None; the structured maps need only their group
    ids) and the kernel's aux array (numpy). CUDA tensors run the native kernels
    of ``regattn._cuda`` (the saved y and aux are then tensors on the device) unless
    those cannot run, which warns once."""
    if scores.is_cuda:
        from . import _cuda  # here, not at the top: regattn._cuda builds on this module

        result = _cuda.try_forward(scores, dim, mask, kind, gamma, param, keep_y)
        if result is not None:
            return result
    layout, x, valid, out, out_rows = _forward_rows(scores, dim, mask)
    structured = kind in _cpu.STRUCTURED
    aux = np.empty((x.shape[0], x.shape[1] if structured else 1), dtype=np.int32)
    _run_kernel(
        _cpu.FORWARD, _cpu.forward_parallel, kind, x, x, valid, out_rows, aux, 1.0 / gamma, param
    )
    # y must not see in-place changes to the returned tensor: a copy.
    saved_y = out_rows.copy() if keep_y and not structured else None
    return _finished(out, scores, dim, layout), saved_y, aux


def kernel_backward(saved_y, aux, grad_output, dim, kind, gamma, param):
    """The vector-Jacobian product of ``kernel_forward``'s output with grad_output."""
    if grad_output.is_cuda:
        from . import _cuda

        grad = _cuda.try_backward(saved_y, aux, grad_output, dim, kind, gamma, param)
        if grad is not None:
            return grad
        saved_y, aux = _cuda.host_state(saved_y, aux)  # the CPU kernels take numpy
    layout = _layout(grad_output.shape, dim)
    dtype = _compute_dtype(grad_output.dtype)
    g = _input_rows(_numpy(grad_output, dtype), dim, layout)
    y = g if kind in _cpu.STRUCTURED else saved_y  # the structured maps use its shape only
    grad, grad_rows = _output_rows(grad_output.shape, dim, layout, dtype)
    args = (y, aux, g, grad_rows, 1.0 / gamma, param)
    _run_kernel(_cpu.BACKWARD, _cpu.backward_parallel, kind, g, *args)
    return _finished(grad, grad_output, dim, layout)


class _CompiledMapping(torch.autograd.Function):
    """The compiled kernels in eager mode: the leanest path through autograd (the
    torch.library op of ``regattn._ops`` costs tens of microseconds more per call, so
    it serves only tracing, fake tensors and torch.func transforms)."""

    @staticmethod
    def forward(ctx, scores, dim, mask, kind, gamma, param):
        # Called for a gradient or a forward-mode tangent: both need y.
        result, saved_y, aux = kernel_forward(scores, dim, mask, kind, gamma, param, True)
        # numpy arrays private to this call (not tensors a user could modify), so they
        # are kept on ctx without save_for_backward's version checks.
        ctx.saved_y, ctx.aux = saved_y, aux
        ctx.dim, ctx.kind, ctx.gamma, ctx.param = dim, kind, gamma, param
        return result

    @staticmethod
    def backward(ctx, grad_output):
        if torch.is_grad_enabled():  # create_graph=True: a second derivative may follow
            return _backward_first_order(ctx, grad_output)
        return _backward(ctx, grad_output)

    @staticmethod
    def jvp(ctx, scores_tangent, *_):
        # Every map is the gradient of a convex function (the conjugate of its
        # regulariser), so its Jacobian is a Hessian, symmetric: the Jacobian-vector
        # product is the vector-Jacobian product.
        return _jacobian_product(ctx, scores_tangent)


def _jacobian_product(ctx, vector):
    state = (ctx.saved_y, ctx.aux, vector, ctx.dim, ctx.kind, ctx.gamma, ctx.param)
    if _legacy_batched(vector):
        from . import _ops

        return _ops.batched_backward(*state)
    return kernel_backward(*state)


def _backward(ctx, grad_output):
    return _jacobian_product(ctx, grad_output), None, None, None, None, None


def _legacy_batched(vector):
    """Whether ``vector`` holds a batch of gradients or tangents (torch.autograd.grad
    with ``is_grads_batched=True``, torch.autograd.functional.jacobian with
    ``vectorize=True``), which the numpy kernels cannot take."""
    return torch._C._functorch.is_legacy_batchedtensor(vector)


def _has_tangent(tensor):
    """Whether ``tensor`` is a forward-mode AD dual tensor (torch.autograd.forward_ad)."""
    return forward_ad.unpack_dual(tensor).tangent is not None


SECOND_DERIVATIVES = (
    "second derivatives of regattn's sparse maps are not supported (a backward of "
    "their backward: create_graph=True then a gradient of the gradient, "
    "torch.autograd.functional.hessian, torch.func.hessian, grad of grad); first "
    "derivatives are, in reverse and forward mode"
)


class _SecondDerivative(torch.autograd.Function):
    """A gradient computed under create_graph by a backward that is not differentiable
    itself: its value, with a node that raises when a second derivative reaches it.
    Unlike torch's once_differentiable, whose node hangs from detached copies, the
    node hangs from the incoming gradients, so a derivative taken with respect to
    what they depend on (torch.autograd.grad(..., inputs), autograd.functional's
    hessian) reaches it and raises instead of reporting an unused input or zeros."""

    @staticmethod
    def forward(ctx, grad, *incoming):
        return grad.view_as(grad)

    @staticmethod
    def backward(ctx, *_):
        raise NotImplementedError(SECOND_DERIVATIVES)

    @staticmethod
    def jvp(ctx, *_):  # forward over reverse
        raise NotImplementedError(SECOND_DERIVATIVES)


def _first_order(backward):
    """``backward`` (a Function's, computing its gradients without autograd) made
    safe under create_graph: the gradients raise if differentiated again."""

    @functools.wraps(backward)
    def wrapper(ctx, *grad_outputs):
        with torch.no_grad():
            grads = backward(ctx, *grad_outputs)
        incoming = [g for g in grad_outputs if g is not None and g.requires_grad]
        if not (torch.is_grad_enabled() and incoming):
            return grads
        return tuple(
            _SecondDerivative.apply(g, *incoming) if isinstance(g, torch.Tensor) else g
            for g in grads
        )

    return wrapper


# Plain backward, the common case, skips the wrapper's cost (a sizeable part of a
# decoder step's call).
_backward_first_order = _first_order(_backward)


def lam_rows_forward(scores, lam_rows, dim, mask, kind, gamma):
    """fusedmax or oscarmax with one lam per row (``lam_rows``: the scores' shape
    without ``dim``): the output tensor, and what the lam gradient needs as numpy
    arrays: y (rows, d), the group ids and the counts of ``_cpu.structured_forward_lams``
    (TV segments, kept positions). A row whose lam is negative or not finite (values
    are checked at the call, but not under tracing) is a NaN row, with NaN gradients
    (its count is -1)."""
    layout, x, valid, out, out_rows = _forward_rows(scores, dim, mask)
    lams = _numpy(lam_rows.reshape(-1), torch.float64)  # in the order of the rows
    unusable = ~((lams >= 0) & (lams < math.inf))
    any_unusable = unusable.any()
    if any_unusable:
        lams = np.where(unusable, 0.0, lams)
    aux = np.empty(x.shape, dtype=np.int32)
    counts = np.empty(x.shape[0], dtype=np.int32)
    _cpu.structured_forward_lams(
        kind, x, valid, out_rows, aux, counts, 1.0 / gamma, lams, 0, x.shape[0]
    )
    if any_unusable:
        out_rows[unusable] = np.nan
        counts[unusable] = -1
    return _finished(out, scores, dim, layout), out_rows.copy(), aux, counts


def lam_rows_backward(y, aux, counts, grad_output, dim, kind, gamma, scores_grad, lam_grad):
    """The gradients of ``lam_rows_forward``'s output (its numpy state ``y``, ``aux``,
    ``counts``) against grad_output: for the scores (on grad_output's device, or
    None unless ``scores_grad``) and for lam_rows (float64 on the CPU, in the
    scores' shape without ``dim``, or None unless ``lam_grad``)."""
    device = grad_output.device
    grad_output = grad_output.cpu()
    rows_shape = grad_output.shape[:dim] + grad_output.shape[dim + 1 :]
    unusable = counts < 0  # rows whose lam was unusable: NaN rows
    grad_scores = grad_lam = None
    if scores_grad:
        grad_scores = kernel_backward(None, aux, grad_output, dim, kind, gamma, 0.0)
        if unusable.any():
            nan_rows = torch.from_numpy(unusable).view(rows_shape).unsqueeze(dim)
            grad_scores = grad_scores.masked_fill(nan_rows, math.nan)
        grad_scores = grad_scores.to(device)
    if lam_grad:
        layout = _layout(grad_output.shape, dim)
        g = _input_rows(_numpy(grad_output, _compute_dtype(grad_output.dtype)), dim, layout)
        rows = np.empty(g.shape[0])
        _cpu.structured_lam_grad(kind, y, aux, counts, g, rows, 0, len(rows))
        rows[unusable] = np.nan
        grad_lam = torch.from_numpy(rows).view(rows_shape)
    return grad_scores, grad_lam


_NO_LAM_TANGENT = (
    "forward-mode AD (torch.func.jvp, jacfwd, torch.autograd.forward_ad) is not "
    "supported with respect to a tensor lam; it is with respect to the scores (a lam "
    "without a tangent), and reverse mode (backward, torch.func.grad, jacrev) gives "
    "lam's gradient"
)


def _lam_products(ctx, vector, scores_grad, lam_grad):
    """``_jacobian_product`` for _TensorLam: (for the scores, for lam_rows)."""
    state = (ctx.y, ctx.aux, ctx.counts, vector, ctx.dim, ctx.kind, ctx.gamma)
    if _legacy_batched(vector):
        from . import _ops

        return _ops.batched_lam_rows_backward(*state)
    return lam_rows_backward(*state, scores_grad, lam_grad)


class _TensorLam(torch.autograd.Function):
    """fusedmax or oscarmax with one lam per distribution, differentiable in lam
    (``lam_rows_forward``, ``lam_rows_backward``): it runs the CPU kernels, for
    tensors on any device."""

    @staticmethod
    def forward(ctx, scores, lam_rows, dim, mask, kind, gamma):
        out, ctx.y, ctx.aux, ctx.counts = lam_rows_forward(scores, lam_rows, dim, mask, kind, gamma)
        ctx.dim, ctx.kind, ctx.gamma = dim, kind, gamma
        ctx.set_materialize_grads(False)  # for jvp: None, not zeros, for a lam with no tangent
        ctx.lam_like = (lam_rows.dtype, lam_rows.device)
        return out

    @staticmethod
    def jvp(ctx, scores_tangent, lam_tangent, *_):
        if lam_tangent is not None:
            raise NotImplementedError(_NO_LAM_TANGENT)
        # As for _CompiledMapping.jvp: the Jacobian in the scores is symmetric.
        return _lam_products(ctx, scores_tangent, True, False)[0]

    @staticmethod
    @_first_order
    def backward(ctx, grad_output):
        if grad_output is None:  # not materialised: no gradient reached the output
            return None, None, None, None, None, None
        grad_scores, grad_lam = _lam_products(ctx, grad_output, *ctx.needs_input_grad[:2])
        if grad_lam is not None:
            dtype, device = ctx.lam_like
            grad_lam = grad_lam.to(device=device, dtype=dtype)
        return grad_scores, grad_lam, None, None, None, None


def _traced(scores):
    """Whether ``scores`` is being traced or transformed (torch.compile, torch.export,
    fake or meta tensors, torch.func.vmap / grad), where the registered op must run."""
    return (
        torch.compiler.is_compiling()
        or scores.is_meta
        or torch._C._functorch.is_functorch_wrapped_tensor(scores)
        or isinstance(scores, torch._subclasses.FakeTensor)
    )


def _per_row(value, name, scores, dim):
    """A tensor parameter with one value per row, in the scores' shape without
    ``dim``, to which it must broadcast."""
    rows_shape = scores.shape[:dim] + scores.shape[dim + 1 :]
    if value.shape != rows_shape:  # the common case skips broadcast_shapes' cost
        try:
            if torch.broadcast_shapes(value.shape, rows_shape) != rows_shape:
                raise RuntimeError
        except RuntimeError:
            raise ValueError(
                f"{name} of shape {tuple(value.shape)} does not broadcast to the scores' "
                f"shape without dim {dim}, {tuple(rows_shape)} (one value per distribution)"
            ) from None
        value = value.expand(rows_shape)
    if value.device != scores.device:
        raise ValueError(
            f"{name} is on {value.device} but scores are on {scores.device}: put both on "
            "the same device"
        )
    return value


def _divided(scores, dim, mask, gamma):
    """scores / gamma for a tensor gamma, computed on scores shifted by their row's
    largest kept value (every map is shift invariant), so that no finite score
    overflows; autograd differentiates the division with respect to gamma."""
    dtype = _compute_dtype(scores.dtype)
    scores = scores.to(dtype)
    kept = scores if mask is None else scores.masked_fill(~mask, -math.inf)
    top = kept.detach().amax(dim, keepdim=True)
    top = torch.where(torch.isfinite(top), top, 0.0)  # rows with +inf, NaN or no score
    return (scores - top) / _per_row(gamma, "gamma", scores, dim).unsqueeze(dim).to(dtype)


def _compiled(scores, dim, mask, gamma, kind, param=0.0):
    dim = _check_scores(scores, dim)
    gamma = check_gamma(gamma)
    mask = _check_mask(mask, scores)
    if isinstance(gamma, torch.Tensor):
        dtype = scores.dtype
        result = _compiled(_divided(scores, dim, mask, gamma), dim, mask, 1.0, kind, param)
        return result.to(dtype)
    traced = _traced(scores) or (mask is not None and _traced(mask))
    if isinstance(param, torch.Tensor):  # a learnable lam
        lam_rows = _per_row(param, "lam", scores, dim)
        if traced or _traced(param):
            from . import _ops

            return _ops.lam_rows_mapping(scores, lam_rows, dim, mask, kind, gamma)[0]
        return _TensorLam.apply(scores, lam_rows, dim, mask, kind, gamma)
    if traced:
        from . import _ops

        return _ops.mapping(scores, dim, mask, kind, gamma, param)[0]
    inference = not (scores.requires_grad and torch.is_grad_enabled()) and not _has_tangent(scores)
    if inference:  # no autograd node
        return kernel_forward(scores, dim, mask, kind, gamma, param, keep_y=False)[0]
    return _CompiledMapping.apply(scores, dim, mask, kind, gamma, param)


# ------------------------------------------------------------------------- mappings


class _SafeSoftmax(torch.autograd.Function):
    """softmax of scores in which -inf marks masked positions: rows with no finite
    maximum (all masked) give zeros instead of NaN, and +inf scores share the mass."""

    @staticmethod
    def forward(ctx, z, dim):
        finite = z.clamp(max=torch.finfo(z.dtype).max)
        y = torch.softmax(finite, dim)
        y = y.masked_fill(finite.amax(dim, keepdim=True) == -math.inf, 0.0)
        ctx.save_for_backward(y)
        ctx.save_for_forward(y)
        ctx.dim = dim
        return y

    @staticmethod
    def backward(ctx, grad_output):
        # In differentiable operations on the saved output: a second derivative works.
        return _SafeSoftmax.jvp(ctx, grad_output, None), None

    @staticmethod
    def jvp(ctx, z_tangent, _):
        # softmax's Jacobian diag(y) - y y^T is symmetric: one product for both modes.
        (y,) = ctx.saved_tensors
        gy = z_tangent * y
        return gy - y * gy.sum(ctx.dim, keepdim=True)


def _all_finite(z):
    if z.numel() == 0:
        return True
    low, high = torch.aminmax(z)  # one reduction: several times cheaper than isfinite
    return bool((low > -math.inf) & (high < math.inf))  # False for NaN too


def _traceable_softmax(z, dim, mask):
    """The same contract as _SafeSoftmax in plain differentiable tensor operations,
    with no data-dependent branch: what tracing, fake tensors and vmap can follow."""
    if z.shape[dim] == 0:  # no position: nothing to reduce over (the shape is static)
        return torch.zeros_like(z)
    if mask is not None:
        z = z.where(mask, -math.inf)
    z = z.clamp(max=torch.finfo(z.dtype).max)  # +inf scores share the mass
    live = z.amax(dim, keepdim=True) != -math.inf  # rows with a valid position (or NaN)
    y = torch.softmax(z.where(live, 0.0), dim)  # a fully masked row would be NaN
    return y.where(live, 0.0)


# The parameters every mapping shares, documented once (numpydoc sections, indented
# as in the docstrings they go into).
_DOC_SECTIONS = {
    "scores_dim_gamma": """scores : torch.Tensor
        Floating-point scores of any shape; ``-inf`` marks a position that does not
        take part.
    dim : int, default -1
        The dimension the distributions run along.
    gamma : float or torch.Tensor, default 1.0
        Temperature, > 0: the map is applied to ``scores / gamma``. A tensor gives one
        value per distribution (broadcastable to the scores' shape without ``dim``)
        and receives a gradient.""",
    "lam": """lam : float or torch.Tensor, default {default}
        Strength of the penalty, >= 0 (0 is sparsemax); it acts after the division
        by ``gamma``. A tensor gives one value per distribution and receives a
        gradient.""",
    "mask_returns": """mask : torch.Tensor of bool, optional
        Broadcastable to ``scores``; True where a position takes part. Masked
        positions get exactly 0 and no gradient.

    Returns
    -------
    torch.Tensor
        The distributions, of the scores' shape and dtype: non-negative, summing to 1
        along ``dim`` (0 on a row where no position takes part).""",
}


def _shared_doc_sections(function):
    """Puts the shared sections in place of their names, {scores_dim_gamma} and so
    on, in ``function``'s docstring (not str.format: the docstrings hold formulas
    with braces); lam's default is read from its signature."""
    lam = inspect.signature(function).parameters.get("lam")
    for name, section in _DOC_SECTIONS.items():
        if lam is not None:
            section = section.replace("{default}", str(lam.default))
        function.__doc__ = function.__doc__.replace("{" + name + "}", section)
    return function


@_shared_doc_sections
def softmax(scores, dim=-1, *, gamma=1.0, mask=None):
    """softmax(scores / gamma): Omega is the negative entropy.

    Unlike ``torch.softmax``, a fully masked row gives zeros (not NaN) and ``+inf``
    scores share the mass uniformly.

    Parameters
    ----------
    {scores_dim_gamma}
    {mask_returns}
    """
    dim = _check_scores(scores, dim)
    gamma = check_gamma(gamma)
    mask = _check_mask(mask, scores)
    z = scores.to(_compute_dtype(scores.dtype))
    if isinstance(gamma, torch.Tensor):
        z = z / _per_row(gamma, "gamma", z, dim).unsqueeze(dim).to(z.dtype)
    elif gamma != 1.0:
        z = z / gamma
    if _traced(scores) or (mask is not None and _traced(mask)):
        return _traceable_softmax(z, dim, mask).to(scores.dtype)
    if mask is None:
        if _all_finite(z):
            return torch.softmax(z, dim).to(scores.dtype)  # the common case, at full speed
        return _SafeSoftmax.apply(z, dim).to(scores.dtype)
    z = z.where(mask, -math.inf)
    y = torch.softmax(z, dim)
    # NaN in y: a fully masked row, a +inf score or a NaN score; rare, so recompute.
    if not math.isnan(y.detach().sum()):
        return y.to(scores.dtype)
    return _SafeSoftmax.apply(z, dim).to(scores.dtype)


@_shared_doc_sections
def sparsemax(scores, dim=-1, *, gamma=1.0, mask=None):
    """Euclidean projection of scores / gamma onto the simplex (Martins & Astudillo,
    2016): Omega(y) = 1/2 ||y||^2.

    Parameters
    ----------
    {scores_dim_gamma}
    {mask_returns}
    """
    return _compiled(scores, dim, mask, gamma, _cpu.SPARSEMAX)


@_shared_doc_sections
def fusedmax(scores, dim=-1, *, gamma=1.0, lam=0.1, mask=None):
    """Sparsemax with a total-variation penalty, lam * sum_i |y_{i+1} - y_i|: it
    gives equal weight to contiguous runs of positions (fused groups).

    Computed exactly as sparsemax(prox_TV(scores / gamma)). With a mask, the kept
    positions are treated as adjacent.

    Parameters
    ----------
    {scores_dim_gamma}
    {lam}
    {mask_returns}
    """
    lam = check_lam(lam)
    if not isinstance(lam, torch.Tensor) and lam == 0.0:
        return sparsemax(scores, dim, gamma=gamma, mask=mask)
    return _compiled(scores, dim, mask, gamma, _cpu.FUSEDMAX, lam)


@_shared_doc_sections
def oscarmax(scores, dim=-1, *, gamma=1.0, lam=0.01, mask=None):
    """Sparsemax with the OSCAR penalty, lam * sum_{i<j} max(|y_i|, |y_j|): it gives
    equal weight to groups of positions that need not be contiguous.

    Computed exactly as sparsemax of the signed OWL prox of scores / gamma (the
    paper's definition; shift invariant). The penalty has O(d^2) pairs, so a fixed
    lam fuses more as the number of positions grows.

    Parameters
    ----------
    {scores_dim_gamma}
    {lam}
    {mask_returns}
    """
    lam = check_lam(lam)
    if not isinstance(lam, torch.Tensor) and lam == 0.0:
        return sparsemax(scores, dim, gamma=gamma, mask=mask)
    return _compiled(scores, dim, mask, gamma, _cpu.OSCARMAX, lam)


@_shared_doc_sections
def sq_pnorm_max(scores, dim=-1, *, gamma=1.0, p=1.5, mask=None):
    """Omega(y) = 1/2 ||y||_p^2 with p in (1, 2]; p = 2 is sparsemax.

    Parameters
    ----------
    {scores_dim_gamma}
    p : float, default 1.5
        The norm's exponent, in (1, 2].
    {mask_returns}
    """
    p = check_p(p)
    if p == 2.0:
        return sparsemax(scores, dim, gamma=gamma, mask=mask)
    return _compiled(scores, dim, mask, gamma, _cpu.SQ_PNORM_MAX, p)


@_shared_doc_sections
def entmax15(scores, dim=-1, *, gamma=1.0, mask=None):
    """1.5-entmax of scores / gamma (Peters et al., 2019): Omega is the Tsallis
    1.5-entropy. Sparse like sparsemax, smoother like softmax.

    Parameters
    ----------
    {scores_dim_gamma}
    {mask_returns}
    """
    return _compiled(scores, dim, mask, gamma, _cpu.ENTMAX15)
