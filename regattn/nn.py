"""``torch.nn.MultiheadAttention`` with a regularized mapping in place of softmax.

``MultiheadAttention`` takes the constructor arguments, parameter names, forward
signature, mask conventions and output shapes of ``torch.nn.MultiheadAttention``,
plus a keyword-only ``mapping`` and its parameters, so switching a model to sparse
or structured attention is one line::

    attn = regattn.nn.MultiheadAttention(512, 8, dropout=0.1, mapping="fusedmax", lam=0.1)

and a state dict loads either way between the two classes.
"""

import math
import warnings

import torch
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from .dot_product import _attend, _check_dropout, _mapping_function
from .registry import mapping_params

_CONSTRUCTOR_ARGUMENTS = (
    "torch.nn.MultiheadAttention's arguments (embed_dim, num_heads, dropout, bias, "
    "add_bias_kv, add_zero_attn, kdim, vdim, batch_first, device, dtype), mapping"
)


class MultiheadAttention(torch.nn.Module):
    """Multi-head attention (Vaswani et al., 2017) with any mapping of
    ``regattn.MAPPINGS`` turning each head's scores into weights (Niculae &
    Blondel, 2017).

    A drop-in for ``torch.nn.MultiheadAttention``: same arguments, same parameters
    (``in_proj_weight``, or ``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight``
    when ``kdim`` or ``vdim`` differ from ``embed_dim``; ``in_proj_bias``;
    ``out_proj``; ``bias_k``, ``bias_v``) and the same initialization, so
    ``load_state_dict`` works in both directions; with ``mapping="softmax"`` the
    outputs and weights are torch's to float precision.

    Parameters
    ----------
    embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn
        As in ``torch.nn.MultiheadAttention``. ``dropout`` applies to the weights in
        training mode only.
    kdim, vdim, batch_first, device, dtype
        As in ``torch.nn.MultiheadAttention``.
    mapping : str
        softmax (the default), sparsemax, fusedmax, oscarmax, sq_pnorm_max or
        entmax15.
    **params
        The mapping's parameters (``gamma``; ``lam`` for fusedmax and oscarmax;
        ``p`` for sq_pnorm_max), validated by ``regattn.get_mapping``; the
        mapping's defaults otherwise.

    Notes
    -----
    The masks of ``forward`` follow ``torch.nn.MultiheadAttention``, **not**
    ``regattn.attention`` / ``scaled_dot_product_attention``: a bool ``attn_mask``
    or ``key_padding_mask`` is True where attention is NOT allowed (the key is
    masked out or padding). A float mask is added to the scores; its ``-inf``
    entries become masked positions handed to the mapping's ``mask=`` argument, so
    for fusedmax and oscarmax they never join a group with kept keys (fusedmax
    treats the kept keys as adjacent). A large finite negative value such as -1e9
    is a score like any other: use ``-inf`` or a bool mask to mask.

    Differences from torch: a query row whose keys are all masked gets zero weights
    and output ``out_proj.bias`` (torch returns NaN there); ``is_causal=True``
    requires ``attn_mask``, as in torch, and the given ``attn_mask`` is always
    used (torch uses it as a hint and may substitute a causal mask); there is no
    fused kernel and no NestedTensor input. ``nn.TransformerEncoderLayer``
    and ``nn.TransformerEncoder`` have an inference fast path (eval mode,
    ``batch_first=True``, no autograd) that would read ``self_attn``'s weights and
    compute softmax attention without calling this module; ``merge_masks``, which
    that path calls first, raises instead. Disable the path with
    ``torch.backends.mha.set_fastpath_enabled(False)`` for inference with this module
    inside such a layer (``nn.TransformerDecoderLayer`` has no such path).

    Examples
    --------
    >>> attn = MultiheadAttention(16, 4, batch_first=True, mapping="fusedmax", lam=0.1)
    >>> x = torch.randn(2, 5, 16)
    >>> pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    >>> out, weights = attn(x, x, x, key_padding_mask=pad)
    >>> out.shape, weights.shape, bool(weights[1, :, 3:].eq(0).all())
    (torch.Size([2, 5, 16]), torch.Size([2, 5, 5]), True)
    """

    __constants__ = ["batch_first"]

    def __init__(
        self,
        embed_dim,
        num_heads,
        dropout=0.0,
        bias=True,
        add_bias_kv=False,
        add_zero_attn=False,
        kdim=None,
        vdim=None,
        batch_first=False,
        device=None,
        dtype=None,
        *,
        mapping="softmax",
        **params,
    ):
        for name, size in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
                raise ValueError(f"{name} must be a positive integer, got {size!r}")
        for name, size in (("kdim", kdim), ("vdim", vdim)):
            if size is not None and (
                isinstance(size, bool) or not isinstance(size, int) or size <= 0
            ):
                raise ValueError(f"{name} must be None or a positive integer, got {size!r}")
        if embed_dim % num_heads:
            raise ValueError(
                f"embed_dim must be divisible by num_heads, got embed_dim={embed_dim} and "
                f"num_heads={num_heads}"
            )
        function = _mapping_function(
            mapping, params, "MultiheadAttention()", _CONSTRUCTOR_ARGUMENTS
        )
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.num_heads = num_heads
        self.dropout = _check_dropout(dropout, "dropout")
        self.batch_first = batch_first
        self.head_dim = embed_dim // num_heads
        self.add_zero_attn = add_zero_attn
        self.mapping = mapping
        self.mapping_params = {**mapping_params(mapping), **function.keywords}
        self._function = function

        Parameter = torch.nn.Parameter
        if self._qkv_same_embed_dim:
            self.in_proj_weight = Parameter(torch.empty(3 * embed_dim, embed_dim, **factory_kwargs))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.q_proj_weight = Parameter(torch.empty(embed_dim, embed_dim, **factory_kwargs))
            self.k_proj_weight = Parameter(torch.empty(embed_dim, self.kdim, **factory_kwargs))
            self.v_proj_weight = Parameter(torch.empty(embed_dim, self.vdim, **factory_kwargs))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = Parameter(torch.empty(3 * embed_dim, **factory_kwargs))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = NonDynamicallyQuantizableLinear(
            embed_dim, embed_dim, bias=bias, **factory_kwargs
        )
        if add_bias_kv:
            self.bias_k = Parameter(torch.empty(1, 1, embed_dim, **factory_kwargs))
            self.bias_v = Parameter(torch.empty(1, 1, embed_dim, **factory_kwargs))
        else:
            self.bias_k = self.bias_v = None
        self._reset_parameters()

    def _reset_parameters(self):
        # torch.nn.MultiheadAttention's initialization, so that swapping the class
        # leaves a model's starting point distributed as before.
        init = torch.nn.init
        if self._qkv_same_embed_dim:
            init.xavier_uniform_(self.in_proj_weight)
        else:
            init.xavier_uniform_(self.q_proj_weight)
            init.xavier_uniform_(self.k_proj_weight)
            init.xavier_uniform_(self.v_proj_weight)
        if self.in_proj_bias is not None:
            init.constant_(self.in_proj_bias, 0.0)
            init.constant_(self.out_proj.bias, 0.0)
        if self.bias_k is not None:
            init.xavier_normal_(self.bias_k)
            init.xavier_normal_(self.bias_v)

    def forward(
        self,
        query,
        key,
        value,
        key_padding_mask=None,
        need_weights=True,
        attn_mask=None,
        average_attn_weights=True,
        is_causal=False,
    ):
        """Attention of ``query`` over ``key`` / ``value``, as
        ``torch.nn.MultiheadAttention.forward``.

        Parameters
        ----------
        query : torch.Tensor
            ``(L, N, E)``, ``(N, L, E)`` when ``batch_first``, or ``(L, E)`` unbatched.
        key : torch.Tensor
            ``(S, N, kdim)``, ``(N, S, kdim)`` when ``batch_first``, or ``(S, kdim)``.
        value : torch.Tensor
            ``(S, N, vdim)``, ``(N, S, vdim)`` when ``batch_first``, or ``(S, vdim)``.
        key_padding_mask : torch.Tensor, optional
            ``(N, S)``, or ``(S,)`` unbatched. Bool: **True = padding**, ignored. Float:
            added to the scores of the key; ``-inf`` masks it.
        need_weights : bool
            Also return the weights.
        attn_mask : torch.Tensor, optional
            ``(L, S)`` or ``(N * num_heads, L, S)`` (``(num_heads, L, S)`` unbatched).
            Bool: **True = NOT allowed to attend** (torch's MultiheadAttention
            convention, the opposite of scaled_dot_product_attention's). Float: added
            to the scores; ``-inf`` masks the position.
        average_attn_weights : bool
            Average the returned weights over heads.
        is_causal : bool
            A hint that ``attn_mask`` is the causal mask; requires ``attn_mask``,
            which is used as given.

        Returns
        -------
        attn_output : torch.Tensor
            ``(L, N, E)``, ``(N, L, E)`` when ``batch_first``, or ``(L, E)`` unbatched.
        attn_weights : torch.Tensor or None
            None unless ``need_weights``. ``(N, L, S')`` averaged over heads, else
            ``(N, num_heads, L, S')``; without the ``N`` dim for unbatched input.
            ``S'`` counts the keys added by ``add_bias_kv`` and ``add_zero_attn``.
            The weights are those that multiplied the values, after dropout.
        """
        is_batched = self._check_inputs(query, key, value, key_padding_mask, attn_mask)
        if is_causal and attn_mask is None:
            raise ValueError(
                "is_causal=True needs attn_mask (as with torch.nn.MultiheadAttention): pass "
                "the causal mask, e.g. nn.Transformer.generate_square_subsequent_mask(L)"
            )
        if (
            key_padding_mask is not None
            and attn_mask is not None
            and key_padding_mask.dtype != attn_mask.dtype
        ):
            warnings.warn(
                "Support for mismatched key_padding_mask and attn_mask is deprecated. Use "
                "same type for both instead.",
                stacklevel=2,
            )
        # Work in torch's (seq, batch, feature) layout.
        if not is_batched:
            query, key, value = (x.unsqueeze(1) for x in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        tgt_len, bsz, _ = query.shape
        src_len = key.shape[0]
        heads, head_dim = self.num_heads, self.head_dim

        keep, bias = self._merge_masks(attn_mask, key_padding_mask, bsz, query.dtype)
        q, k, v = self._in_projection(query, key, value)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(1, bsz, -1)])
            v = torch.cat([v, self.bias_v.expand(1, bsz, -1)])
        # (seq, N, E) -> (N, heads, seq, head_dim)
        q = q.reshape(tgt_len, bsz, heads, head_dim).permute(1, 2, 0, 3)
        k = k.reshape(k.shape[0], bsz, heads, head_dim).permute(1, 2, 0, 3)
        v = v.reshape(v.shape[0], bsz, heads, head_dim).permute(1, 2, 0, 3)
        if self.add_zero_attn:
            zeros = k.new_zeros(bsz, heads, 1, head_dim)
            k = torch.cat([k, zeros], dim=2)
            v = torch.cat([v, zeros], dim=2)
        added = k.shape[2] - src_len
        if added:  # the added keys take part in every row
            if keep is not None:
                keep = torch.cat([keep, keep.new_ones(*keep.shape[:-1], added)], dim=-1)
            if bias is not None:
                bias = torch.cat([bias, bias.new_zeros(*bias.shape[:-1], added)], dim=-1)

        output, weights = _attend(
            q,
            k,
            v,
            self._function,
            keep=keep,
            bias=bias,
            scale=math.sqrt(1.0 / head_dim),  # torch's expression, for identical rounding
            dropout_p=self.dropout if self.training else 0.0,
        )
        output = output.permute(2, 0, 1, 3).reshape(tgt_len, bsz, self.embed_dim)
        output = torch.nn.functional.linear(output, self.out_proj.weight, self.out_proj.bias)
        if not is_batched:
            output = output.squeeze(1)
        elif self.batch_first:
            output = output.transpose(0, 1)
        if not need_weights:
            return output, None
        if average_attn_weights:
            weights = weights.mean(dim=1)
        if not is_batched:
            weights = weights.squeeze(0)
        return output, weights

    def _in_projection(self, query, key, value):
        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        if self.in_proj_bias is None:
            b_q = b_k = b_v = None
        else:
            b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        linear = torch.nn.functional.linear
        return linear(query, w_q, b_q), linear(key, w_k, b_k), linear(value, w_v, b_v)

    def _merge_masks(self, attn_mask, key_padding_mask, bsz, dtype):
        """torch's masks as one bool mask (True = take part) and one additive float
        mask, each None when absent, broadcastable to the scores (N, heads, L, S)."""
        keep = bias = None
        for mask, name in ((attn_mask, "attn_mask"), (key_padding_mask, "key_padding_mask")):
            if mask is None:
                continue
            if name == "attn_mask":
                if mask.dim() == 2:
                    mask = mask.reshape(1, 1, *mask.shape)
                else:  # (N * heads, L, S), batch-major as torch lays out the heads
                    mask = mask.reshape(bsz, self.num_heads, *mask.shape[1:])
            else:
                mask = mask.reshape(bsz, 1, 1, mask.shape[-1])
            if mask.dtype == torch.bool:
                part_keep, part_bias = mask.logical_not(), None
            else:
                part_keep = mask != -math.inf
                part_bias = mask.to(dtype).masked_fill(part_keep.logical_not(), 0.0)
            keep = part_keep if keep is None else keep & part_keep
            if part_bias is not None:
                bias = part_bias if bias is None else bias + part_bias
        return keep, bias

    def _check_inputs(self, query, key, value, key_padding_mask, attn_mask):
        """torch.nn.MultiheadAttention's shape rules, with errors naming the argument;
        returns whether the input is batched."""
        for name, tensor in (("query", query), ("key", key), ("value", value)):
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
            if not tensor.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
        if query.dim() not in (2, 3):
            layout = "(N, L, E)" if self.batch_first else "(L, N, E)"
            raise ValueError(
                f"query must be 3-D {layout} (batch_first={self.batch_first}) or 2-D (L, E) "
                f"for unbatched input, got shape {tuple(query.shape)}"
            )
        is_batched = query.dim() == 3
        shapes = f"query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}"
        if key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(
                f"key and value must have as many dimensions as query ({query.dim()}-D), got "
                f"{shapes}"
            )
        for name, tensor, size in (
            ("query", query, self.embed_dim),
            ("key", key, self.kdim),
            ("value", value, self.vdim),
        ):
            if tensor.shape[-1] != size:
                dim_name = {"query": "embed_dim", "key": "kdim", "value": "vdim"}[name]
                raise ValueError(
                    f"{name} must have {dim_name}={size} features in its last dimension, got "
                    f"shape {tuple(tensor.shape)}"
                )
        if is_batched and self.batch_first:
            (bsz, tgt_len), (key_bsz, src_len) = query.shape[:2], key.shape[:2]
            layout = "batch_first=True: query (N, L, E), key and value (N, S, ...)"
            value_bsz, value_len = value.shape[:2]
        elif is_batched:
            (tgt_len, bsz), (src_len, key_bsz) = query.shape[:2], key.shape[:2]
            layout = "batch_first=False: query (L, N, E), key and value (S, N, ...)"
            value_len, value_bsz = value.shape[:2]
        else:
            tgt_len, src_len, value_len = query.shape[0], key.shape[0], value.shape[0]
            bsz = key_bsz = value_bsz = 1
            layout = "unbatched: query (L, E), key and value (S, ...)"
        if (key_bsz, src_len) != (value_bsz, value_len) or key_bsz != bsz:
            raise ValueError(
                "query, key and value must have the same batch size, and key and value the "
                f"same length S ({layout}), got {shapes}"
            )
        if key_padding_mask is not None:
            _check_mask_dtype(key_padding_mask, "key_padding_mask", "True = padding")
            expected = (bsz, src_len) if is_batched else (src_len,)
            if tuple(key_padding_mask.shape) != expected:
                form = "(N, S)" if is_batched else "(S,) for unbatched input"
                raise ValueError(
                    f"key_padding_mask must have shape {form} = {expected}, got "
                    f"{tuple(key_padding_mask.shape)}"
                )
        if attn_mask is not None:
            _check_mask_dtype(attn_mask, "attn_mask", "True = NOT allowed to attend")
            two = (tgt_len, src_len)
            three = (bsz * self.num_heads, tgt_len, src_len)
            if tuple(attn_mask.shape) not in (two, three):
                form = "N * num_heads" if is_batched else "num_heads"
                raise ValueError(
                    f"attn_mask must have shape (L, S) = {two} or ({form}, L, S) = {three}, "
                    f"got {tuple(attn_mask.shape)}"
                )
        for name, mask in (("key_padding_mask", key_padding_mask), ("attn_mask", attn_mask)):
            if mask is not None and mask.device != query.device:
                raise ValueError(
                    f"{name} is on {mask.device} but query is on {query.device}: put both on "
                    "the same device"
                )
        return is_batched

    def merge_masks(self, attn_mask, key_padding_mask, query):
        """Refuses torch's fused inference path.

        ``torch.nn.TransformerEncoderLayer`` (and so ``TransformerEncoder``) calls
        ``self_attn.merge_masks`` only on its inference fast path, just before it
        computes softmax attention from ``self_attn``'s weights in a fused kernel
        without calling ``forward``, which would silently drop the mapping.

        Raises
        ------
        RuntimeError
            Always, saying how to turn that fast path off.
        """
        raise RuntimeError(
            "regattn.nn.MultiheadAttention does not run on torch's fused inference path: "
            "nn.TransformerEncoderLayer / nn.TransformerEncoder in eval mode without autograd "
            "would compute softmax attention from this module's weights, ignoring "
            f"mapping={self.mapping!r}. Call torch.backends.mha.set_fastpath_enabled(False) "
            "before inference to have them call this module instead"
        )

    def extra_repr(self):
        params = "".join(f", {key}={value}" for key, value in self.mapping_params.items())
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
            f"mapping={self.mapping!r}{params}, dropout={self.dropout}, "
            f"batch_first={self.batch_first}"
        )


def _check_mask_dtype(mask, name, convention):
    if not isinstance(mask, torch.Tensor):
        raise TypeError(
            f"{name} must be a bool ({convention}) or float (added to the scores) tensor, "
            f"got {type(mask).__name__}"
        )
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(
            f"{name} must be a bool ({convention}) or float (added to the scores) tensor, "
            f"got {mask.dtype}"
        )
