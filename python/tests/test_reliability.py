"""Reliability of the Python entry points: malformed inputs (wrong dtypes, shapes, devices,
non-tensors, odd values) give a Python exception or an eager fallback with the eager result,
never a crash; a region that fails to compile falls back to eager; a compiled function
called from 8 threads at once gives correct results."""

import threading
import warnings

import pytest
import torch
import torch.nn as nn

import kiln
from conftest import assert_same


def _eager_and_compiled(fn, *args, strict=False):
    """(eager outcome, compiled outcome): each a value or the exception raised."""
    def outcome(f):
        try:
            with torch.no_grad():
                return f(*args)
        except Exception as e:  # noqa: BLE001 - any Python exception is acceptable
            return e

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = outcome(fn)
        got = outcome(kiln.compile(fn, strict=strict))
    return want, got


def _agree(fn, *args):
    """Compiled behaves like eager: the same result, or an exception where eager raised."""
    want, got = _eager_and_compiled(fn, *args)
    if isinstance(want, Exception):
        assert isinstance(got, Exception), f"eager raised {want!r} but kiln returned {got!r}"
    else:
        assert not isinstance(got, Exception), f"kiln raised {got!r} where eager returned a value"
        assert_same(got, want)


def f_mlpish(x, w):
    return torch.tanh(x @ w).sum(-1)


def f_elementwise(x, y):
    return torch.exp(-x.abs()) * y + torch.where(x > 0, x, y)


def f_softmax(x):
    return torch.softmax(x * 2.0, dim=-1)


# -- malformed inputs -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32,
                                   torch.int64, torch.bool, torch.uint8, torch.int8, torch.complex64])
def test_any_dtype_is_served_or_rejected(dtype):
    x = (torch.randn(5, 7) * 3).to(dtype)
    w = (torch.randn(7, 3) * 3).to(dtype)
    _agree(f_mlpish, x, w)
    _agree(f_elementwise, x, x)
    if dtype.is_floating_point:
        _agree(f_softmax, x)


@pytest.mark.parametrize("shapes", [((5, 7), (3, 3)), ((5, 7), (7,)), ((0, 7), (7, 3)), ((5, 0), (0, 3)),
                                    ((), ()), ((1, 1, 1, 1, 1, 1, 1), (1, 1)), ((2, 3), (2, 3, 4))])
def test_mismatched_and_degenerate_shapes(shapes):
    a, b = torch.randn(shapes[0]), torch.randn(shapes[1])
    _agree(f_mlpish, a, b)
    _agree(f_elementwise, a, b)


def test_a_new_shape_after_compiling_recompiles_or_falls_back():
    c = kiln.compile(f_elementwise)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for shape in [(3, 4), (3, 4), (5, 4), (1,), (2, 3, 4), (3, 4)]:
            x, y = torch.randn(shape), torch.randn(shape)
            with torch.no_grad():
                assert_same(c(x, y), f_elementwise(x, y))


@pytest.mark.parametrize("arg", [None, 3, 2.5, "x", [1.0, 2.0], (torch.ones(2),), {"a": 1}, object(), b"bytes"])
def test_non_tensor_arguments(arg):
    _agree(f_softmax, arg)
    _agree(f_elementwise, torch.randn(3), arg)


def test_odd_values_nan_inf_huge():
    x = torch.tensor([[float("nan"), float("inf"), -float("inf"), 1e38, -1e-45, 0.0, -0.0]])
    _agree(f_elementwise, x, x)
    _agree(f_softmax, x)


def test_non_contiguous_and_expanded_inputs():
    base = torch.randn(7, 5)
    _agree(f_elementwise, base.t(), base.t())
    _agree(f_elementwise, base[:, ::2], base[:, ::2])
    _agree(f_elementwise, torch.randn(1, 5).expand(4, 5), torch.randn(4, 5))
    _agree(f_mlpish, base.t(), torch.randn(7, 2))


def test_meta_and_other_devices():
    x = torch.randn(3, 4, device="meta")
    want, got = _eager_and_compiled(f_elementwise, x, x)
    assert isinstance(got, (torch.Tensor, Exception))
    if isinstance(got, torch.Tensor):
        assert got.device.type == "meta" and got.shape == (3, 4)
    if not torch.cuda.is_available():
        with pytest.raises(Exception):
            f_elementwise(torch.randn(2, device="cuda"), torch.randn(2, device="cuda"))


def test_mixed_devices_and_dtypes_between_arguments():
    _agree(f_elementwise, torch.randn(3, 4), torch.randn(3, 4, dtype=torch.float64))
    _agree(f_elementwise, torch.randn(3, 4), torch.randint(0, 3, (3, 4)))
    _agree(f_mlpish, torch.randn(3, 4), torch.randn(4, 2, dtype=torch.float16))


def test_requires_grad_inputs():
    x = torch.randn(4, 5, requires_grad=True)
    c = kiln.compile(f_softmax)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = c(x)
        except Exception:  # noqa: BLE001
            return
    assert_same(out.detach(), f_softmax(x).detach())


def test_strict_mode_raises_a_python_exception_not_a_crash():
    def uses_unsupported(x):
        return torch.fft.fft(x).real + x

    x = torch.randn(8)
    want, got = _eager_and_compiled(uses_unsupported, x, strict=True)
    if not isinstance(got, Exception):
        assert_same(got, want)
    _agree(uses_unsupported, x)


def test_bad_compile_arguments():
    with pytest.raises(Exception):
        kiln.compile(42)(torch.randn(2))
    with pytest.raises(Exception):
        kiln.compile(f_softmax, recompile_limit="many")(torch.randn(2))


def test_functions_that_raise_propagate_their_error():
    def bad(x):
        raise ValueError("user error")

    with pytest.raises(Exception):
        kiln.compile(bad)(torch.randn(2))

    def bad_shape(x):
        return x.view(7, 7)

    _agree(bad_shape, torch.randn(3, 4))


def test_module_with_wrong_input():
    m = nn.Linear(4, 3).eval()
    _agree(m, torch.randn(2, 5))
    _agree(m, torch.randn(2, 4, dtype=torch.float64))
    _agree(m, torch.randn(2, 4))


# -- faults -----------------------------------------------------------------------------

def test_kernel_compile_failure_falls_back_to_eager(monkeypatch):
    """The native compile entry raising CompileError: the region runs in PyTorch, with a
    KilnWarning, and the result is the eager one."""
    from kiln import _native

    class Broken:
        def __init__(self, *a, **k):
            raise _native.CompileError("injected: codegen failed")

    monkeypatch.setattr(_native, "Region", Broken)
    x, y = torch.randn(6, 5), torch.randn(6, 5)
    c = kiln.compile(f_elementwise)
    with pytest.warns(kiln.KilnWarning):
        with torch.no_grad():
            got = c(x, y)
    assert_same(got, f_elementwise(x, y))
    with pytest.raises(kiln.KilnError):
        kiln.compile(f_elementwise, strict=True)(x, y)


def test_unexpected_native_exception_does_not_crash(monkeypatch):
    from kiln import _native

    class Broken:
        def __init__(self, *a, **k):
            raise RuntimeError("injected: something unexpected")

    monkeypatch.setattr(_native, "Region", Broken)
    want, got = _eager_and_compiled(f_elementwise, torch.randn(3), torch.randn(3))
    assert isinstance(got, (torch.Tensor, Exception))
    if isinstance(got, torch.Tensor):
        assert_same(got, want)


def test_corrupt_cache_dir_still_compiles(tmp_path, monkeypatch):
    """A cache directory full of garbage (and a cache path that is a file) still compiles."""
    d = tmp_path / "cache"
    d.mkdir()
    monkeypatch.setenv("KILN_CACHE_DIR", str(d))
    x = torch.randn(4, 9)
    with torch.no_grad():
        assert_same(kiln.compile(f_softmax, strict=True)(x), f_softmax(x))
    for p in d.rglob("*"):
        if p.is_file():
            p.write_bytes(b"garbage")
    with torch.no_grad():
        assert_same(kiln.compile(f_softmax, strict=True)(x), f_softmax(x))
    f = tmp_path / "file"
    f.write_text("x")
    monkeypatch.setenv("KILN_CACHE_DIR", str(f / "sub"))
    with torch.no_grad():
        assert_same(kiln.compile(f_softmax, strict=True)(x), f_softmax(x))


# -- threads ----------------------------------------------------------------------------

def test_one_compiled_function_from_eight_threads():
    c = kiln.compile(f_elementwise, strict=True)
    x0, y0 = torch.randn(33, 7), torch.randn(33, 7)
    with torch.no_grad():
        c(x0, y0)  # compile once
    errors = []

    def worker(t):
        try:
            g = torch.Generator().manual_seed(t)
            for _ in range(50):
                x, y = torch.randn(33, 7, generator=g), torch.randn(33, 7, generator=g)
                with torch.no_grad():
                    assert_same(c(x, y), f_elementwise(x, y))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert c.cache_size == 1
