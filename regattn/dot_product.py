"""Scaled dot-product attention with any regularized mapping in place of softmax.

``attention`` follows the conventions of
``torch.nn.functional.scaled_dot_product_attention`` (SDPA): query ``(..., L, E)``,
key ``(..., S, E)``, value ``(..., S, Ev)``, output ``(..., L, Ev)``, default scale
``1 / sqrt(E)``, a bool ``attn_mask`` with True where a query may attend to a key,
top-left aligned ``is_causal``. It adds ``key_padding_mask`` with the convention of
``torch.nn.MultiheadAttention``: True marks a PAD key, the opposite of
``attn_mask``.

Every mask is combined into one bool mask handed to the mapping's ``mask=``
argument (not added to the scores as ``-inf``): masked keys get exactly 0 weight and,
for fusedmax and oscarmax, are left out of the groups, so a masked key never fuses
with a kept one and fusedmax treats the kept keys as adjacent (Niculae & Blondel,
2017, section 3).
"""

import math
import numbers

import torch

from .registry import MAPPINGS, get_mapping, mapping_params

_ATTENTION_ARGUMENTS = (
    "attn_mask",
    "key_padding_mask",
    "is_causal",
    "dropout_p",
    "scale",
    "need_weights",
)


def attention(
    query,
    key,
    value,
    mapping="fusedmax",
    *,
    attn_mask=None,
    key_padding_mask=None,
    is_causal=False,
    dropout_p=0.0,
    scale=None,
    need_weights=False,
    **params,
):
    """Scaled dot-product attention ``mapping(scale * query @ key^T) @ value``.

    Parameters
    ----------
    query : torch.Tensor
        Floating-point tensor of shape ``(..., L, E)``.
    key : torch.Tensor
        Shape ``(..., S, E)``, same dtype and device as ``query``.
    value : torch.Tensor
        Shape ``(..., S, Ev)``. The leading (batch) dimensions of query, key and
        value broadcast against each other, as in ``torch.matmul``; call their
        broadcast shape ``B``.
    mapping : str
        The name of a mapping of ``regattn.MAPPINGS``: softmax, sparsemax,
        fusedmax, oscarmax, sq_pnorm_max or entmax15.
    attn_mask : torch.Tensor of bool, optional
        Broadcastable to the scores' shape ``(*B, L, S)``; **True where the query
        may attend to the key** (SDPA's bool convention). Float (additive) masks are
        refused: a sparse mapping needs to know which keys are out, not an offset.
    key_padding_mask : torch.Tensor of bool, optional
        **True where the key is padding** (``torch.nn.MultiheadAttention``'s
        convention, the opposite of ``attn_mask``). Accepted shapes: ``(S,)``, the
        same padding for every row; ``(N, S)`` with ``N`` the first batch
        dimension of ``B`` (or 1), one padding per batch entry shared by all heads,
        e.g. for 4-d inputs ``(N, H, L, E)``; or ``(*B', S)`` with as many dims as
        ``B`` plus one and ``B'`` broadcastable to ``B``, e.g. ``(N, H, S)``.
    is_causal : bool
        Query ``i`` attends to keys ``j <= i`` only (``torch.ones(L, S).tril()``,
        top-left aligned like SDPA). Cannot be combined with ``attn_mask``.
    dropout_p : float
        Dropout probability on the weights, in [0, 1]; applied only when > 0, so
        pass 0 in evaluation, as with SDPA.
    scale : float, optional
        Multiplies the dot products; ``1 / sqrt(E)`` when None.
    need_weights : bool
        Also return the attention weights.
    **params
        The mapping's parameters (``gamma``; ``lam`` for fusedmax and oscarmax;
        ``p`` for sq_pnorm_max), validated by ``regattn.get_mapping``.

    Returns
    -------
    output : torch.Tensor
        Shape ``(*B, L, Ev)``.
    weights : torch.Tensor
        Only when ``need_weights``: shape ``(*B, L, S)``, the weights that
        multiplied ``value`` (after dropout, as ``torch.nn.MultiheadAttention``
        returns them). Each row sums to 1, or is all zeros when every key of the
        row is masked (then the output row is zeros, as with SDPA).

    Examples
    --------
    >>> q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 7, 8), torch.randn(2, 4, 7, 8)
    >>> pad = torch.zeros(2, 7, dtype=torch.bool); pad[1, 5:] = True
    >>> out, w = attention(q, k, v, "fusedmax", lam=0.1, key_padding_mask=pad,
    ...                    need_weights=True)
    >>> out.shape, bool(w[1, ..., 5:].eq(0).all())
    (torch.Size([2, 4, 5, 8]), True)
    """
    function = _mapping_function(mapping, params, "attention()", ", ".join(_ATTENTION_ARGUMENTS))
    batch_shape, target_len, source_len = _check_qkv(query, key, value)
    for name, flag in (("is_causal", is_causal), ("need_weights", need_weights)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    scale = _check_scale(scale, query.shape[-1])
    dropout_p = _check_dropout(dropout_p, "dropout_p")
    scores_shape = (*batch_shape, target_len, source_len)

    keep = None
    if attn_mask is not None:
        if is_causal:
            raise ValueError(
                "attn_mask and is_causal=True cannot both be given (as with "
                "scaled_dot_product_attention): put the causal constraint into attn_mask, "
                "e.g. attn_mask & torch.ones(L, S, dtype=torch.bool).tril()"
            )
        keep = _check_attn_mask(attn_mask, query, scores_shape)
    if is_causal:
        keep = torch.ones(target_len, source_len, dtype=torch.bool, device=query.device).tril()
    if key_padding_mask is not None:
        kept_keys = _check_key_padding_mask(key_padding_mask, query, batch_shape, source_len)
        keep = kept_keys if keep is None else keep & kept_keys

    output, weights = _attend(
        query, key, value, function, keep=keep, bias=None, scale=scale, dropout_p=dropout_p
    )
    return (output, weights) if need_weights else output


def _attend(query, key, value, function, *, keep, bias, scale, dropout_p):
    """The computation behind ``attention`` and ``regattn.nn.MultiheadAttention``,
    on checked inputs: ``keep`` (bool, True = take part) and ``bias`` (added to the
    scores) broadcast to the scores. Returns ``(output, weights)``."""
    # Scaling the query before the product rounds as torch.nn.MultiheadAttention
    # does (and costs L * E multiplications rather than L * S).
    scores = torch.matmul(query * scale, key.transpose(-2, -1))
    if bias is not None:
        scores = scores + bias
    if keep is not None and keep.shape != scores.shape:
        # A mask may carry batch dims that only value shares (matmul broadcasts them
        # later); the mapping needs scores at least as large as its mask.
        full_shape = torch.broadcast_shapes(keep.shape, scores.shape)
        if full_shape != scores.shape:
            scores = scores.expand(full_shape)
    weights = function(scores, dim=-1, mask=keep)
    if dropout_p > 0.0:
        weights = torch.nn.functional.dropout(weights, p=dropout_p)
    return torch.matmul(weights, value), weights


# ----------------------------------------------------------------------- validation


def _mapping_function(mapping, params, caller, arguments):
    """The mapping named ``mapping`` with ``params`` bound, for ``caller``, whose own
    keyword arguments are ``arguments`` (a string): errors name both."""
    if not isinstance(mapping, str):
        raise TypeError(
            f"mapping must be the name of a mapping ({', '.join(sorted(MAPPINGS))}), got "
            f"{type(mapping).__name__}"
        )
    # An unknown mapping name fails here with the list of valid ones.
    allowed = mapping_params(mapping)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        # A misspelt argument of the caller lands in **params too: name both sets.
        raise TypeError(
            f"{caller} got unexpected keyword argument(s) {', '.join(unknown)}: it takes "
            f"{arguments} and the parameters of mapping {mapping!r}: {', '.join(allowed)}"
        )
    return get_mapping(mapping, **params)


def _check_qkv(query, key, value):
    """Checks query (..., L, E), key (..., S, E), value (..., S, Ev); returns the
    broadcast batch shape, L and S."""
    for name, tensor in (("query", query), ("key", key), ("value", value)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
        if tensor.dim() < 2:
            last = "Ev" if name == "value" else "E"
            length = "L" if name == "query" else "S"
            raise ValueError(
                f"{name} must have shape (..., {length}, {last}) with at least 2 dimensions, "
                f"got shape {tuple(tensor.shape)}"
            )
    if not query.dtype == key.dtype == value.dtype:
        raise TypeError(
            "query, key and value must have the same dtype, got "
            f"{query.dtype}, {key.dtype} and {value.dtype}"
        )
    if not query.device == key.device == value.device:
        raise ValueError(
            "query, key and value must be on the same device, got "
            f"{query.device}, {key.device} and {value.device}"
        )
    shapes = f"query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}"
    if key.shape[-1] != query.shape[-1]:
        raise ValueError(
            "key must have the embedding size E of query as its last dimension (query "
            f"(..., L, E), key (..., S, E)), got {shapes}"
        )
    if value.shape[-2] != key.shape[-2]:
        raise ValueError(
            "value must have as many positions S as key (key (..., S, E), value "
            f"(..., S, Ev)), got {shapes}"
        )
    try:
        batch_shape = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"the batch dimensions (all but the last two) of query, key and value must "
            f"broadcast against each other, got {shapes}"
        ) from None
    return tuple(batch_shape), query.shape[-2], key.shape[-2]


def _check_scale(scale, embed_size):
    if scale is None:
        return 1.0 / math.sqrt(embed_size)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(
            f"scale must be None (1 / sqrt(E)) or a Python number, got {type(scale).__name__}"
        )
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale!r}")
    return float(scale)


def _check_dropout(p, name):
    """``p`` as a float in [0, 1], or an error naming ``name``."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name} must be a Python number in [0, 1], got {type(p).__name__}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {p!r}")
    return float(p)


def _check_bool_tensor(mask, name, query, convention):
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a bool tensor ({convention}), got {type(mask).__name__}")
    if mask.is_floating_point():
        hint = (
            "; for an additive mask of 0 and -inf pass attn_mask=float_mask != float('-inf') "
            "(finite offsets cannot be expressed: add them to the scores yourself, or use "
            "regattn.nn.MultiheadAttention, which accepts torch's additive masks)"
            if name == "attn_mask"
            else "; for an additive mask of 0 and -inf pass "
            "key_padding_mask=float_mask == float('-inf')"
        )
        raise TypeError(
            f"{name} must be a bool tensor ({convention}), got a {mask.dtype} tensor: float "
            f"(additive) masks are not accepted{hint}"
        )
    if mask.dtype != torch.bool:
        raise TypeError(
            f"{name} must be a bool tensor ({convention}), got {mask.dtype}: convert it "
            "with .bool() if its nonzero entries follow that convention"
        )
    if mask.device != query.device:
        raise ValueError(
            f"{name} is on {mask.device} but query is on {query.device}: put both on the "
            "same device"
        )


def _check_attn_mask(attn_mask, query, scores_shape):
    _check_bool_tensor(attn_mask, "attn_mask", query, "True = the query may attend to the key")
    if attn_mask.dim() > len(scores_shape) or not _broadcasts(
        attn_mask.shape, torch.Size(scores_shape)
    ):
        raise ValueError(
            f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to the shape of "
            f"the attention scores (..., L, S) = {tuple(scores_shape)}"
        )
    return attn_mask


def _broadcasts(shape, target):
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


def _check_key_padding_mask(key_padding_mask, query, batch_shape, source_len):
    """The keys a key_padding_mask keeps (True = take part), shaped (..., 1, S) to
    broadcast to the scores (..., L, S)."""
    _check_bool_tensor(key_padding_mask, "key_padding_mask", query, "True = the key is padding")
    shape = tuple(key_padding_mask.shape)
    batch_shape = torch.Size(batch_shape)
    if key_padding_mask.dim() >= 1 and shape[-1] == source_len:
        if key_padding_mask.dim() == 1:
            padding = key_padding_mask
        elif (
            key_padding_mask.dim() == 2
            and len(batch_shape) >= 1
            and shape[0] in (1, batch_shape[0])
        ):
            # (N, S): one padding per entry of the first batch dim, as in
            # torch.nn.MultiheadAttention, shared by the heads of 4-d inputs.
            padding = key_padding_mask.reshape(shape[0], *[1] * (len(batch_shape) - 1), source_len)
        elif key_padding_mask.dim() == len(batch_shape) + 1 and _broadcasts(
            torch.Size(shape[:-1]), batch_shape
        ):
            padding = key_padding_mask
        else:
            padding = None
        if padding is not None:
            return padding.logical_not().unsqueeze(-2)
    batch = tuple(batch_shape)
    allowed = [f"({source_len},)"]
    if batch:
        allowed.append(f"({batch[0]}, {source_len}) (N, S)")
    if len(batch) > 1:
        allowed.append(f"{batch + (source_len,)} or broadcastable to it")
    raise ValueError(
        f"key_padding_mask of shape {shape} does not fit keys of length S={source_len} and "
        f"batch shape {batch}: allowed shapes are {', '.join(allowed)}"
    )
