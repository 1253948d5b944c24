"""Kiln: a graph compiler for eager PyTorch models.

Three ways in:

- ``@kiln.compile`` / ``kiln.compile(fn_or_module)``: captures the call at the ATen level
  (``make_fx``, parameters and buffers as graph inputs), compiles the ops Kiln maps and runs
  the rest in PyTorch, guarded per input signature.
- ``torch.compile(model, backend="kiln")``: the same compiler behind Dynamo (registered by
  entry point, no import needed).
- ``kiln.explain(fn, *args)``: what was compiled, into how many kernels, and what runs in
  PyTorch and why.

Knobs (environment): ``KILN_BACKEND`` = auto | cpu | cuda | interp; ``KILN_DEBUG`` = 1
(one line per compiled graph and region), 2 (+ the IR of each region), 3 (+ its kernel
graph); ``KILN_CACHE_DIR`` / ``KILN_CACHE=0`` (the native compile cache).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from ._errors import KilnError, KilnWarning
from ._capture import Compiled

__all__ = ["compile", "explain", "supported_ops", "KilnError", "KilnWarning", "Compiled", "Explanation"]
__version__ = "0.1.0"


def compile(fn: Optional[Callable] = None, *, strict: bool = False, recompile_limit: int = 8, name: Optional[str] = None,
            static_weights: bool = False):
    """Compiles a function or ``nn.Module`` with Kiln; usable as ``@kiln.compile`` or
    ``@kiln.compile(strict=True)``.

    Each call is guarded on every tensor's dtype, device, shape, contiguity and
    ``requires_grad`` (and on grad mode and the non-tensor arguments). A new signature
    compiles again, up to ``recompile_limit``; after that new signatures run eagerly with a
    warning. Anything Kiln cannot do runs in PyTorch with a :class:`KilnWarning`, unless
    ``strict=True``, which raises :class:`KilnError` instead.

    ``static_weights=True`` (inference, a module): under ``torch.no_grad()`` /
    ``inference_mode``, a call checks the module's parameters and buffers by address only
    (one native call), not property by property: GPT-2 small has ~150 of them, and their full
    guard is most of a call's host time. New values written in place, replaced parameters,
    ``.to()`` and ``.data = other`` (a new address) are all still seen. What is not seen is a
    parameter whose shape, strides or dtype change while its address stays the same
    (``p.data = p.data.t()``, ``p.t_()``): do not compile with ``static_weights`` a model whose
    weights are reshaped in place like that.
    """
    if fn is None:
        return lambda f: Compiled(f, strict=strict, recompile_limit=recompile_limit, name=name, static_weights=static_weights)
    if isinstance(fn, Compiled):
        return fn
    return Compiled(fn, strict=strict, recompile_limit=recompile_limit, name=name, static_weights=static_weights)


class Explanation:
    """What ``kiln.explain`` found: the plan of one call."""

    def __init__(self, plan):
        self.plan = plan
        self.regions = plan.regions
        self.fallbacks = plan.fallbacks

    @property
    def kernels(self) -> int:
        return sum(r.kernels for r in self.regions)

    def __str__(self) -> str:
        out = [self.plan.describe()]
        for r in self.regions:
            out.append(f"--- region {r.index}: {r.summary}")
            out.append(r.kernels_text.rstrip())
        return "\n".join(out)

    __repr__ = __str__


def explain(fn: Callable, *args: Any, **kwargs: Any) -> Explanation:
    """Compiles ``fn`` for these arguments and reports the regions Kiln compiled, their
    kernels, and each op that runs in PyTorch with the reason."""
    import torch

    c = fn if isinstance(fn, Compiled) else Compiled(fn, strict=False)
    with torch.no_grad():
        c(*args, **kwargs)
    plans = c.plans()
    if not plans:
        raise KilnError(f"{c._name}: nothing was compiled for these arguments (see the warnings)")
    return Explanation(plans[-1])


def supported_ops() -> list:
    """The ATen targets Kiln's importer maps (``"aten.addmm.default"``, ...)."""
    from . import _native

    return sorted(_native.supported_targets())
