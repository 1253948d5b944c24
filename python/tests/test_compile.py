"""Compiled vs eager on models and op variants (CPU)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import kiln
from conftest import assert_same, check
from models import GPT, MLP


def test_mlp_module_is_one_region():
    m = MLP().eval()
    x = torch.randn(5, 13)
    p = check(m, x, regions=1, fallbacks=0)
    assert p.n_nodes >= 6


def test_mlp_parameters_are_inputs_not_constants():
    m = MLP().eval()
    c = kiln.compile(m, strict=True)
    x = torch.randn(3, 13)
    with torch.no_grad():
        c(x)
        m.fc3.bias.add_(1.0)  # in place: the compiled graph must see it without recompiling
        assert_same(c(x), m(x))
        m.fc1.weight = nn.Parameter(torch.randn_like(m.fc1.weight))  # a new parameter object
        assert_same(c(x), m(x))
    assert c.cache_size == 1


@pytest.mark.parametrize("spelling", ["masked_fill", "masked_fill_tril", "where", "additive"])
def test_gpt2_attention_spellings(spelling):
    m = GPT(spelling=spelling).eval()
    idx = torch.randint(0, 97, (2, 11))
    p = check(m, idx)
    # the embeddings (gathers, and the positions they read) run in PyTorch; everything
    # after them, the x[:, [-1], :] literal index included, is one Kiln region
    assert len(p.regions) == 1, p.describe()
    assert sorted(f.target for f in p.fallbacks) == ["aten.arange.start", "aten.embedding.default", "aten.embedding.default"], p.describe()


def test_gpt2_full_logits_match():
    m = GPT(spelling="where", last_only=False).eval()
    check(m, torch.randint(0, 97, (1, 16)))


@pytest.mark.parametrize("variant", ["layer_norm", "layer_norm_noaffine", "rms_norm", "rms_norm_w", "softmax",
                                     "log_softmax", "softmax_dim0", "gelu", "gelu_tanh", "silu", "sigmoid"])
def test_row_ops(variant):
    x = torch.randn(3, 5, 19) * 3
    w = torch.randn(19)
    b = torch.randn(19)
    fns = {
        "layer_norm": lambda x: F.layer_norm(x, (19,), w, b, eps=1e-5),
        "layer_norm_noaffine": lambda x: F.layer_norm(x, (5, 19)),
        "rms_norm": lambda x: F.rms_norm(x, (19,)),
        "rms_norm_w": lambda x: F.rms_norm(x, (19,), w, eps=1e-6),
        "softmax": lambda x: F.softmax(x, -1),
        "log_softmax": lambda x: F.log_softmax(x, -1),
        "softmax_dim0": lambda x: torch.softmax(x, 0),
        "gelu": lambda x: F.gelu(x),
        "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
        "silu": F.silu,
        "sigmoid": torch.sigmoid,
    }
    check(fns[variant], x, regions=1, fallbacks=0)


def test_nn_modules_norms():
    for mod in [nn.LayerNorm(24), nn.RMSNorm(24), nn.Sequential(nn.Linear(24, 24), nn.GELU(), nn.LayerNorm(24))]:
        mod.eval()
        check(mod, torch.randn(4, 7, 24), regions=1, fallbacks=0)


def test_broadcasting_and_scalars():
    def f(a, b, c):
        return (a * b + c) / 3.0 - torch.maximum(a, c) + (a > 0.5).float() * 2

    check(f, torch.randn(4, 1, 6), torch.randn(5, 1), torch.randn(6), regions=1, fallbacks=0)


def test_permuted_and_noncontiguous_inputs():
    def f(x, y):
        return torch.softmax(x @ y, -1).sum(0)

    x = torch.randn(7, 5, 3).permute(1, 0, 2)  # [5, 7, 3], non-contiguous
    y = torch.randn(4, 3).t()  # [3, 4], transposed
    assert not x.is_contiguous() and not y.is_contiguous()
    check(f, x, y, regions=1, fallbacks=0)
    z = torch.randn(6, 10)[:, ::2]  # strided slice
    check(lambda z: z.exp() + z.t().sum(0, keepdim=True).t(), z, regions=1)


def test_permute_inside_graph():
    def f(x):
        return x.permute(2, 0, 1).reshape(4, -1).transpose(0, 1) * 2

    check(f, torch.randn(3, 5, 4), regions=1, fallbacks=0)


def test_unsupported_op_partitions_and_matches():
    def f(x, w):
        h = torch.tanh(x @ w)
        s = torch.sort(h, dim=-1).values  # no sort in Kiln: runs in PyTorch
        c = torch.cumsum(s, dim=-1)  # nor cumsum
        return F.layer_norm(c * 2 + h, (h.shape[-1],))

    p = check(f, torch.randn(6, 8), torch.randn(8, 9), regions=2)
    names = {fb.target for fb in p.fallbacks}
    assert "aten.sort.default" in names and "aten.cumsum.default" in names
    assert all(fb.reason for fb in p.fallbacks)


def test_float64_ops_fall_back_but_match():
    def f(x):
        return (x.double() * 3).exp().float() + x

    p = check(f, torch.randn(3, 4))
    assert any("float64" in fb.reason for fb in p.fallbacks)


def test_dtypes_half_and_int():
    check(lambda x: (x * 2).softmax(-1), torch.randn(4, 9, dtype=torch.float16), regions=1)
    check(lambda x: (x * 2).softmax(-1), torch.randn(4, 9, dtype=torch.bfloat16), regions=1)
    check(lambda i: (i * 3 + 1).sum(-1), torch.randint(-5, 5, (3, 4), dtype=torch.int32), regions=1)
    check(lambda i, x: x[0] * (i > 2), torch.randint(0, 5, (4,)), torch.randn(2, 4), regions=1)


def test_outputs_structure_and_constants():
    def f(x, scale=2.0):
        return {"y": x * scale, "n": x.shape[0], "pair": (x.sum(), x.exp())}

    check(f, torch.randn(3, 2))
    check(f, torch.randn(3, 2), scale=0.5)


def test_inplace_ops_in_model():
    def f(x):
        y = x * 2
        y.add_(1)
        y.mul_(y)
        return y + x

    check(f, torch.randn(4, 4))


def test_sdpa_math():
    q, k, v = (torch.randn(2, 3, 7, 8) for _ in range(3))
    check(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), q, k, v)
    check(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), q, k, v)


def test_inference_mode_and_module_call():
    m = MLP().eval()
    c = kiln.compile(m, strict=True)
    x = torch.randn(2, 13)
    with torch.inference_mode():
        assert_same(c(x), m(x))


def test_explain_reports_regions_kernels_fallbacks():
    def f(x):
        return torch.cumsum(x.exp(), 0).softmax(-1)

    e = kiln.explain(f, torch.randn(3, 4))
    assert len(e.regions) == 2 and e.kernels >= 2
    assert [fb.target for fb in e.fallbacks] == ["aten.cumsum.default"]
    assert "not an op Kiln maps" in str(e)
    assert "region 0" in str(e)


def test_mutated_inputs_and_empty_tensors():
    def f(x, y):
        x.add_(1)  # the caller sees the mutation, as in eager
        return x * 2 + y.sum(0)

    x, y = torch.randn(3, 4), torch.randn(0, 4)
    x2 = x.clone()
    c = kiln.compile(f, strict=True)
    with torch.no_grad():
        got = c(x, y)
        want = f(x2, y)
    assert_same(got, want)
    assert_same(x, x2)


def test_returns_an_input_and_views():
    check(lambda x: (x, x.t(), x[1:]), torch.randn(3, 2))
