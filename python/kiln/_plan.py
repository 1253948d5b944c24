"""From a captured ATen FX graph to an executable plan.

``build_plan(gm)`` partitions the graph into Kiln regions and PyTorch ("fallback") nodes,
serializes each region (JSON, see ``python/src/json.rs``), has the native module import and
compile it, and returns a :class:`Plan`: a list of steps run in order on a flat list of
input tensors.

Partitioning (stage layering): a supported node's stage is the largest stage of its
supported inputs and of ``1 + `` the fallback stage of its PyTorch-run inputs; fallback nodes
run between regions. Every node of stage ``k`` forms region ``k``, so the number of regions
is the least any schedule of this graph can have, and every region input is ready before
the region runs.
"""

from __future__ import annotations

import json
import math
import operator
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.fx as fx

from . import _native
from ._errors import KilnError, KilnWarning

aten = torch.ops.aten

_DTYPES = {torch.float32, torch.float16, torch.bfloat16, torch.int32, torch.int64, torch.bool}
_DTYPE_BY_NAME = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
}


def dtype_name(d: torch.dtype) -> str:
    return str(d).replace("torch.", "")


class _Unserializable(Exception):
    pass


@dataclass
class Fallback:
    """A node run by PyTorch, and why."""

    node: str
    target: str
    reason: str


@dataclass
class RegionInfo:
    """A compiled region, for ``kiln.explain``."""

    index: int
    ops: List[str]
    n_inputs: int
    n_outputs: int
    kernels: int
    backend: str
    summary: str
    ir_text: str
    kernels_text: str


def _target_name(target: Any) -> str:
    if target is operator.getitem:
        return "getitem"
    return str(target)


def _meta_val(node: fx.Node) -> Any:
    return node.meta.get("val", node.meta.get("example_value"))


def _meta_json(v: Any) -> Optional[dict]:
    if isinstance(v, torch.Tensor):
        return {"dtype": dtype_name(v.dtype), "shape": [int(s) for s in v.shape]}
    return None


def _is_static(v: Any) -> bool:
    if isinstance(v, torch.Tensor):
        return all(isinstance(s, int) for s in v.shape)
    if isinstance(v, (list, tuple)):
        return all(_is_static(x) for x in v)
    return True


def _tensors_in(v: Any) -> List[torch.Tensor]:
    if isinstance(v, torch.Tensor):
        return [v]
    if isinstance(v, (list, tuple)):
        return [t for x in v for t in _tensors_in(x)]
    return []


def _named_args(node: fx.Node) -> Dict[str, Any]:
    """The node's arguments by schema name."""
    if node.target is operator.getitem:
        return {"self": node.args[0], "index": node.args[1]}
    schema = node.target._schema
    out = {}
    for a, v in zip(schema.arguments, node.args):
        out[a.name] = v
    out.update(node.kwargs)
    return out


def _encode(v: Any, ref: Callable[[fx.Node], int]) -> Any:
    if isinstance(v, fx.Node):
        return {"v": ref(v)}
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        if math.isnan(v):
            return {"f": "nan"}
        if math.isinf(v):
            return {"f": "inf" if v > 0 else "-inf"}
        return {"f": v}
    if isinstance(v, (list, tuple)):
        return [_encode(x, ref) for x in v]
    if isinstance(v, torch.dtype):
        return {"dtype": dtype_name(v)}
    if isinstance(v, (torch.device, torch.layout, torch.memory_format)):
        return {"other": str(v)}
    raise _Unserializable(f"argument of type {type(v).__name__} cannot be sent to Kiln")


class _Ref(int):
    """An index into the plan's value list (an argument placeholder)."""


def _subst(v: Any, env: List[Any]) -> Any:
    if type(v) is _Ref:
        return env[v]
    if isinstance(v, (list, tuple)):
        return type(v)(_subst(x, env) for x in v)
    if isinstance(v, dict):
        return {k: _subst(x, env) for k, x in v.items()}
    return v


class Region:
    """A compiled region: gathers its inputs, allocates outputs, one call into Rust.

    Inputs known to be contiguous (guarded graph inputs captured contiguous, other regions'
    outputs, contiguous constants) are not checked per call: ``native.run_env`` reads their
    data pointers straight from the value list. Only inputs computed by PyTorch ops
    (``check``) are checked; a non-contiguous one sends the call down the copying path."""

    __slots__ = ("native", "ins", "outs", "out_meta", "out_strided", "fast_empty", "device", "info", "check", "cuda", "stream_index")

    def __init__(self, native, ins: List[int], outs: List[int], device: torch.device, info: RegionInfo,
                 check: Optional[List[int]] = None):
        self.native = native
        self.ins = ins
        self.outs = outs
        self.out_meta = [(tuple(s), _DTYPE_BY_NAME[d]) for d, s in native.output_meta]
        self.out_strided = [(s, _contiguous_strides(s), d) for s, d in self.out_meta]
        self.fast_empty = _FAST_EMPTY.get(device.type)
        self.device = device
        self.info = info
        self.check = tuple(ins if check is None else check)
        self.cuda = device.type == "cuda"
        self.stream_index = device.index if device.index is not None else 0
        native.set_input_slots(list(ins))

    def _empty_outputs(self) -> List[torch.Tensor]:
        """The outputs, allocated by PyTorch's caching allocator: through the low-overhead
        allocator Inductor's wrappers use when this PyTorch has it and the region's device is
        the current one (it allocates on the current device), else ``torch.empty``."""
        fast = self.fast_empty
        if fast is not None and (not self.cuda or torch._C._cuda_getDevice() == self.stream_index):
            return [fast(s, st, d) for s, st, d in self.out_strided]
        dev = self.device
        return [torch.empty(s, dtype=d, device=dev) for s, d in self.out_meta]

    def _stream(self) -> Optional[int]:
        """CUDA regions enqueue on PyTorch's current stream (ordered with the PyTorch ops
        around them); CPU regions take none."""
        return _current_stream(self.device) if self.cuda else None

    def run_static(self, weights, args: List[Any]) -> List[torch.Tensor]:
        """This region as a whole plan, its leading inputs at the addresses of ``weights`` (a
        ``_native.Addresses`` the caller checked this call), the rest ``args``."""
        outs = self._empty_outputs()
        self.native.run_static(weights, args, outs, self._stream())
        return outs

    def __call__(self, env: List[Any]) -> None:
        for i in self.check:
            if not env[i].is_contiguous():
                return self._run_copying(env)
        outs = self._empty_outputs()
        self.native.run_env(env, outs, self._stream())
        for i, o in zip(self.outs, outs):
            env[i] = o

    def _run_copying(self, env: List[Any]) -> None:
        ts = [env[i].contiguous() for i in self.ins]  # kept alive until the call returns
        ptrs = [t.data_ptr() for t in ts]
        outs = self._empty_outputs()
        self.native.run(ptrs, [o.data_ptr() for o in outs], self._stream())
        for i, o in zip(self.outs, outs):
            env[i] = o


def _contiguous_strides(shape: Tuple[int, ...]) -> Tuple[int, ...]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(strides))


def _fast_empty() -> Dict[str, Callable]:
    """``_empty_strided_{cpu,cuda}(size, stride, dtype)``: the allocators Inductor's generated
    wrappers call (``torch.empty`` costs several microseconds more per tensor); absent in
    PyTorch versions without them, where ``torch.empty`` is used."""
    try:
        from torch._C._dynamo import guards
    except ImportError:
        return {}
    found = {}
    for dev in ("cpu", "cuda"):
        f = getattr(guards, f"_empty_strided_{dev}", None)
        if f is not None and (dev == "cpu" or torch.cuda.is_available()):
            found[dev] = f
    return found


_FAST_EMPTY = _fast_empty()


def _current_stream(dev: torch.device) -> int:
    """The raw ``cudaStream_t`` of PyTorch's current stream on ``dev`` (what Inductor reads)."""
    try:
        return torch._C._cuda_getCurrentRawStream(dev.index if dev.index is not None else torch.cuda.current_device())
    except AttributeError:
        return torch.cuda.current_stream(dev).cuda_stream


class TorchStep:
    """One node run by PyTorch."""

    __slots__ = ("fn", "args", "kwargs", "out")

    def __init__(self, fn, args, kwargs, out: int):
        self.fn, self.args, self.kwargs, self.out = fn, args, kwargs, out

    def __call__(self, env: List[Any]) -> None:
        env[self.out] = self.fn(*_subst(self.args, env), **_subst(self.kwargs, env))


@dataclass
class Plan:
    """Steps over a value list: inputs first, then one slot per graph node."""

    n_inputs: int
    n_values: int
    steps: List[Any]
    outputs: Any  # a structure of _Ref / constants, mirroring the graph's output
    regions: List[RegionInfo] = field(default_factory=list)
    fallbacks: List[Fallback] = field(default_factory=list)
    compile_seconds: float = 0.0
    n_nodes: int = 0

    def __post_init__(self) -> None:
        self._pad = [None] * (self.n_values - self.n_inputs)
        # one Kiln region and nothing else (a fully supported model): its outputs are the
        # plan's outputs, returned without walking the output structure
        only = self.steps[0] if len(self.steps) == 1 and isinstance(self.steps[0], Region) else None
        flat = isinstance(self.outputs, list) and all(type(o) is _Ref for o in self.outputs)
        self._only_region = only if only is not None and flat and not only.check else None
        # where each plan output lies among that region's outputs (None: an output is not one)
        r = self._only_region
        self._only_outs = [r.outs.index(o) for o in self.outputs] if r is not None and all(o in r.outs for o in self.outputs) else None

    def __call__(self, inputs: Sequence[Any]) -> Any:
        r = self._only_region
        if r is not None and len(inputs) == self.n_inputs:
            env = list(inputs)
            env += self._pad
            r(env)
            return [env[i] for i in self.outputs]
        env: List[Any] = list(inputs)
        env += self._pad if len(env) == self.n_inputs else [None] * (self.n_values - len(env))
        for s in self.steps:
            s(env)
        return _subst(self.outputs, env)

    def describe(self) -> str:
        lines = [
            f"{self.n_nodes} ATen ops: {sum(len(r.ops) for r in self.regions)} in {len(self.regions)} Kiln region(s), "
            f"{len(self.fallbacks)} run by PyTorch; compiled in {self.compile_seconds * 1e3:.1f} ms"
        ]
        for r in self.regions:
            lines.append(f"  region {r.index}: {len(r.ops)} ops -> {r.kernels} kernel(s) on {r.backend}, "
                         f"{r.n_inputs} inputs, {r.n_outputs} outputs")
        for f in self.fallbacks:
            lines.append(f"  fallback {f.node} ({f.target}): {f.reason}")
        return "\n".join(lines)


_SUPPORTED: Optional[frozenset] = None


def supported_targets() -> frozenset:
    global _SUPPORTED
    if _SUPPORTED is None:
        _SUPPORTED = frozenset(_native.supported_targets())
    return _SUPPORTED


def _debug() -> int:
    try:
        return int(os.environ.get("KILN_DEBUG", "0") or 0)
    except ValueError:
        return 0


def _backend_for(device: torch.device) -> Optional[str]:
    env = os.environ.get("KILN_BACKEND", "").lower()
    if device.type == "cuda":
        return "cuda"
    if env in ("interp", "interpreter"):
        return "interp"
    return "cpu"


def _node_reason(node: fx.Node, device: Optional[torch.device], gm: Optional[fx.GraphModule] = None) -> Optional[str]:
    """Why this node cannot go to Kiln (None: it may)."""
    name = _target_name(node.target)
    if name not in supported_targets():
        return "not an op Kiln maps"
    if node.target is aten.index.Tensor and _const_indices(gm, node) is None:
        return "indexing with a tensor computed at run time (a gather) is not supported"
    val = _meta_val(node)
    if val is None:
        return "no shape/dtype information from the capture"
    if not _is_static(val):
        return "dynamic shape"
    for t in _tensors_in(val):
        if t.dtype not in _DTYPES:
            return f"dtype {dtype_name(t.dtype)} is not supported by Kiln"
        if device is not None and t.device != device:
            return f"tensor on {t.device}, the region runs on {device}"
        if t.device.type == "cuda" and (t.device.index or 0) != 0:
            return f"tensor on {t.device}: Kiln's CUDA backend runs on cuda:0 only"
    for a in node.all_input_nodes:
        for t in _tensors_in(_meta_val(a)):
            if t.dtype not in _DTYPES:
                return f"an input has dtype {dtype_name(t.dtype)}, which Kiln does not support"
            if t.numel() == 0:
                return "an input is an empty tensor"
    if any(t.numel() == 0 for t in _tensors_in(val)):
        return "the result is an empty tensor"
    # in-place ops are imported as their functional form only when nothing else can see
    # the mutation
    if node.target is not operator.getitem and node.target._schema.is_mutable:
        first = node.args[0] if node.args else None
        if not isinstance(first, fx.Node) or first.op != "call_function" or len(first.users) != 1:
            return "in-place op on a tensor others can see"
    try:
        _encode(list(node.args), lambda n: 0)
        _encode(list(node.kwargs.values()), lambda n: 0)
    except _Unserializable as e:
        return str(e)
    return None


_MAX_CONST_INDEX = 64


def _literal_tensor(gm: Optional[fx.GraphModule], node: Any) -> Optional[torch.Tensor]:
    """The value of a tensor literal made inside the captured function (``torch.tensor([..])``
    becomes ``lift_fresh_copy(get_attr)``); None for anything else (user tensors may change)."""
    if gm is None or not isinstance(node, fx.Node) or node.op != "call_function":
        return None
    if node.target is not aten.lift_fresh_copy.default:
        return None
    src = node.args[0]
    if not isinstance(src, fx.Node) or src.op != "get_attr":
        return None
    v = _fetch_attr(gm, src.target)
    return v if isinstance(v, torch.Tensor) else None


def _const_indices(gm: Optional[fx.GraphModule], node: fx.Node) -> Optional[List[Any]]:
    """``index.Tensor``'s indices as integer lists, when they are small literals."""
    indices = _named_args(node).get("indices")
    if not isinstance(indices, (list, tuple)):
        return None
    out: List[Any] = []
    for ix in indices:
        if ix is None:
            out.append(None)
            continue
        v = _literal_tensor(gm, ix)
        if v is None or v.dim() != 1 or v.dtype not in (torch.int64, torch.int32) or not 0 < v.numel() <= _MAX_CONST_INDEX:
            return None
        out.append([int(i) for i in v.tolist()])
    return out


def _depends_on_inputs(nodes: List[fx.Node]) -> Dict[fx.Node, bool]:
    dep: Dict[fx.Node, bool] = {}
    for n in nodes:
        dep[n] = n.op == "placeholder" or any(dep.get(a, False) for a in n.all_input_nodes)
    return dep


def build_plan(gm: fx.GraphModule, *, strict: bool = False, name: str = "graph") -> Plan:
    """Partitions, compiles and plans ``gm`` (an ATen graph with ``meta['val']`` on nodes)."""
    t0 = time.perf_counter()
    nodes = list(gm.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    device = None
    for n in placeholders:
        for t in _tensors_in(_meta_val(n)):
            device = t.device
            break
        if device is not None:
            break
    if device is None:
        device = torch.device("cpu")

    compute = [n for n in nodes if n.op == "call_function"]
    reasons: Dict[fx.Node, str] = {}
    for n in compute:
        r = _node_reason(n, device, gm)
        if r is not None:
            reasons[n] = r
    dep = _depends_on_inputs(nodes)

    while True:
        _settle(compute, reasons, dep)
        stages, fstages = _stages(nodes, reasons)
        groups = _groups(compute, reasons, stages)
        failed = False
        for k, members in groups.items():
            text, _, r_out = _serialize(gm, members, nodes, f"{name}_r{k}")
            if not r_out:
                continue
            try:
                _native.import_graph(text)
            except _native.UnsupportedNode as e:
                msg, idx = e.args[0], e.args[1]
                bad = members[idx]
                reasons[bad] = msg.split(": ", 1)[1] if ": " in msg else msg
                failed = True
                break
            except _native.CompileError as e:
                for m in members:
                    reasons[m] = f"region import failed: {e}"
                failed = True
                break
        if not failed:
            break

    # compile each region
    regions: Dict[int, Tuple[Any, List[fx.Node], List[fx.Node], List[fx.Node], RegionInfo]] = {}
    infos: List[RegionInfo] = []
    for k, members in sorted(groups.items()):
        text, r_in, r_out = _serialize(gm, members, nodes, f"{name}_r{k}")
        if not r_out:
            continue  # nothing reads it
        try:
            native = _native.Region(text, _backend_for(device))
        except _native.CompileError as e:
            if strict:
                raise KilnError(f"Kiln could not compile region {k} of {name}: {e}") from e
            warnings.warn(f"kiln: region {k} of {name} did not compile ({e}); its {len(members)} ops run in PyTorch",
                          KilnWarning, stacklevel=3)
            for m in members:
                reasons[m] = f"compile failed: {e}"
            continue
        info = RegionInfo(
            index=len(infos), ops=[_target_name(m.target) for m in members], n_inputs=len(r_in), n_outputs=len(r_out),
            kernels=native.n_kernels, backend=native.backend, summary=native.summary(), ir_text=native.ir_text,
            kernels_text=native.kernels_text(),
        )
        infos.append(info)
        regions[k] = (native, members, r_in, r_out, info)
        if _debug() >= 1:
            print(f"[kiln] {name} region {k}: {native.summary()}")
        if _debug() >= 2:
            print(native.ir_text)
        if _debug() >= 3:
            print(native.kernels_text())

    # a region that failed to compile leaves its nodes to PyTorch: recompute the schedule
    if any(k not in regions and m in reasons for k, ms in groups.items() for m in ms):
        stages, fstages = _stages(nodes, reasons)

    # the schedule: fallback stage k, then region k
    slot = {n: i for i, n in enumerate(placeholders)}
    for n in nodes:
        if n not in slot:
            slot[n] = len(slot)

    def ref_of(n: fx.Node) -> _Ref:
        return _Ref(slot[n])

    steps: List[Tuple[int, int, int, Any]] = []  # (stage, kind, order, step)
    order = {n: i for i, n in enumerate(nodes)}
    for n in nodes:
        if n.op == "get_attr":
            val = _fetch_attr(gm, n.target)
            steps.append((-1, 0, order[n], _Const(slot[n], val)))
        elif n.op == "call_function" and n in reasons:
            args = fx.node.map_arg(n.args, ref_of)
            kwargs = fx.node.map_arg(n.kwargs, ref_of)
            steps.append((fstages[n], 0, order[n], TorchStep(n.target, args, kwargs, slot[n])))
    region_made = {o for _, (_, members, _, r_out, _) in regions.items() for o in r_out}
    for k, (native, members, r_in, r_out, info) in regions.items():
        check = [slot[i] for i in r_in if not _contiguous_by_construction(gm, i, region_made)]
        steps.append((k, 1, 0, Region(native, [slot[i] for i in r_in], [slot[o] for o in r_out], device, info, check)))
    steps.sort(key=lambda s: (s[0], s[1], s[2]))

    out_node = next(n for n in nodes if n.op == "output")
    outputs = fx.node.map_arg(out_node.args[0], ref_of)
    fallbacks = [Fallback(n.name, _target_name(n.target), reasons[n]) for n in compute if n in reasons]
    plan = Plan(
        n_inputs=len(placeholders), n_values=len(slot), steps=[s[3] for s in steps], outputs=outputs,
        regions=infos, fallbacks=fallbacks, compile_seconds=time.perf_counter() - t0, n_nodes=len(compute),
    )
    if _debug() >= 1:
        print(f"[kiln] {name}: {plan.describe()}")
    return plan


def _contiguous_by_construction(gm: fx.GraphModule, n: fx.Node, region_made: set) -> bool:
    """Whether the value of ``n`` is contiguous on every call without looking: a graph input
    captured contiguous (the guards pin its strides), another region's output (allocated
    contiguous) or a contiguous constant."""
    if n in region_made:
        return True
    if n.op == "placeholder":
        v = _meta_val(n)
        return isinstance(v, torch.Tensor) and v.is_contiguous()
    if n.op == "get_attr":
        v = _fetch_attr(gm, n.target)
        return isinstance(v, torch.Tensor) and v.is_contiguous()
    return False


class _Const:
    __slots__ = ("out", "val")

    def __init__(self, out: int, val: Any):
        self.out, self.val = out, val

    def __call__(self, env: List[Any]) -> None:
        env[self.out] = self.val


def _fetch_attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _settle(compute: List[fx.Node], reasons: Dict[fx.Node, str], dep: Dict[fx.Node, bool]) -> None:
    """Rules that depend on neighbours, to a fixpoint:
    - a supported node whose value is not a tensor (a tuple) cannot be read by PyTorch ops;
    - a constant (independent of the inputs) read by a PyTorch op is computed by PyTorch too.
    """
    changed = True
    while changed:
        changed = False
        for n in compute:
            if n in reasons:
                continue
            if n.target is operator.getitem and n.args[0] in reasons:
                reasons[n] = "reads a result of an op that runs in PyTorch"
                changed = True
                continue
            users_fallback = [u for u in n.users if u.op == "call_function" and u in reasons]
            out_used = any(u.op == "output" for u in n.users)
            if not isinstance(_meta_val(n), torch.Tensor) and (users_fallback or out_used):
                reasons[n] = "a multi-result op whose results are read by PyTorch"
                changed = True
            elif users_fallback and not dep[n]:
                reasons[n] = "a constant read by an op that runs in PyTorch"
                changed = True


def _mutates(n: fx.Node) -> bool:
    return n.target is not operator.getitem and bool(getattr(n.target, "_schema", None)) and n.target._schema.is_mutable


def _stages(nodes: List[fx.Node], reasons: Dict[fx.Node, str]) -> Tuple[Dict[fx.Node, int], Dict[fx.Node, int]]:
    """Stage of each Kiln node and fallback stage of each PyTorch node (see the module doc).
    Mutating PyTorch ops (copies into mutated inputs) run after every region, in order."""
    last: Optional[int] = None
    while True:
        stage: Dict[fx.Node, int] = {}
        fstage: Dict[fx.Node, int] = {}
        for n in nodes:
            if n.op != "call_function":
                continue
            ins = [a for a in n.all_input_nodes if a.op == "call_function"]
            if n in reasons:
                fstage[n] = max([stage[a] + 1 if a in stage else fstage[a] for a in ins], default=0)
                if last is not None and _mutates(n):
                    fstage[n] = max(fstage[n], last)
            else:
                stage[n] = max([stage[a] if a in stage else fstage[a] for a in ins], default=0)
        top = max(list(stage.values()) + list(fstage.values()), default=0) + 1
        if last is not None or not any(_mutates(n) for n in fstage):
            return stage, fstage
        last = top


def _groups(compute: List[fx.Node], reasons: Dict[fx.Node, str], stages: Dict[fx.Node, int]) -> Dict[int, List[fx.Node]]:
    groups: Dict[int, List[fx.Node]] = {}
    for n in compute:
        if n not in reasons:
            groups.setdefault(stages[n], []).append(n)
    return groups


def _serialize(gm: fx.GraphModule, members: List[fx.Node], nodes: List[fx.Node], name: str) -> Tuple[str, List[fx.Node], List[fx.Node]]:
    inside = set(members)
    r_in: List[fx.Node] = []
    index: Dict[fx.Node, int] = {}
    for m in members:
        for a in m.all_input_nodes:
            if a not in inside and a not in index:
                index[a] = len(r_in)
                r_in.append(a)
    for j, m in enumerate(members):
        index[m] = len(r_in) + j
    r_out = [m for m in members if any(u not in inside for u in m.users)]
    inputs = []
    for i, a in enumerate(r_in):
        meta = _meta_json(_meta_val(a))
        if meta is None and a.op == "get_attr":
            meta = _meta_json(_fetch_attr(gm, a.target))
        if meta is None:
            meta = {"dtype": "unknown", "shape": []}
        inputs.append({"name": f"in{i}_{a.name}", **meta})
    js_nodes = []
    for m in members:
        named = _named_args(m)
        if m.target is aten.index.Tensor:
            named["indices"] = _const_indices(gm, m)  # literal index lists, inlined
        args = {k: _encode(v, index.__getitem__) for k, v in named.items()}
        val = _meta_val(m)
        out = [_meta_json(x) for x in val] if isinstance(val, (list, tuple)) else [_meta_json(val)]
        js_nodes.append({"target": _target_name(m.target), "args": args, "out": out})
    text = json.dumps({"name": name, "inputs": inputs, "nodes": js_nodes, "outputs": [index[o] for o in r_out]})
    return text, r_in, r_out
