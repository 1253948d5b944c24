"""Compiled vs eager on CUDA tensors: regions run on Kiln's GPU backend, zero-copy, on
PyTorch's current stream. Skipped on machines without a CUDA device (CI)."""

import pytest
import torch
import torch.nn.functional as F

import kiln
from conftest import assert_same, check
from models import GPT, MLP

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

DEV = "cuda"


def on_gpu(p):
    assert p.regions, p.describe()
    assert all(r.backend == "cuda" for r in p.regions), p.describe()
    return p


def test_mlp_runs_on_the_gpu_backend():
    m = MLP().eval().to(DEV)
    on_gpu(check(m, torch.randn(5, 13, device=DEV), regions=1, fallbacks=0))


@pytest.mark.parametrize("spelling", ["masked_fill", "masked_fill_tril", "where", "additive"])
def test_gpt2_attention_spellings(spelling):
    m = GPT(spelling=spelling).eval().to(DEV)
    p = on_gpu(check(m, torch.randint(0, 97, (2, 11), device=DEV)))
    assert len(p.regions) == 1, p.describe()


def test_gpt2_bf16():
    m = GPT(spelling="where", last_only=False).eval().to(DEV).to(torch.bfloat16)
    on_gpu(check(m, torch.randint(0, 97, (1, 16), device=DEV)))


@pytest.mark.parametrize("variant", ["layer_norm", "rms_norm", "softmax", "log_softmax", "gelu", "gelu_tanh", "silu"])
def test_row_ops(variant):
    x = torch.randn(3, 5, 19, device=DEV) * 3
    w, b = torch.randn(19, device=DEV), torch.randn(19, device=DEV)
    fns = {
        "layer_norm": lambda x: F.layer_norm(x, (19,), w, b, eps=1e-5),
        "rms_norm": lambda x: F.rms_norm(x, (19,), w, eps=1e-6),
        "softmax": lambda x: F.softmax(x, -1),
        "log_softmax": lambda x: F.log_softmax(x, -1),
        "gelu": F.gelu,
        "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
        "silu": F.silu,
    }
    on_gpu(check(fns[variant], x, regions=1, fallbacks=0))


def test_broadcasting_permuted_and_noncontiguous():
    def f(a, b, c):
        return (a * b + c) / 3.0 - torch.maximum(a, c) + (a > 0.5).float() * 2

    on_gpu(check(f, torch.randn(4, 1, 6, device=DEV), torch.randn(5, 1, device=DEV), torch.randn(6, device=DEV), regions=1))
    x = torch.randn(7, 5, 3, device=DEV).permute(1, 0, 2)
    y = torch.randn(4, 3, device=DEV).t()
    on_gpu(check(lambda x, y: torch.softmax(x @ y, -1).sum(0), x, y, regions=1))


def test_unsupported_op_partitions_and_matches():
    def f(x, w):
        h = torch.tanh(x @ w)
        s = torch.sort(h, dim=-1).values
        return F.layer_norm(torch.cumsum(s, -1) * 2 + h, (h.shape[-1],))

    p = on_gpu(check(f, torch.randn(6, 8, device=DEV), torch.randn(8, 9, device=DEV), regions=2))
    assert {"aten.sort.default", "aten.cumsum.default"} <= {fb.target for fb in p.fallbacks}


def test_half_dtypes():
    for dt in (torch.float16, torch.bfloat16):
        on_gpu(check(lambda x: (x * 2).softmax(-1) + x, torch.randn(33, 65, dtype=dt, device=DEV), regions=1))


def test_new_addresses_every_call_are_rebound():
    """Fresh inputs and outputs each call: the CUDA graph's nodes are rebound, never stale."""
    m = MLP(64, 96, 32).eval().to(DEV)
    c = kiln.compile(m, strict=True)
    with torch.no_grad():
        for _ in range(6):
            x = torch.randn(17, 64, device=DEV)
            keep = [c(x) for _ in range(2)]  # outputs kept alive: addresses alternate
            for y in keep:
                assert_same(y, m(x))
    assert c.cache_size == 1


def test_runs_on_the_current_stream():
    m = MLP(64, 96, 32).eval().to(DEV)
    c = kiln.compile(m, strict=True)
    x = torch.randn(257, 64, device=DEV)
    with torch.no_grad():
        want = m(x)
        c(x)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            y = c(x * 1.0)  # produced and consumed on s
            z = y * 2
        s.synchronize()
    assert_same(z, want * 2)


def test_cpu_and_cuda_signatures_compile_separately():
    m = MLP().eval()
    c = kiln.compile(m, strict=True)
    x = torch.randn(3, 13)
    with torch.no_grad():
        assert_same(c(x), m(x))
        m.to(DEV)
        assert_same(c(x.to(DEV)), m(x.to(DEV)))
    backends = sorted(r.backend for p in c.plans() for r in p.regions)
    assert backends == ["cpu", "cuda"], backends


def test_second_gpu_falls_back_with_a_reason():
    if torch.cuda.device_count() < 2:
        pytest.skip("one GPU")
    e = kiln.explain(lambda x: x.exp() * 2, torch.randn(4, device="cuda:1"))
    assert e.fallbacks and "cuda:0 only" in e.fallbacks[0].reason
