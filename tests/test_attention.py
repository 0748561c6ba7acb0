"""regattn.dot_product.attention against torch.nn.functional.scaled_dot_product_attention,
regattn.nn.MultiheadAttention against torch.nn.MultiheadAttention, the sparse mappings
under every mask, gradients, and the errors on bad input."""

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import CASE_IDS, CASES, case_params

import regattn
from regattn.dot_product import attention
from regattn.nn import MultiheadAttention

SPARSE_CASES = [(name, params) for name, params in CASES if name != "softmax"]
SPARSE_IDS = [
    case_id for case_id, (name, _) in zip(CASE_IDS, CASES, strict=True) if name != "softmax"
]
sparse_case_params = pytest.mark.parametrize(("name", "params"), SPARSE_CASES, ids=SPARSE_IDS)

N, H, L, S, E, EV = 2, 3, 4, 6, 8, 5


def qkv(batch=(N, H), dtype=torch.float32):
    return (
        torch.randn(*batch, L, E, dtype=dtype),
        torch.randn(*batch, S, E, dtype=dtype),
        torch.randn(*batch, S, EV, dtype=dtype),
    )


def random_keep(*shape):
    """A bool mask (True = take part) that keeps key 0 in every row."""
    keep = torch.rand(*shape) > 0.4
    keep[..., 0] = True
    return keep


def padding():
    """(N, S) padding (True = pad): batch entry 1 has its last 3 keys padded."""
    pad = torch.zeros(N, S, dtype=torch.bool)
    pad[1, S - 3 :] = True
    return pad


# ------------------------------------------------- attention == SDPA with softmax


def sdpa_cases():
    causal = torch.ones(L, S, dtype=torch.bool).tril()
    pad = padding()
    pad_keep = pad.logical_not()[:, None, None, :]
    keep2 = random_keep(L, S)
    keep4 = random_keep(N, H, L, S)
    pad3 = torch.rand(N, H, S) > 0.6
    pad3[..., 0] = False
    return {
        "none": ({}, {}),
        "scale": ({"scale": 0.3}, {"scale": 0.3}),
        "attn_mask 2-d": ({"attn_mask": keep2}, {"attn_mask": keep2}),
        "attn_mask 4-d": ({"attn_mask": keep4}, {"attn_mask": keep4}),
        "attn_mask broadcast": (
            {"attn_mask": keep4[:, :1, :1]},
            {"attn_mask": keep4[:, :1, :1]},
        ),
        "causal": ({"is_causal": True}, {"is_causal": True}),
        "causal scale": ({"is_causal": True, "scale": 2.0}, {"is_causal": True, "scale": 2.0}),
        "padding (N, S)": ({"key_padding_mask": pad}, {"attn_mask": pad_keep}),
        "padding (S,)": ({"key_padding_mask": pad[1]}, {"attn_mask": pad_keep[1]}),
        "padding (N, H, S)": (
            {"key_padding_mask": pad3},
            {"attn_mask": pad3.logical_not().unsqueeze(-2)},
        ),
        "padding and attn_mask": (
            {"key_padding_mask": pad, "attn_mask": keep2},
            {"attn_mask": pad_keep & keep2},
        ),
        "padding and causal": (
            {"key_padding_mask": pad, "is_causal": True},
            {"attn_mask": pad_keep & causal},
        ),
    }


@pytest.mark.parametrize("case", list(sdpa_cases()))
def test_softmax_matches_sdpa(case):
    ours, theirs = sdpa_cases()[case]
    q, k, v = qkv()
    expected = F.scaled_dot_product_attention(q, k, v, **theirs)
    output, weights = attention(q, k, v, "softmax", need_weights=True, **ours)
    torch.testing.assert_close(output, expected)
    assert weights.shape == (N, H, L, S)
    torch.testing.assert_close(output, weights @ v)


def test_softmax_matches_sdpa_for_3d_unbatched_and_broadcast_inputs():
    q, k, v = qkv(batch=(N,))
    pad = padding()
    torch.testing.assert_close(
        attention(q, k, v, "softmax", key_padding_mask=pad),
        F.scaled_dot_product_attention(q, k, v, attn_mask=pad.logical_not()[:, None, :]),
    )
    q, k, v = qkv(batch=())
    torch.testing.assert_close(
        attention(q, k, v, "softmax", is_causal=True),
        F.scaled_dot_product_attention(q, k, v, is_causal=True),
    )
    q, k, v = torch.randn(N, H, L, E), torch.randn(1, H, S, E), torch.randn(N, 1, S, EV)
    output = attention(q, k, v, "softmax", attn_mask=random_keep(N, 1, L, S))
    assert output.shape == (N, H, L, EV)
    # A mask with a batch dim only value has: the scores are broadcast to it.
    q, k, v = torch.randn(1, L, E), torch.randn(1, S, E), torch.randn(N, S, EV)
    keep = random_keep(N, L, S)
    torch.testing.assert_close(
        attention(q, k, v, "softmax", attn_mask=keep),
        F.scaled_dot_product_attention(q.expand(N, L, E), k.expand(N, S, E), v, attn_mask=keep),
    )


def test_softmax_weights_and_fully_masked_row_like_sdpa():
    q, k, v = qkv()
    keep = random_keep(N, H, L, S)
    keep[0, 1, 2] = False  # no key at all for this row: zeros, as SDPA gives
    output, weights = attention(q, k, v, "softmax", attn_mask=keep, need_weights=True)
    scores = (q @ k.transpose(-2, -1) / math.sqrt(E)).masked_fill(keep.logical_not(), -math.inf)
    expected = torch.softmax(scores, -1).nan_to_num(0.0)
    torch.testing.assert_close(weights, expected)
    assert weights[0, 1, 2].eq(0).all() and output[0, 1, 2].eq(0).all()
    torch.testing.assert_close(output, F.scaled_dot_product_attention(q, k, v, attn_mask=keep))


def test_bfloat16_matches_sdpa():
    q, k, v = qkv(dtype=torch.bfloat16)
    output = attention(q, k, v, "softmax", is_causal=True)
    assert output.dtype == torch.bfloat16
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    torch.testing.assert_close(output.float(), expected, rtol=2e-2, atol=2e-2)


def test_dropout_zeroes_and_rescales_the_weights():
    q, k, v = qkv()
    _, plain = attention(q, k, v, "sparsemax", need_weights=True)
    output, dropped = attention(q, k, v, "sparsemax", dropout_p=0.5, need_weights=True)
    kept = dropped != 0
    assert kept.any() and (~kept & (plain != 0)).any()
    torch.testing.assert_close(dropped[kept], 2 * plain[kept])
    torch.testing.assert_close(output, dropped @ v)
    # dropout_p=0 (the evaluation setting) is deterministic.
    torch.testing.assert_close(attention(q, k, v, "sparsemax"), plain @ v)


# ------------------------------------------------------------ the sparse mappings


def combined_masks():
    """attn_mask (True = take part) and key_padding_mask (True = pad), and their
    combination broadcast to (N, H, L, S); batch entry 1, row 1 has no key left."""
    attn_mask = random_keep(L, S)
    attn_mask[1] = False
    attn_mask[1, S - 2 :] = True  # only keys that batch entry 1 pads
    pad = padding()
    keep = (attn_mask & pad.logical_not()[:, None, None, :]).expand(N, H, L, S)
    assert not keep[1, :, 1].any() and keep[0, :, 1].any()
    return attn_mask, pad, keep


@sparse_case_params
def test_weights_are_the_mapping_of_the_scaled_scores(name, params):
    q, k, v = qkv(dtype=torch.float64)
    attn_mask, pad, keep = combined_masks()
    output, weights = attention(
        q, k, v, name, attn_mask=attn_mask, key_padding_mask=pad, need_weights=True, **params
    )
    scores = q @ k.transpose(-2, -1) / math.sqrt(E)
    expected = regattn.get_mapping(name, **params)(scores, mask=keep)
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(output, weights @ v)
    assert weights[~keep].eq(0).all()
    sums = weights.sum(-1)
    torch.testing.assert_close(sums, keep.any(-1).to(sums.dtype))
    assert output[1, :, 1].eq(0).all()


@sparse_case_params
def test_masked_keys_do_not_couple_with_kept_ones(name, params):
    q, k, v = qkv(dtype=torch.float64)
    attn_mask, pad, keep = combined_masks()
    _, weights = attention(
        q, k, v, name, attn_mask=attn_mask, key_padding_mask=pad, need_weights=True, **params
    )
    # Whatever the padded keys hold, the weights do not move ...
    k_other = torch.where(pad[:, None, :, None], 100 * torch.randn_like(k), k)
    _, weights_other = attention(
        q, k_other, v, name, attn_mask=attn_mask, key_padding_mask=pad, need_weights=True, **params
    )
    torch.testing.assert_close(weights_other, weights, rtol=0, atol=1e-12)
    # ... and each row is the mapping of its kept scores alone, side by side (for
    # fusedmax, the kept keys are adjacent).
    mapping = regattn.get_mapping(name, **params)
    scores = q @ k.transpose(-2, -1) / math.sqrt(E)
    for index in [(0, 0, 0), (0, 2, 3), (1, 1, 0), (1, 0, 2)]:
        kept = keep[index]
        alone = mapping(scores[index][kept])
        torch.testing.assert_close(weights[index][kept], alone)


@sparse_case_params
def test_causal_and_padding_give_zero_weight_to_masked_keys(name, params):
    q, k, v = qkv()
    pad = padding()
    _, weights = attention(
        q, k, v, name, is_causal=True, key_padding_mask=pad, need_weights=True, **params
    )
    keep = torch.ones(L, S, dtype=torch.bool).tril() & pad.logical_not()[:, None, None, :]
    assert weights.masked_select(~keep).eq(0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(N, H, L))


# -------------------------------------------------------------------- gradients


@case_params()
def test_gradients_flow_through_attention(name, params):
    q, k, v = (t.mul(2).requires_grad_() for t in qkv(dtype=torch.float64))
    attn_mask, pad, _ = combined_masks()
    output = attention(q, k, v, name, attn_mask=attn_mask, key_padding_mask=pad, **params)
    (output * torch.randn_like(output)).sum().backward()
    for tensor in (q, k, v):
        assert tensor.grad is not None and tensor.grad.isfinite().all()
        assert tensor.grad.abs().sum() > 0
    small = [t.detach()[:1, :1].clone().requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(
        lambda q, k, v: attention(q, k, v, name, key_padding_mask=pad[1], **params),
        small,
        atol=1e-6,
    )


@case_params()
def test_gradients_flow_through_the_module(name, params):
    attn = MultiheadAttention(E, 2, dropout=0.1, mapping=name, **params)
    x = torch.randn(L, N, E, requires_grad=True)
    pad = torch.zeros(N, L, dtype=torch.bool)
    pad[1, -1] = True
    output, _ = attn(x, x, x, key_padding_mask=pad)
    output.sum().backward()
    assert x.grad.isfinite().all() and x.grad.abs().sum() > 0
    for parameter_name, parameter in attn.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert parameter.grad.isfinite().all(), parameter_name


# ------------------------------------- MultiheadAttention == torch's, softmax weights

CONFIGS = {
    "default": {},
    "batch_first": {"batch_first": True},
    "kdim/vdim": {"kdim": 6, "vdim": 10},
    "bias_kv": {"add_bias_kv": True},
    "zero_attn": {"add_zero_attn": True},
    "no bias": {"bias": False},
    "all": {
        "batch_first": True,
        "kdim": 6,
        "vdim": 10,
        "add_bias_kv": True,
        "add_zero_attn": True,
    },
}
MHA_HEADS = 2
MASKS = [
    "none",
    "padding bool",
    "padding float",
    "attn 2-d bool",
    "attn 3-d bool",
    "attn 2-d float",
    "attn 3-d float",
    "both bool",
    "both float",
]


def module_pair(**config):
    """A torch.nn.MultiheadAttention and ours with its weights; biases made nonzero."""
    theirs = torch.nn.MultiheadAttention(E, MHA_HEADS, **config)
    with torch.no_grad():
        for parameter in theirs.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    ours = MultiheadAttention(E, MHA_HEADS, **config)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def module_inputs(config, batched=True):
    kdim, vdim = config.get("kdim", E), config.get("vdim", E)

    def sequence(length, features):
        if not batched:
            return torch.randn(length, features)
        if config.get("batch_first"):
            return torch.randn(N, length, features)
        return torch.randn(length, N, features)

    return sequence(L, E), sequence(S, kdim), sequence(S, vdim)


def torch_masks(kind, batched=True):
    """torch.nn.MultiheadAttention's masks: bool True = masked out; float added,
    -inf masked. Key 0 is never masked, so no row is empty."""
    batch = N if batched else 1
    heads = (batch * MHA_HEADS,) if batched else (MHA_HEADS,)

    def bool_mask(*shape):
        mask = torch.rand(*shape) < 0.4
        mask[..., 0] = False
        return mask

    def float_mask(*shape):
        mask = torch.randn(*shape)
        return mask.masked_fill(bool_mask(*shape), -math.inf)

    pad_shape = (batch, S) if batched else (S,)
    masks = {}
    if kind.startswith("padding") or kind.startswith("both"):
        masks["key_padding_mask"] = (bool_mask if "bool" in kind else float_mask)(*pad_shape)
    if kind.startswith("attn") or kind.startswith("both"):
        shape = (*heads, L, S) if "3-d" in kind else (L, S)
        masks["attn_mask"] = (bool_mask if "bool" in kind else float_mask)(*shape)
    return masks


def compare(theirs, ours, inputs, masks, variants=((True, True), (True, False), (False, True))):
    for need_weights, average in variants:
        kwargs = {**masks, "need_weights": need_weights, "average_attn_weights": average}
        expected_output, expected_weights = theirs(*inputs, **kwargs)
        output, weights = ours(*inputs, **kwargs)
        torch.testing.assert_close(output, expected_output)
        if need_weights:
            assert weights.shape == expected_weights.shape
            torch.testing.assert_close(weights, expected_weights)
        else:
            assert weights is None and expected_weights is None


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_module_matches_torch(config_name, mask_kind):
    config = CONFIGS[config_name]
    theirs, ours = module_pair(**config)
    compare(theirs, ours, module_inputs(config), torch_masks(mask_kind))


@pytest.mark.parametrize("mask_kind", ["none", "padding bool", "attn 3-d float", "both bool"])
@pytest.mark.parametrize("config_name", ["default", "all"])
def test_module_matches_torch_unbatched(config_name, mask_kind):
    config = CONFIGS[config_name]
    theirs, ours = module_pair(**config)
    compare(theirs, ours, module_inputs(config, batched=False), torch_masks(mask_kind, False))


def test_module_matches_torch_causal_self_attention_and_fast_path():
    theirs, ours = module_pair(batch_first=True)
    x = torch.randn(N, L, E)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(L)
    for mask in (causal, causal.isinf()):  # float and bool forms
        compare(theirs, ours, (x, x, x), {"attn_mask": mask, "is_causal": True})
    # In eval mode without autograd torch takes its fused inference path.
    theirs.eval(), ours.eval()
    pad = torch.zeros(N, L, dtype=torch.bool)
    pad[0, -2:] = True
    with torch.no_grad():
        compare(theirs, ours, (x, x, x), {"key_padding_mask": pad})


def test_module_mixed_mask_types_warn_like_torch():
    theirs, ours = module_pair()
    masks = {"key_padding_mask": torch_masks("padding bool")["key_padding_mask"]}
    masks["attn_mask"] = torch_masks("attn 2-d float")["attn_mask"]
    with pytest.warns(UserWarning, match="mismatched key_padding_mask and attn_mask"):
        compare(theirs, ours, module_inputs({}), masks, variants=((True, True),))


@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_state_dicts_load_both_ways(config_name):
    config = CONFIGS[config_name]
    theirs, ours = module_pair(**config)
    their_state, our_state = theirs.state_dict(), ours.state_dict()
    assert list(our_state) == list(their_state)
    assert all(our_state[key].shape == their_state[key].shape for key in their_state)
    fresh = torch.nn.MultiheadAttention(E, MHA_HEADS, **config)
    fresh.load_state_dict(our_state)  # strict
    inputs = module_inputs(config)
    torch.testing.assert_close(fresh(*inputs)[0], ours(*inputs)[0])
    assert isinstance(ours.out_proj, torch.nn.Linear)
    torch.testing.assert_close(copy.deepcopy(ours)(*inputs)[0], ours(*inputs)[0])


def test_module_dropout_only_in_training():
    theirs, ours = module_pair(dropout=0.5)
    inputs = module_inputs({})
    ours.train()
    _, weights = ours(*inputs, average_attn_weights=False)
    assert weights.eq(0).any()
    theirs.eval(), ours.eval()
    compare(theirs, ours, inputs, {})


# --------------------------------------- MultiheadAttention with the sparse mappings


def manual_heads(attn, query, key, value, keep, bias):
    """Per-head weights and output of attn on (L, N, .) inputs, computed directly."""
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3)

    def heads(x, w, b):  # (seq, N, E) -> (N, heads, seq, head_dim)
        projected = x @ w.T + b
        return projected.reshape(x.shape[0], N, MHA_HEADS, -1).permute(1, 2, 0, 3)

    q, k, v = heads(query, w_q, b_q), heads(key, w_k, b_k), heads(value, w_v, b_v)
    scores = q @ k.transpose(-2, -1) / math.sqrt(attn.head_dim) + bias
    weights = regattn.get_mapping(attn.mapping, **attn.mapping_params)(scores, mask=keep)
    mixed = (weights @ v).permute(2, 0, 1, 3).reshape(L, N, E)
    return weights, attn.out_proj(mixed)


@sparse_case_params
def test_module_weights_are_the_mapping_of_each_head(name, params):
    attn = MultiheadAttention(E, MHA_HEADS, mapping=name, **params)
    with torch.no_grad():
        attn.in_proj_bias.normal_()
    query, key, value = (t.double() for t in module_inputs({}))
    attn.double()
    pad = padding()
    attn_mask = torch.randn(L, S, dtype=torch.float64)  # finite offsets, and -inf
    attn_mask[1, 2:] = -math.inf
    keep = pad.logical_not()[:, None, None, :] & (attn_mask != -math.inf)
    bias = attn_mask.masked_fill(attn_mask == -math.inf, 0.0)
    float_pad = torch.zeros(N, S, dtype=torch.float64).masked_fill(pad, -math.inf)
    output, weights = attn(
        query,
        key,
        value,
        key_padding_mask=float_pad,
        attn_mask=attn_mask,
        average_attn_weights=False,
    )
    expected_weights, expected_output = manual_heads(attn, query, key, value, keep, bias)
    torch.testing.assert_close(weights, expected_weights)
    torch.testing.assert_close(output, expected_output)
    assert weights.masked_select(~keep.expand_as(weights)).eq(0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(N, MHA_HEADS, L, dtype=torch.float64))


def test_module_fully_masked_row_gives_zero_weights_not_nan():
    attn = MultiheadAttention(E, MHA_HEADS, mapping="fusedmax", lam=0.1)
    query, key, value = module_inputs({})
    attn_mask = torch.zeros(L, S, dtype=torch.bool)
    attn_mask[2] = True  # row 2 may attend to nothing
    output, weights = attn(query, key, value, attn_mask=attn_mask)
    assert weights[:, 2].eq(0).all() and output.isfinite().all()
    torch.testing.assert_close(output[2], attn.out_proj.bias.expand(N, E))


def test_module_inside_a_transformer_encoder_layer():
    layer = torch.nn.TransformerEncoderLayer(E, MHA_HEADS, 16, dropout=0.0, batch_first=True)
    ours = MultiheadAttention(E, MHA_HEADS, batch_first=True, mapping="sparsemax")
    ours.load_state_dict(layer.self_attn.state_dict())
    layer.self_attn = ours
    x = torch.randn(N, L, E)
    training_output = layer(x)  # training mode: the layer calls the module
    layer.eval()
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"set_fastpath_enabled\(False\)"):
        layer(x)  # torch's fused path would compute softmax from the weights
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            torch.testing.assert_close(layer(x), training_output)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)


def test_module_repr_and_mapping_params():
    attn = MultiheadAttention(E, MHA_HEADS, mapping="oscarmax", lam=0.05)
    assert attn.mapping == "oscarmax"
    assert attn.mapping_params == {"gamma": 1.0, "lam": 0.05}
    assert "mapping='oscarmax', gamma=1.0, lam=0.05" in repr(attn)
    assert MultiheadAttention(E, MHA_HEADS).mapping_params == {"gamma": 1.0}


# ------------------------------------------------------------------------ errors


def test_attention_errors_on_masks():
    q, k, v = qkv()
    with pytest.raises(TypeError, match=r"attn_mask must be a bool tensor \(True = the query may"):
        attention(q, k, v, attn_mask=torch.zeros(L, S))
    with pytest.raises(TypeError, match="float \\(additive\\) masks are not accepted"):
        attention(q, k, v, attn_mask=torch.zeros(L, S))
    with pytest.raises(TypeError, match="attn_mask must be a bool tensor .* got torch.uint8"):
        attention(q, k, v, attn_mask=torch.ones(L, S, dtype=torch.uint8))
    with pytest.raises(TypeError, match="attn_mask must be a bool tensor .* got list"):
        attention(q, k, v, attn_mask=[[True]])
    with pytest.raises(
        ValueError,
        match=r"attn_mask of shape \(4, 5\) does not broadcast .* \(2, 3, 4, 6\)",
    ):
        attention(q, k, v, attn_mask=torch.ones(L, S - 1, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"attn_mask of shape \(1, 2, 3, 4, 6\)"):
        attention(q, k, v, attn_mask=torch.ones(1, N, H, L, S, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_mask and is_causal=True cannot both be given"):
        attention(q, k, v, attn_mask=torch.ones(L, S, dtype=torch.bool), is_causal=True)
    with pytest.raises(
        TypeError, match=r"key_padding_mask must be a bool tensor \(True = the key is"
    ):
        attention(q, k, v, key_padding_mask=torch.zeros(N, S))
    with pytest.raises(
        ValueError,
        match=r"key_padding_mask of shape \(3, 6\) .* allowed shapes are \(6,\), "
        r"\(2, 6\) \(N, S\), \(2, 3, 6\) or broadcastable to it",
    ):
        attention(q, k, v, key_padding_mask=torch.zeros(H, S, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"key_padding_mask of shape \(2, 5\)"):
        attention(q, k, v, key_padding_mask=torch.zeros(N, S - 1, dtype=torch.bool))
    q, k, v = qkv(batch=())
    with pytest.raises(ValueError, match=r"allowed shapes are \(6,\)$"):
        attention(q, k, v, key_padding_mask=torch.zeros(1, S, dtype=torch.bool))


def test_attention_errors_on_inputs():
    q, k, v = qkv()
    with pytest.raises(
        ValueError, match=r"key must have the embedding size E .* key \(2, 3, 6, 7\)"
    ):
        attention(q, k[..., :-1], v)
    with pytest.raises(ValueError, match=r"value must have as many positions S as key"):
        attention(q, k, v[..., :-1, :])
    with pytest.raises(ValueError, match="batch dimensions .* must broadcast"):
        attention(q, k[:, :2], v[:, :2])
    with pytest.raises(
        ValueError, match=r"query must have shape \(..., L, E\) .* got shape \(8,\)"
    ):
        attention(q[0, 0, 0], k, v)
    with pytest.raises(TypeError, match="key must be a floating-point tensor, got torch.int64"):
        attention(q, k.long(), v)
    with pytest.raises(TypeError, match="value must be a torch.Tensor, got list"):
        attention(q, k, [1.0])
    with pytest.raises(TypeError, match="same dtype, got torch.float32, torch.float64"):
        attention(q, k.double(), v)
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\], got 1.5"):
        attention(q, k, v, dropout_p=1.5)
    with pytest.raises(TypeError, match="scale must be None .* or a Python number, got str"):
        attention(q, k, v, scale="0.1")
    with pytest.raises(ValueError, match="scale must be finite, got inf"):
        attention(q, k, v, scale=math.inf)
    with pytest.raises(TypeError, match="is_causal must be True or False, got 1"):
        attention(q, k, v, is_causal=1)


def test_attention_errors_on_mapping():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="unknown mapping 'fusemax'; valid mappings are: "):
        attention(q, k, v, "fusemax")
    with pytest.raises(TypeError, match="mapping must be the name of a mapping .* got function"):
        attention(q, k, v, regattn.fusedmax)
    with pytest.raises(ValueError, match=r"lam must be a finite number >= 0, got -1"):
        attention(q, k, v, "fusedmax", lam=-1)
    with pytest.raises(ValueError, match=r"p must be a number in \(1, 2\], got 3"):
        attention(q, k, v, "sq_pnorm_max", p=3)
    with pytest.raises(
        TypeError,
        match="unexpected keyword argument.* lam: it takes attn_mask, .* mapping 'softmax': gamma",
    ):
        attention(q, k, v, "softmax", lam=0.1)
    with pytest.raises(TypeError, match="unexpected keyword argument.* attn_msk"):
        attention(q, k, v, attn_msk=None)


def test_module_errors():
    with pytest.raises(
        ValueError, match="embed_dim must be divisible by num_heads, got embed_dim=8"
    ):
        MultiheadAttention(8, 3)
    with pytest.raises(ValueError, match="num_heads must be a positive integer, got 0"):
        MultiheadAttention(8, 0)
    with pytest.raises(ValueError, match="dropout must be in"):
        MultiheadAttention(8, 2, dropout=2.0)
    with pytest.raises(ValueError, match="unknown mapping 'fusemax'"):
        MultiheadAttention(8, 2, mapping="fusemax")
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        MultiheadAttention(8, 2, mapping="oscarmax", lam=-0.5)
    with pytest.raises(TypeError, match=r"MultiheadAttention\(\) got unexpected keyword .* lam"):
        MultiheadAttention(8, 2, lam=0.1)  # softmax takes no lam

    attn = MultiheadAttention(E, MHA_HEADS, kdim=6)
    query, key, value = torch.randn(L, N, E), torch.randn(S, N, 6), torch.randn(S, N, E)
    with pytest.raises(
        ValueError, match=r"query must be 3-D \(L, N, E\) .* got shape \(1, 4, 2, 8\)"
    ):
        attn(query[None], key, value)
    with pytest.raises(ValueError, match=r"key must have kdim=6 features .* got shape \(6, 2, 8\)"):
        attn(query, value, value)
    with pytest.raises(ValueError, match="same batch size, and key and value the same length S"):
        attn(query, key[:-1], value)
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(N, S\) = \(2, 6\)"):
        attn(query, key, value, key_padding_mask=torch.zeros(S, N, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"attn_mask must have shape \(L, S\) = \(4, 6\) or"):
        attn(query, key, value, attn_mask=torch.zeros(N, L, S, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"attn_mask must be a bool \(True = NOT allowed"):
        attn(query, key, value, attn_mask=torch.zeros(L, S, dtype=torch.long))
    with pytest.raises(ValueError, match="is_causal=True needs attn_mask"):
        attn(query, key, value, is_causal=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attn(query, key, value)  # no warning on the plain call
