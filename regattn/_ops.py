"""The compiled mappings as PyTorch operators (``torch.library``), for the tools that
cannot run Python code on real data: torch.compile and torch.export (which see an
opaque op with a fake kernel for shapes, and its registered autograd formula),
fake and meta tensors, and torch.func.vmap (a batching rule that folds the vmapped
dimension into the rows: the maps work row by row).

Two ops, ``regattn::mapping_forward`` and ``regattn::mapping_backward``, both running
the kernels of ``regattn.functional``. The forward returns the output and what the
backward needs (the output again where the map's backward uses it, and the kernel's
int32 group ids or row flags), so the backward is an op too and a compiled graph
holds both. Two more, ``regattn::lam_rows_forward`` and ``regattn::lam_rows_backward``,
do the same for fusedmax and oscarmax with a tensor lam (one per distribution,
learnable), and give its gradient too. ``regattn.functional`` calls them only when it
is traced or transformed; eager calls take the leaner autograd.Function path, with
the same kernels.
"""

import math

import torch
from torch._C import _functorch

from . import _cpu
from . import functional as F


def _rows_and_width(scores, dim):
    d = scores.shape[dim]
    return math.prod(scores.shape[:dim] + scores.shape[dim + 1 :]), d


@torch.library.custom_op("regattn::mapping_forward", mutates_args=())
def mapping_forward(
    scores: torch.Tensor, dim: int, mask: torch.Tensor | None, kind: int, gamma: float,
    param: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    result, saved_y, aux = F.kernel_forward(scores, dim, mask, kind, gamma, param, keep_y=True)
    return (result, *_state_tensors(saved_y, aux, scores.dtype, scores.device))


def _state_tensors(saved_y, aux, dtype, device):
    """``kernel_forward``'s saved y and aux as the ops take them: the CPU kernels save
    numpy arrays, the CUDA kernels device tensors; the ops' are tensors on the
    scores' device (a copy only after a CUDA fallback)."""
    if saved_y is None:  # the structured maps' backward needs their group ids only
        saved_y = torch.empty(0, dtype=F._compute_dtype(dtype))
    return _on_device(saved_y, device), _on_device(aux, device)


def _on_device(state, device):
    return (torch.from_numpy(state) if not isinstance(state, torch.Tensor) else state).to(device)


@mapping_forward.register_fake
def _(scores, dim, mask, kind, gamma, param):
    rows, d = _rows_and_width(scores, dim)
    compute = F._compute_dtype(scores.dtype)
    structured = kind in _cpu.STRUCTURED
    saved_y = scores.new_empty((0,) if structured else (rows, d), dtype=compute)
    aux = scores.new_empty((rows, d if structured else 1), dtype=torch.int32)
    # The real op returns a contiguous tensor, whatever the input's strides.
    out = torch.empty(scores.shape, dtype=scores.dtype, device=scores.device)
    return out, saved_y, aux


@torch.library.custom_op("regattn::mapping_backward", mutates_args=())
def mapping_backward(
    saved_y: torch.Tensor, aux: torch.Tensor, grad_output: torch.Tensor, dim: int, kind: int,
    gamma: float, param: float,
) -> torch.Tensor:  # fmt: skip
    if not grad_output.is_cuda:  # the CPU kernels take numpy arrays
        saved_y, aux = saved_y.cpu().numpy(), aux.cpu().numpy()
    grad = F.kernel_backward(saved_y, aux, grad_output, dim, kind, gamma, param)
    return grad.contiguous()  # as the fake kernel says


@mapping_backward.register_fake
def _(saved_y, aux, grad_output, dim, kind, gamma, param):
    return torch.empty(grad_output.shape, dtype=grad_output.dtype, device=grad_output.device)


def _setup_context(ctx, inputs, output):
    _, dim, _, kind, gamma, param = inputs
    _, saved_y, aux = output
    ctx.save_for_backward(saved_y, aux)
    ctx.dim, ctx.kind, ctx.gamma, ctx.param = dim, kind, gamma, param


def _backward(ctx, grad_output, _grad_saved_y, _grad_aux):
    saved_y, aux = ctx.saved_tensors
    grad = mapping_backward(saved_y, aux, grad_output, ctx.dim, ctx.kind, ctx.gamma, ctx.param)
    return grad, None, None, None, None, None


mapping_forward.register_autograd(_backward, setup_context=_setup_context)


def _batched_first(tensor, bdim, batch_size):
    """``tensor`` with its vmapped dim first (broadcast when it has none)."""
    if bdim is None:
        return tensor.expand(batch_size, *tensor.shape)
    return tensor.movedim(bdim, 0)


def _batched_mask(mask, bdim, scores):
    """``mask`` batched first and broadcast to the (batched-first) ``scores``."""
    if mask is None:
        return None
    mask = _batched_first(mask, bdim, scores.shape[0])
    # Broadcast the mask's own dims against the scores' (right-aligned), after the
    # batch dim.
    missing = scores.dim() - mask.dim()
    mask = mask.reshape(mask.shape[0], *([1] * missing), *mask.shape[1:])
    return mask.expand(scores.shape)


@mapping_forward.register_vmap
def _(info, in_dims, scores, dim, mask, kind, gamma, param):
    scores = _batched_first(scores, in_dims[0], info.batch_size)
    mask = _batched_mask(mask, in_dims[2], scores)
    result, saved_y, aux = mapping_forward(scores, dim + 1, mask, kind, gamma, param)
    batch = info.batch_size
    # Per batch entry, saved_y and aux are the (rows, width) arrays of its own call.
    rows = aux.shape[0] // batch  # not -1: a reshape cannot infer it when width is 0
    saved_y = saved_y.reshape(batch, rows, *saved_y.shape[1:]) if saved_y.numel() else (
        saved_y.new_empty(batch, 0))  # fmt: skip
    return (result, saved_y, aux.reshape(batch, rows, aux.shape[-1])), (0, 0, 0)


@mapping_backward.register_vmap
def _(info, in_dims, saved_y, aux, grad_output, dim, kind, gamma, param):
    batch = info.batch_size
    saved_y = _batched_first(saved_y, in_dims[0], batch)
    aux = _batched_first(aux, in_dims[1], batch)
    grad_output = _batched_first(grad_output, in_dims[2], batch)
    saved_y = saved_y.flatten(0, 1) if saved_y.dim() > 2 else saved_y.reshape(0)
    grad = mapping_backward(saved_y, aux.flatten(0, 1), grad_output, dim + 1, kind, gamma, param)
    return grad, 0


def _func_transformed(*tensors):
    """Whether torch.func transforms (grad, vjp, jvp, the Jacobians, vmap) wrap these
    tensors outside torch.compile: torch runs a registered op's autograd formula
    through an autograd.Function that these transforms cannot differentiate, so the
    calls go through the autograd.Functions below, which they can. Nested
    derivatives (torch.func.hessian, grad of grad) raise: the backward is not
    differentiable, and a transform would otherwise take its saved output for a
    constant and give a wrong second derivative without a word."""
    if torch.compiler.is_compiling():
        return False
    wrapped = [t for t in tensors if t is not None and _functorch.is_functorch_wrapped_tensor(t)]
    if any(_differentiation_levels(t) > 1 for t in wrapped):
        raise NotImplementedError(F.SECOND_DERIVATIVES)
    return bool(wrapped)


def _differentiation_levels(tensor):
    """How many differentiating torch.func transforms (grad, vjp, jvp) wrap
    ``tensor`` (vmap's batching does not count)."""
    levels = 0
    while _functorch.is_functorch_wrapped_tensor(tensor):
        levels += _functorch.is_gradtrackingtensor(tensor)
        tensor = _functorch.get_unwrapped(tensor)
    return levels


class _FirstOrder(torch.autograd.Function):
    """A backward op (``mapping_backward``, ``lam_rows_backward``, the first argument)
    under torch.func transforms, which always build a graph through the backward:
    the op, whose own derivative raises (the ops have no autograd formula, and a
    transform cannot differentiate the Function torch would wrap them in)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(op, *args):
        return op(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *_):
        raise NotImplementedError(F.SECOND_DERIVATIVES)

    @staticmethod
    def jvp(ctx, *_):
        raise NotImplementedError(F.SECOND_DERIVATIVES)


class _TransformedMapping(torch.autograd.Function):
    """``mapping_forward`` and its autograd formula as an autograd.Function that
    torch.func can transform: ``setup_context`` apart from ``forward``, and vmap by
    running the forward under vmap (the ops' batching rules)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(scores, dim, mask, kind, gamma, param):
        return mapping_forward(scores, dim, mask, kind, gamma, param)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(*output[1:])
        _setup_context(ctx, inputs, output)
        ctx.save_for_forward(*output[1:])

    @staticmethod
    def backward(ctx, grad_output, _grad_saved_y, _grad_aux):
        return _TransformedMapping.jvp(ctx, grad_output)[0], None, None, None, None, None

    @staticmethod
    def jvp(ctx, scores_tangent, *_):
        # The Jacobian is symmetric (regattn.functional._CompiledMapping.jvp): one
        # product for both modes.
        saved_y, aux = ctx.saved_tensors
        args = (saved_y, aux, scores_tangent, ctx.dim, ctx.kind, ctx.gamma, ctx.param)
        return _FirstOrder.apply(mapping_backward, *args), None, None


def mapping(scores, dim, mask, kind, gamma, param):
    """(output, saved y, aux) of a compiled mapping through the registered ops."""
    if _func_transformed(scores, mask):
        return _TransformedMapping.apply(scores, dim, mask, kind, gamma, param)
    return mapping_forward(scores, dim, mask, kind, gamma, param)


def batched_backward(saved_y, aux, grad_output, dim, kind, gamma, param):
    """The eager path's backward (its state as ``kernel_forward`` keeps it) for a
    grad_output batched by torch's legacy vmap (``torch.autograd.grad(...,
    is_grads_batched=True)``), which cannot reach numpy: through the backward op, which
    that vmap runs once per batch entry."""
    saved_y, aux = _state_tensors(saved_y, aux, grad_output.dtype, grad_output.device)
    return mapping_backward(saved_y, aux, grad_output, dim, kind, gamma, param)


# ---------------------------------------------------- fusedmax, oscarmax: tensor lam


@torch.library.custom_op("regattn::lam_rows_forward", mutates_args=())
def lam_rows_forward(
    scores: torch.Tensor, lam_rows: torch.Tensor, dim: int, mask: torch.Tensor | None, kind: int,
    gamma: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """The output and the lam gradient's state (y, group ids, counts) as tensors."""
    result, y, aux, counts = F.lam_rows_forward(scores, lam_rows, dim, mask, kind, gamma)
    device = scores.device
    return result, _on_device(y, device), _on_device(aux, device), _on_device(counts, device)


@lam_rows_forward.register_fake
def _(scores, lam_rows, dim, mask, kind, gamma):
    rows, d = _rows_and_width(scores, dim)
    y = scores.new_empty((rows, d), dtype=F._compute_dtype(scores.dtype))
    aux = scores.new_empty((rows, d), dtype=torch.int32)
    counts = scores.new_empty((rows,), dtype=torch.int32)
    out = torch.empty(scores.shape, dtype=scores.dtype, device=scores.device)
    return out, y, aux, counts


@torch.library.custom_op("regattn::lam_rows_backward", mutates_args=())
def lam_rows_backward(
    y: torch.Tensor, aux: torch.Tensor, counts: torch.Tensor, grad_output: torch.Tensor,
    dim: int, kind: int, gamma: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The gradients for the scores and for lam_rows (float64)."""
    state = (t.cpu().numpy() for t in (y, aux, counts))  # the CPU kernels take numpy
    grad_scores, grad_lam = F.lam_rows_backward(*state, grad_output, dim, kind, gamma, True, True)
    return grad_scores.contiguous(), grad_lam.to(grad_output.device)


@lam_rows_backward.register_fake
def _(y, aux, counts, grad_output, dim, kind, gamma):
    shape = grad_output.shape
    grad_scores = torch.empty(shape, dtype=grad_output.dtype, device=grad_output.device)
    grad_lam = grad_output.new_empty(shape[:dim] + shape[dim + 1 :], dtype=torch.float64)
    return grad_scores, grad_lam


def _lam_setup_context(ctx, inputs, output):
    _, lam_rows, dim, _, kind, gamma = inputs
    _, y, aux, counts = output
    ctx.save_for_backward(y, aux, counts)
    ctx.dim, ctx.kind, ctx.gamma, ctx.lam_dtype = dim, kind, gamma, lam_rows.dtype


def _lam_backward(ctx, grad_output, _grad_y, _grad_aux, _grad_counts):
    y, aux, counts = ctx.saved_tensors
    grad_scores, grad_lam = lam_rows_backward(
        y, aux, counts, grad_output, ctx.dim, ctx.kind, ctx.gamma
    )
    return grad_scores, grad_lam.to(ctx.lam_dtype), None, None, None, None


lam_rows_forward.register_autograd(_lam_backward, setup_context=_lam_setup_context)


@lam_rows_forward.register_vmap
def _(info, in_dims, scores, lam_rows, dim, mask, kind, gamma):
    batch = info.batch_size
    scores = _batched_first(scores, in_dims[0], batch)
    lam_rows = _batched_first(lam_rows, in_dims[1], batch)
    mask = _batched_mask(mask, in_dims[3], scores)
    result, y, aux, counts = lam_rows_forward(scores, lam_rows, dim + 1, mask, kind, gamma)
    # Per batch entry, the (rows, width) and (rows,) arrays of its own call (rows
    # given, not -1: a reshape cannot infer it when width is 0).
    rows = counts.shape[0] // batch
    state = (y.reshape(batch, rows, y.shape[-1]), aux.reshape(batch, rows, aux.shape[-1]),
             counts.reshape(batch, rows))  # fmt: skip
    return (result, *state), (0, 0, 0, 0)


@lam_rows_backward.register_vmap
def _(info, in_dims, y, aux, counts, grad_output, dim, kind, gamma):
    batch = info.batch_size
    state = (y, aux, counts, grad_output)
    y, aux, counts, grad_output = (
        _batched_first(t, bdim, batch) for t, bdim in zip(state, in_dims[:4], strict=True)
    )
    grads = lam_rows_backward(
        y.flatten(0, 1), aux.flatten(0, 1), counts.reshape(-1),
        grad_output, dim + 1, kind, gamma,
    )  # fmt: skip
    return grads, (0, 0)


class _TransformedLamRows(torch.autograd.Function):
    """``lam_rows_forward`` and its autograd formula for torch.func transforms (as
    ``_TransformedMapping``)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(scores, lam_rows, dim, mask, kind, gamma):
        return lam_rows_forward(scores, lam_rows, dim, mask, kind, gamma)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(*output[1:])
        _lam_setup_context(ctx, inputs, output)
        ctx.save_for_forward(*output[1:])
        ctx.set_materialize_grads(False)  # for jvp: None, not zeros, for a lam with no tangent

    @staticmethod
    def backward(ctx, grad_output, _grad_y, _grad_aux, _grad_counts):
        if grad_output is None:  # not materialised: no gradient came
            return None, None, None, None, None, None
        grad_scores, grad_lam = _TransformedLamRows._products(ctx, grad_output)
        return grad_scores, grad_lam.to(ctx.lam_dtype), None, None, None, None

    @staticmethod
    def jvp(ctx, scores_tangent, lam_tangent, *_):
        if lam_tangent is not None:
            raise NotImplementedError(F._NO_LAM_TANGENT)
        # As for _TransformedMapping: the Jacobian in the scores is symmetric.
        return _TransformedLamRows._products(ctx, scores_tangent)[0], None, None, None

    @staticmethod
    def _products(ctx, vector):
        y, aux, counts = ctx.saved_tensors
        args = (y, aux, counts, vector, ctx.dim, ctx.kind, ctx.gamma)
        return _FirstOrder.apply(lam_rows_backward, *args)


def lam_rows_mapping(scores, lam_rows, dim, mask, kind, gamma):
    """(output, y, aux, counts) of fusedmax or oscarmax with one lam per row."""
    if _func_transformed(scores, lam_rows, mask):
        return _TransformedLamRows.apply(scores, lam_rows, dim, mask, kind, gamma)
    return lam_rows_forward(scores, lam_rows, dim, mask, kind, gamma)


def batched_lam_rows_backward(y, aux, counts, grad_output, dim, kind, gamma):
    """``batched_backward`` for the tensor-lam path: (grad scores, grad lam_rows)."""
    state = (_on_device(t, grad_output.device) for t in (y, aux, counts))
    return lam_rows_backward(*state, grad_output, dim, kind, gamma)
