"""``torch.compile(model, backend="kiln")``: Kiln as a Dynamo backend.

Dynamo hands over a Torch-level FX graph; ``aot_module_simplified`` lowers it to a
functional ATen graph (with Kiln's decomposition table, parameters lifted to inputs), and
the same planner as ``kiln.compile`` partitions and compiles it. Dynamo owns the guards.
Registered through the ``torch_dynamo_backends`` entry point, so ``import kiln`` is not
needed.
"""

from __future__ import annotations

import warnings
from typing import Any, List

import torch

from ._errors import KilnWarning


def _fx_compiler(gm: torch.fx.GraphModule, example_inputs: List[Any]):
    from torch._functorch.aot_autograd import make_boxed_func

    from ._plan import _is_static, _meta_val, build_plan

    static = all(_is_static(_meta_val(n)) for n in gm.graph.nodes if n.op in ("placeholder", "call_function"))
    if not static:
        warnings.warn("kiln: the graph has dynamic shapes; it runs in PyTorch", KilnWarning, stacklevel=2)
        return make_boxed_func(gm.forward)
    dense = all(getattr(_meta_val(n), "layout", torch.strided) is torch.strided for n in gm.graph.nodes if n.op == "placeholder")
    if not dense:
        warnings.warn("kiln: the graph takes a sparse or other non-strided tensor; it runs in PyTorch", KilnWarning, stacklevel=2)
        return make_boxed_func(gm.forward)
    try:
        plan = build_plan(gm, name="dynamo")
    except Exception as e:  # never fail the user's model: run the graph as captured
        warnings.warn(f"kiln: compiling a Dynamo graph failed ({type(e).__name__}: {e}); it runs in PyTorch", KilnWarning, stacklevel=2)
        return make_boxed_func(gm.forward)

    def run(args):
        out = plan(args)
        args.clear()
        return out

    run._boxed_call = True  # type: ignore[attr-defined]
    run.plan = plan  # type: ignore[attr-defined]
    return run


def backend(gm: torch.fx.GraphModule, example_inputs: List[Any], **kwargs: Any):
    """The Dynamo backend entry point."""
    from torch._functorch.aot_autograd import aot_module_simplified

    from ._capture import decompositions

    return aot_module_simplified(
        gm, example_inputs, fw_compiler=_fx_compiler, bw_compiler=_fx_compiler, decompositions=decompositions(),
    )
