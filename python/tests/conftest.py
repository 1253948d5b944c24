import pytest
import torch

import kiln


def plan_of(compiled):
    """The most recent plan of a kiln.compile'd callable."""
    plans = compiled.plans()
    assert plans, "nothing was compiled"
    return plans[-1]


def assert_same(got, want, rtol=1e-4, atol=1e-5):
    """Compiled vs eager: same structure, dtypes, shapes; values within tolerance."""
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor), type(got)
        assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
        if want.dtype.is_floating_point:
            tol = {torch.float16: (1e-2, 1e-2), torch.bfloat16: (3e-2, 3e-2)}.get(want.dtype, (rtol, atol))
            torch.testing.assert_close(got, want, rtol=tol[0], atol=tol[1], equal_nan=True)
        else:
            assert torch.equal(got, want)
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want)
        for g, w in zip(got, want):
            assert_same(g, w, rtol, atol)
    elif isinstance(want, dict):
        assert got.keys() == want.keys()
        for k in want:
            assert_same(got[k], want[k], rtol, atol)
    else:
        assert got == want


def check(fn, *args, regions=None, fallbacks=None, **kwargs):
    """Runs fn eagerly and through kiln.compile (strict), compares, returns the plan."""
    c = kiln.compile(fn, strict=True)
    with torch.no_grad():
        want = fn(*args, **kwargs)
        got = c(*args, **kwargs)
        got2 = c(*args, **kwargs)  # the cached path
    assert_same(got, want)
    assert_same(got2, want)
    p = plan_of(c)
    if regions is not None:
        assert len(p.regions) == regions, p.describe()
    if fallbacks is not None:
        assert len(p.fallbacks) == fallbacks, p.describe()
    return p


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
