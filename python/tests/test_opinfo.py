"""PyTorch's own OpInfo samples (float32, CPU) for every op Kiln claims to support.

Each sample runs eagerly and through ``kiln.compile``. A sample either compiles (some of
its ops run in a Kiln region) and matches, or falls back (runs in PyTorch, with a reason);
a wrong result fails the test. Fallbacks are written to ``$KILN_TEST_OUT/opinfo_fallbacks.txt``
(default: the pytest temp dir) and summarized on stdout.
"""

import os
import warnings
from collections import Counter, defaultdict

import pytest
import torch

import kiln
from conftest import assert_same

MAX_SAMPLES = int(os.environ.get("KILN_OPINFO_SAMPLES", "6"))


def _claimed_names():
    """OpInfo names whose ATen op Kiln's importer maps (by aten name)."""
    names = set()
    for t in kiln.supported_ops():
        if not t.startswith("aten."):
            continue
        base = t.split(".")[1]
        base = base.removesuffix("_copy") if base != "_to_copy" else base
        names.add(base.lstrip("_"))
    return names


def _opinfos():
    from torch.testing._internal.common_methods_invocations import op_db

    claimed = _claimed_names()
    extra = {"nn.functional.gelu", "nn.functional.layer_norm", "nn.functional.rms_norm", "nn.functional.silu",
             "nn.functional.relu", "nn.functional.linear", "nn.functional.leaky_relu", "nn.functional.hardtanh",
             "nn.functional.scaled_dot_product_attention", "softmax", "log_softmax", "nn.functional.softmax",
             "nn.functional.log_softmax", "matmul", "true_divide", "square", "addcmul", "addcdiv", "lerp",
             "baddbmm", "addmv", "nn.functional.hardsigmoid", "nn.functional.hardswish", "nn.functional.glu",
             "logsumexp", "std_mean", "var_mean", "trunc", "frac", "xlogy", "sign", "sgn", "exp2", "log2", "log10",
             "sinh", "cosh", "hypot", "nan_to_num", "new_zeros", "new_ones", "new_full", "masked_fill", "tril", "triu",
             "where", "clamp_min", "clamp_max", "chunk", "hsplit", "vsplit", "flatten", "unflatten", "movedim",
             "swapaxes", "narrow", "select", "squeeze", "unsqueeze", "view_as", "reshape_as", "expand_as",
             "nn.functional.pad", "contiguous", "t", "mT", "float", "half", "bfloat16", "int", "long", "bool",
             "nn.functional.relu6", "nn.functional.mish", "nn.functional.hardshrink", "nn.functional.softshrink",
             "nn.functional.threshold", "nn.functional.batch_norm", "nn.functional.group_norm"}
    out = []
    for op in op_db:
        aten_name = (op.aten_name or op.name).lstrip("_")
        if op.name in extra or aten_name in claimed or op.name in claimed:
            if torch.float32 in op.supported_dtypes("cpu"):
                out.append(op)
    return out


try:
    OPS = _opinfos()
    _SKIP = None
except ImportError as e:  # torch.testing._internal needs expecttest (and a torch build with tests)
    OPS, _SKIP = [], f"PyTorch's OpInfo database is not importable: {e}"
RESULTS = defaultdict(Counter)
FALLBACKS = []


def _run_sample(op, sample):
    fn = op.op
    args = [sample.input, *sample.args]
    kwargs = dict(sample.kwargs)
    with torch.no_grad():
        try:
            torch.manual_seed(1)
            want = fn(*args, **kwargs)
            torch.manual_seed(2)
            again = fn(*args, **kwargs)
        except Exception:
            return "skip", "eager raised"
        try:
            assert_same(again, want, rtol=0, atol=0)
        except AssertionError:
            return "skip", "random (eager differs from itself)"
        c = kiln.compile(lambda *a, **k: fn(*a, **k), name=op.name)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            try:
                got = c(*args, **kwargs)
            except Exception as e:  # a crash is a failure, reported as such
                return "crash", f"{type(e).__name__}: {e}"
    try:
        assert_same(got, want)
    except AssertionError as e:
        return "wrong", str(e)[:500]
    plans = c.plans()
    if not plans:
        msg = "; ".join(str(m.message) for m in w) or "not compiled"
        return "fallback", msg
    p = plans[-1]
    if not p.regions:
        reasons = sorted({f"{f.target}: {f.reason}" for f in p.fallbacks}) or ["no ops"]
        return "fallback", "; ".join(reasons)
    if p.fallbacks:
        return "partial", "; ".join(sorted({f"{f.target}: {f.reason}" for f in p.fallbacks}))
    return "compiled", ""


@pytest.mark.parametrize("op", OPS, ids=[f"{o.name}.{o.variant_test_name}" if o.variant_test_name else o.name for o in OPS])
def test_opinfo(op):
    name = f"{op.name}.{op.variant_test_name}" if op.variant_test_name else op.name
    wrong = []
    samples = op.sample_inputs("cpu", torch.float32, requires_grad=False)
    for i, s in enumerate(samples):
        if i >= MAX_SAMPLES:
            break
        status, why = _run_sample(op, s)
        RESULTS[name][status] += 1
        if status in ("fallback", "partial"):
            FALLBACKS.append((name, i, status, why))
        if status in ("wrong", "crash"):
            wrong.append(f"sample {i}: {status}: {why}")
    assert not wrong, "\n".join(wrong)


def test_opinfo_summary(tmp_path_factory):
    """Writes the fallback list and prints a summary (runs after the sweep)."""
    if not RESULTS:
        pytest.skip(_SKIP or "the sweep did not run")
    out_dir = os.environ.get("KILN_TEST_OUT") or str(tmp_path_factory.mktemp("opinfo"))
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "opinfo_fallbacks.txt")
    totals = Counter()
    for c in RESULTS.values():
        totals.update(c)
    with open(path, "w") as f:
        f.write(f"# OpInfo sweep (float32, CPU, <= {MAX_SAMPLES} samples per op): {dict(totals)}\n")
        for name, i, status, why in FALLBACKS:
            why = " ".join(why.split())[:400]  # one line per fallback
            f.write(f"{name}\tsample {i}\t{status}\t{why}\n")
    fully = sum(1 for c in RESULTS.values() if set(c) <= {"compiled", "skip"} and c["compiled"])
    print(f"\nOpInfo sweep: {len(RESULTS)} ops, {sum(totals.values())} samples: "
          f"{totals['compiled']} compiled, {totals['partial']} partly compiled, {totals['fallback']} fell back, "
          f"{totals['skip']} skipped, {totals['wrong']} wrong, {totals['crash']} crashed; "
          f"{fully} ops compiled on every sample. Fallbacks listed in {path}")
    assert totals["wrong"] == 0 and totals["crash"] == 0
