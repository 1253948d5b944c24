"""Capture (make_fx at the ATen level) and the guarded cache of compiled plans."""

from __future__ import annotations

import functools
import threading
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from . import _native
from ._errors import KilnError, KilnWarning
from ._plan import _DTYPES, Plan, build_plan, dtype_name

aten = torch.ops.aten

# PyTorch decompositions Kiln asks for: ops it does not map itself but whose decompositions
# are made of ops it does. Everything else reaches the importer as PyTorch emits it (so
# `_softmax`, `native_layer_norm`, `gelu`, `addmm`, `var_mean` use Kiln's own
# decompositions, shared with the Rust tracing API), or runs in PyTorch.
_DECOMPOSE = [
    "addcmul", "addcdiv", "lerp", "baddbmm", "addmv", "hardsigmoid", "hardswish", "hardshrink",
    "softshrink", "threshold", "relu6", "glu", "logsumexp", "std_mean", "trunc", "frac", "logit",
    "xlogy", "sign", "sgn", "nan_to_num",
    "new_zeros", "new_ones", "new_full", "fill", "_safe_softmax", "linalg_vector_norm", "norm",
    "_native_batch_norm_legit_no_training", "native_group_norm", "mish", "square",
    "_fused_rms_norm",  # what F.rms_norm becomes on CUDA
]


@functools.lru_cache(maxsize=1)
def decompositions() -> Dict[Any, Callable]:
    from torch._decomp import decomposition_table

    packets = {getattr(aten, n) for n in _DECOMPOSE if hasattr(aten, n)}
    return {k: v for k, v in decomposition_table.items() if getattr(k, "overloadpacket", None) in packets}


def capture(fn: Callable, n_state: int, flat_example: List[torch.Tensor]) -> torch.fx.GraphModule:
    """Traces ``fn(*flat_tensors) -> list`` into a functional ATen graph.

    Two passes: the first applies Kiln's decomposition table (decompositions may mutate views
    of fresh tensors, e.g. circular padding), the second functionalizes the result, so the
    graph Kiln partitions has no aliasing and no mutation except final copies into mutated
    inputs. Fake tensors: no data is read, so data-dependent Python control flow fails the
    capture instead of being baked in."""
    from torch.fx.experimental.proxy_tensor import make_fx

    with torch.no_grad():
        decomposed = make_fx(fn, decomposition_table=decompositions(), tracing_mode="fake", _allow_non_fake_inputs=True)(*flat_example)
        functional = torch.func.functionalize(decomposed, remove="mutations_and_views")
        gm = make_fx(functional, tracing_mode="fake", _allow_non_fake_inputs=True)(*flat_example)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def _describe_key_diff(old: tuple, new: tuple, names: List[str]) -> str:
    """Names the first input whose guarded property changed between two signatures."""
    if len(old) != len(new):
        return f"the number of tensor inputs changed from {len(old)} to {len(new)}"
    props = ("dtype", "device", "shape", "contiguous", "requires_grad", "layout")
    for i, (a, b) in enumerate(zip(old, new)):
        for p, x, y in zip(props, a, b):
            if x != y:
                nm = names[i] if i < len(names) else f"input {i}"
                return f"{nm}: {p} {x} -> {y}"
    return "a non-tensor argument, the argument structure or grad mode changed"


_MISS = object()


def _tensor_key(t: torch.Tensor) -> tuple:
    strided = t.layout is torch.strided
    return (t.dtype, t.device, tuple(t.shape), strided and t.is_contiguous(), t.requires_grad, t.layout)


def _tensor_guards(ts: List[torch.Tensor]) -> Any:
    """PyTorch's C++ tensor guards over ``ts`` (None when this PyTorch lacks them)."""
    try:
        from torch._C._dynamo.guards import TensorGuards

        g = TensorGuards(*ts, dynamic_dims_sizes=[list(t.shape) for t in ts], dynamic_dims_strides=[list(t.stride()) for t in ts])
        return g if g.check(*ts) else None
    except Exception:
        return None


def _draws_random(n) -> bool:
    if torch.Tag.nondeterministic_seeded not in getattr(n.target, "tags", ()):
        return False
    if "scaled_dot_product" in str(n.target):  # random only with dropout
        from ._plan import _named_args

        return float(_named_args(n).get("dropout_p", 0.0) or 0.0) != 0.0
    return True


# How many parameters, buffers and submodules have been assigned to any module since Kiln
# started watching: a module's list of state tensors is walked again only after one was.
# (In-place changes and `.data` swaps keep the tensor object: the per-call guards and data
# pointers see those. Not seen: deleting an attribute or editing `_parameters` directly.)
_registrations = [0]
_watching = [False]


def _watch_registrations() -> None:
    if _watching[0]:
        return
    from torch.nn.modules import module as _m

    def bump(*_a):
        _registrations[0] += 1
        return None

    _m.register_module_parameter_registration_hook(bump)
    _m.register_module_buffer_registration_hook(bump)
    _m.register_module_module_registration_hook(bump)
    _watching[0] = True


class _RunEager(Exception):
    """This signature runs eagerly, for the reason given."""


class Compiled:
    """The callable ``kiln.compile`` returns. Guards each call; compiles on a miss."""

    def __init__(self, fn: Callable, *, strict: bool = False, recompile_limit: int = 8, name: Optional[str] = None,
                 static_weights: bool = False):
        self._fn = fn
        self._static_weights = static_weights
        # (registration count, Addresses of the state) as of the last full check of the fast
        # path's entry: a call whose full guards pass with the state still there binds only
        # its arguments; with static_weights (grad off) the addresses alone guard the state
        self._weights_seen: Optional[Tuple[int, Any]] = None
        self._module = fn if isinstance(fn, nn.Module) else None
        self._strict = strict
        self._limit = recompile_limit
        self._name = name or getattr(fn, "__name__", None) or type(fn).__name__
        self._cache: Dict[tuple, Any] = {}
        self._last_key: Optional[tuple] = None
        self._state_guard: Any = None
        self._state_key_cached: tuple = ()
        self._warned: set = set()
        self._lock = threading.Lock()
        self._state_refs: Optional[List[Tuple[dict, str]]] = None
        self._state_names: List[str] = []
        self._state_is_buffer: List[bool] = []
        # (registration count, state tensors) as of the last walk of the module (see
        # `_watch_registrations`)
        self._state_cached: Optional[Tuple[int, List[torch.Tensor]]] = None
        # The hot path: (number of positional tensors, grad mode, PyTorch's C++ guards over
        # state + inputs, entry) of the last signature that compiled. A call that passes
        # those guards skips building and hashing the full key.
        self._fast: Optional[Tuple[int, bool, Any, Any]] = None
        if self._module is None and hasattr(fn, "__name__"):
            functools.update_wrapper(self, fn, updated=())

    # ---- state (parameters and buffers, lifted to graph inputs) ----
    def _state(self) -> Tuple[List[str], List[torch.Tensor]]:
        m = self._module
        if m is None:
            return [], []
        cached = self._state_cached
        if cached is not None and cached[0] == _registrations[0]:
            return self._state_names, cached[1]
        if self._state_refs is None:
            # one entry per distinct tensor: tied weights are one graph input
            # (functional_call's tie_weights binds the other names)
            refs, names, seen, is_buf = [], [], set(), []
            for mod_name, mod in m.named_modules(remove_duplicate=False):
                for d in (mod._parameters, mod._buffers):
                    for k, v in d.items():
                        if v is None or id(v) in seen:
                            continue
                        full = f"{mod_name}.{k}" if mod_name else k
                        seen.add(id(v))
                        refs.append((d, k))
                        names.append(full)
                        is_buf.append(d is mod._buffers)
            self._state_refs, self._state_names, self._state_is_buffer = refs, names, is_buf
        ts = []
        for d, k in self._state_refs:
            t = d.get(k)
            if t is None:  # the module changed shape: rebuild the list
                self._state_refs = None
                return self._state()
            ts.append(t)
        _watch_registrations()
        self._state_cached = (_registrations[0], ts)
        return self._state_names, ts

    # ---- guards ----
    def _key(self, state: List[torch.Tensor], tensors: List[torch.Tensor], consts: tuple, spec) -> tuple:
        grad = torch.is_grad_enabled()
        return (grad, spec, consts, self._state_key(state), tuple(_tensor_key(t) for t in tensors))

    def _state_key(self, state: List[torch.Tensor]) -> tuple:
        """The guard key of the parameters and buffers, recomputed only when PyTorch's C++
        tensor guards see a change (dtype, device, shape, strides, requires_grad)."""
        if not state:
            return ()
        g = self._state_guard
        if g is not None and g.check(*state):
            return self._state_key_cached
        key = tuple(_tensor_key(t) for t in state)
        self._state_guard = _tensor_guards(state)
        self._state_key_cached = key
        return key

    def _warn_once(self, tag: str, msg: str) -> None:
        if tag not in self._warned:
            self._warned.add(tag)
            warnings.warn(f"kiln: {self._name}: {msg}", KilnWarning, stacklevel=4)

    def _eager(self, args, kwargs):
        return self._fn(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        fast = self._fast
        if fast is not None and not kwargs and len(args) == fast[0] and torch.is_grad_enabled() == fast[1]:
            state = self._state()[1]
            seen = self._weights_seen
            try:
                if (fast[4] is not None and not fast[1] and seen is not None and seen[0] == _registrations[0]
                        and seen[1].same(state) and fast[4].check(*args)):
                    # static_weights, grad off: the state at the addresses (and the frozen
                    # buffers at the versions) the last full check saw; only the arguments
                    # are guarded property by property
                    return self._run_static(fast[3], seen[1], state, args)
                all_tensors = state + list(args)
                hit = fast[2].check(*all_tensors)
            except TypeError:  # a non-tensor argument
                hit = False
            if hit:
                # every property of every tensor guarded; the state where the last call had
                # it (and the frozen buffers at their versions): bind only the arguments
                if seen is not None and seen[1].same(state):
                    return self._run_static(fast[3], seen[1], state, args)
                if _frozen_ok(fast[3], all_tensors):
                    self._weights_seen = (_registrations[0], _native.Addresses(state, [i for i, _, _ in fast[3][3]]))
                    return self._run(fast[3], all_tensors)
        state_names, state = self._state()
        if not kwargs and all(isinstance(a, torch.Tensor) for a in args):
            # the common case: positional tensors only (no pytree work on the hot path)
            flat, spec, tensors, consts = args, len(args), list(args), ()
        else:
            flat, spec = tree_flatten((args, kwargs))
            tensors = []
            consts_l = []
            for i, a in enumerate(flat):
                if isinstance(a, torch.Tensor):
                    tensors.append(a)
                else:
                    try:
                        hash(a)
                    except TypeError:
                        return self._refuse(f"argument {i} of type {type(a).__name__} is not hashable, so it cannot be guarded", args, kwargs)
                    consts_l.append((i, type(a), a))
            consts = tuple(consts_l)
        all_tensors = state + tensors
        key = self._key(state, tensors, consts, spec)
        entry = self._cache.get(key, _MISS)
        if entry is not _MISS and entry is not None and not _frozen_ok(entry, all_tensors):
            # a buffer compiled as a constant changed: compile this signature again
            del self._cache[key]
            self._fast = None
            entry = _MISS
        if entry is _MISS:
            entry = self._miss(key, state_names, all_tensors, args, kwargs)
        if entry is None:
            return self._eager(args, kwargs)
        if spec == len(args) and not kwargs:
            guards = _tensor_guards(all_tensors)
            arg_guards = _tensor_guards(list(args)) if self._static_weights else None
            self._fast = None if guards is None else (len(args), torch.is_grad_enabled(), guards, entry, arg_guards)
            self._weights_seen = None
        return self._run(entry, all_tensors)

    def _run_static(self, entry, weights, state: List[torch.Tensor], args) -> Any:
        plan = entry[0]
        r = plan._only_region
        if r is None or plan._only_outs is None:
            return self._run(entry, state + list(args))
        outs = r.run_static(weights, list(args))
        if entry[1] is None:  # a single tensor
            return outs[plan._only_outs[0]]
        return self._unflatten(entry, [outs[j] for j in plan._only_outs])

    @staticmethod
    def _run(entry, all_tensors: List[torch.Tensor]):
        outs = entry[0](all_tensors)
        if entry[1] is None:  # a single tensor
            return outs[0]
        return Compiled._unflatten(entry, outs)

    @staticmethod
    def _unflatten(entry, outs: List[torch.Tensor]) -> Any:
        _, out_spec, out_consts, _ = entry
        leaves = list(out_consts)
        it = iter(outs)
        for i, c in enumerate(leaves):
            if c is _TENSOR:
                leaves[i] = next(it)
        return tree_unflatten(leaves, out_spec)

    def _refuse(self, msg: str, args, kwargs):
        if self._strict:
            raise KilnError(f"{self._name}: {msg}")
        self._warn_once(msg, msg + "; running eagerly")
        return self._eager(args, kwargs)

    def _input_names(self, state_names: List[str], n: int) -> List[str]:
        names = [f"parameter {s!r}" for s in state_names]
        return names + [f"input {i}" for i in range(n - len(names))]

    def _miss(self, key, state_names, all_tensors, args, kwargs):
        with self._lock:
            names = self._input_names(state_names, len(all_tensors))
            # inputs Kiln cannot take at all
            for nm, t in zip(names, all_tensors):
                if t.dtype not in _DTYPES:
                    return self._bad(key, f"{nm}: expected dtype one of float32, float16, bfloat16, int32, int64, bool; got {dtype_name(t.dtype)}")
                if t.layout is not torch.strided:
                    return self._bad(key, f"{nm}: expected a dense (strided) tensor, got layout {t.layout}")
                if t.device.type not in ("cpu", "cuda"):
                    return self._bad(key, f"{nm}: expected a CPU or CUDA tensor, got device {t.device}")
                if t.requires_grad and torch.is_grad_enabled():
                    return self._bad(key, f"{nm}: requires_grad=True under grad mode (training); Kiln compiles inference only "
                                          "(call under torch.no_grad() or torch.inference_mode())")
            if len(self._cache) >= self._limit:
                why = _describe_key_diff(self._last_key[3] + self._last_key[4], key[3] + key[4], names) if self._last_key else "a new signature"
                msg = (f"recompile limit ({self._limit}) reached (last change: {why}); "
                       "this and further new signatures run eagerly")
                if self._strict:
                    raise KilnError(f"{self._name}: {msg}")
                self._warn_once("limit", msg)
                return None
            try:
                entry = self._compile(state_names, all_tensors, args, kwargs)
            except KilnError:
                raise
            except _RunEager as e:
                if self._strict:
                    raise KilnError(f"{self._name}: {e}") from None
                self._warn_once(f"eager:{e}", str(e))
                entry = None
            except Exception as e:  # capture failed: eager decides whether this is a user error
                if self._strict:
                    raise KilnError(f"{self._name}: capture failed: {type(e).__name__}: {e}") from e
                entry = None
                self._warn_once(f"capture:{type(e).__name__}", f"capture failed ({type(e).__name__}: {str(e)[:300]}); running eagerly")
            self._cache[key] = entry
            self._last_key = key
            return entry

    def _bad(self, key, msg: str):
        if self._strict:
            raise KilnError(f"{self._name}: {msg}")
        self._warn_once(msg, msg + "; running eagerly")
        self._cache[key] = None
        return None

    def _compile(self, state_names, all_tensors, args, kwargs):
        flat, spec = tree_flatten((args, kwargs))
        n_state = len(state_names)
        module = self._module
        fn = self._fn
        tensor_pos = [i for i, a in enumerate(flat) if isinstance(a, torch.Tensor)]
        box: Dict[str, Any] = {}

        def flat_fn(*ts):
            leaves = list(flat)
            for i, t in zip(tensor_pos, ts[n_state:]):
                leaves[i] = t
            a, kw = tree_unflatten(leaves, spec)
            if module is not None:
                out = torch.func.functional_call(module, dict(zip(state_names, ts[:n_state])), tuple(a), kw, strict=False, tie_weights=True)
            else:
                out = fn(*a, **kw)
            out_flat, out_spec = tree_flatten(out)
            box["spec"] = out_spec
            box["consts"] = [_TENSOR if isinstance(o, torch.Tensor) else o for o in out_flat]
            return [o for o in out_flat if isinstance(o, torch.Tensor)]

        gm = capture(flat_fn, n_state, all_tensors)
        random_ops = sorted({str(n.target) for n in gm.graph.nodes if n.op == "call_function" and _draws_random(n)})
        if random_ops:
            # the captured graph would not replay the Python-side RNG effects (seeding,
            # the order random numbers are drawn in) exactly as eager does
            raise _RunEager(f"it draws random numbers ({', '.join(random_ops)}); it runs eagerly")
        frozen = _freeze_causal_masks(gm, all_tensors[:n_state], self._state_is_buffer[:n_state])
        plan = build_plan(gm, strict=self._strict, name=self._name)
        if box["consts"] == [_TENSOR] and box["spec"] == _LEAF_SPEC:
            return plan, None, None, frozen  # a single tensor: returned as it is
        return plan, box["spec"], box["consts"], frozen

    # ---- introspection ----
    def plans(self) -> List[Plan]:
        """The compiled plans, one per guard signature seen."""
        return [e[0] for e in self._cache.values() if e is not None]

    @property
    def cache_size(self) -> int:
        return len(self._cache)


def _is_causal_ones(t: torch.Tensor) -> bool:
    """Whether ``t`` is ``tril(ones(n, n))`` (viewed with leading 1s), nanoGPT's mask buffer."""
    if t.dim() < 2 or t.shape[-1] != t.shape[-2] or any(s != 1 for s in t.shape[:-2]) or t.dtype not in _DTYPES:
        return False
    if t.dtype is torch.bool:
        return False  # handled the same way, but nanoGPT's is a float buffer; keep it narrow
    n = t.shape[-1]
    if n < 2 or n > 65536:
        return False
    m = t.reshape(n, n)
    return bool(torch.equal(m, torch.ones((n, n), dtype=t.dtype, device=t.device).tril()))


def _freeze_causal_masks(gm: torch.fx.GraphModule, state: List[torch.Tensor], is_buffer: List[bool]) -> tuple:
    """Compiles buffers that hold a causal mask (``tril(ones(n, n))``, nanoGPT's ``bias``) as
    that constant: the placeholder's readers read ``view(tril(ones(n, n)))`` computed in the
    graph, which Kiln's attention discovery recognises as causal (as in the Rust tracer's
    GPT-2), instead of a mask loaded from memory. Returns ``((input index, version, data
    pointer), ...)`` of the frozen buffers: a call whose buffer was modified in place
    (version), or replaced (pointer), compiles again."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    frozen = []
    for i, (ph, t, buf) in enumerate(zip(placeholders, state, is_buffer)):
        if not buf or not ph.users or not _is_causal_ones(t):
            continue
        n = t.shape[-1]
        like = t.new_empty(())  # meta values: zero-size stand-ins of the right shape and dtype
        with gm.graph.inserting_after(ph):
            ones = gm.graph.call_function(aten.ones.default, ([n, n],), {"dtype": t.dtype, "device": t.device, "pin_memory": False})
            ones.meta["val"] = like.expand(n, n)
            with gm.graph.inserting_after(ones):
                tril = gm.graph.call_function(aten.tril.default, (ones,))
                tril.meta["val"] = like.expand(n, n)
                with gm.graph.inserting_after(tril):
                    view = gm.graph.call_function(aten.view.default, (tril, list(t.shape)))
                    view.meta["val"] = like.expand(*t.shape)
        ph.replace_all_uses_with(view)
        frozen.append((i, t._version, t.data_ptr()))
    if frozen:
        gm.graph.lint()
        gm.recompile()
    return _FrozenBuffers(frozen)


class _FrozenBuffers(tuple):
    """``((input index, version, data pointer), ...)`` with its native checker (one call per
    Kiln call instead of a Python loop over the buffers)."""

    def __new__(cls, items):
        self = super().__new__(cls, items)
        self.checker = _native.Frozen(list(items))
        return self


def _frozen_ok(entry, all_tensors: List[torch.Tensor]) -> bool:
    """Whether the buffers ``entry`` compiled as constants are unchanged (see above)."""
    frozen = entry[3]
    return not frozen or frozen.checker.ok(all_tensors)


class _TensorMarker:
    def __repr__(self):
        return "<tensor>"


_TENSOR = _TensorMarker()
_LEAF_SPEC = tree_flatten(0)[1]
