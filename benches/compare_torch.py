#!/usr/bin/env python3
"""The benchmark suite of ../shared/bench/WORKLOADS.md in plain PyTorch, side by side.

For each workload, in one process on one device: PyTorch eager, torch.compile (default and
mode="reduce-overhead"), SDPA where it applies, and Kiln through `@kiln.compile` when the
`kiln` package is importable. Every variant's output is checked against an fp32 eager
reference (computed from the same inputs) before anything is timed. Times are medians of
device-event timings with the L2 flushed between runs (as triton.testing.do_bench does);
kernels per call are counted with torch.profiler.

    python3 benches/compare_torch.py --json out.json --markdown out.md [--filter attn] [--small]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

# --------------------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------------------


def ew_chain(x, a, b):
    return torch.sigmoid(x * a + b) * x


def layernorm_residual(x, r, w, b):
    return F.layer_norm(x + r, (x.shape[-1],), w, b)


def softmax(x):
    return torch.softmax(x, dim=-1)


def mlp_gelu(x, w1, b1, w2, b2):
    return F.gelu(x @ w1 + b1) @ w2 + b2


def attn_causal(q, k, v):
    T, d = q.shape[-2], q.shape[-1]
    att = (q @ k.transpose(-2, -1)) * d**-0.5
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool, device=q.device))
    att = att.masked_fill(~mask, float("-inf"))
    return torch.softmax(att, dim=-1) @ v


def attn_plain(q, k, v):
    d = q.shape[-1]
    att = (q @ k.transpose(-2, -1)) * d**-0.5
    return torch.softmax(att, dim=-1) @ v


def sdpa_causal(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def sdpa_plain(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


class Block(nn.Module):
    """nanoGPT's block: LayerNorm, fused qkv Linear, naive causal attention, GELU-tanh MLP."""

    def __init__(self, d=768, h=12, block_size=1024):
        super().__init__()
        self.h = h
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = nn.Linear(d, 4 * d)
        self.mlp_proj = nn.Linear(4 * d, d)
        self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size))

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q = q.view(B, T, self.h, C // self.h).transpose(1, 2)
        k = k.view(B, T, self.h, C // self.h).transpose(1, 2)
        v = v.view(B, T, self.h, C // self.h).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.c_proj(y)
        x = x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))
        return x


class GPT2(nn.Module):
    def __init__(self, n_layer=12, d=768, h=12, block_size=1024):
        super().__init__()
        self.h = nn.ModuleList([Block(d, h, block_size) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(d)

    def forward(self, x):
        for blk in self.h:
            x = blk(x)
        return self.ln_f(x)


@dataclass
class Workload:
    name: str
    make: Callable  # (device, dtype, gen, small) -> (fn, args, flops, bytes, sdpa_fn)
    bound: str


def _randn(shape, device, dtype, gen, scale=1.0):
    return (torch.randn(shape, generator=gen, device="cpu", dtype=torch.float32) * scale).to(device=device, dtype=dtype)


def _w_ew(dev, dt, g, small):
    n = 1024 if small else 8192
    x, a, b = _randn((n, n), dev, dt, g), _randn((n,), dev, dt, g), _randn((n,), dev, dt, g)
    return ew_chain, (x, a, b), 5 * n * n, x.element_size() * (2 * n * n + 2 * n), None


def _w_ln(dev, dt, g, small):
    rows, c = (1024, 1024) if small else (16384, 4096)
    x, r = _randn((rows, c), dev, dt, g), _randn((rows, c), dev, dt, g)
    w, b = _randn((c,), dev, dt, g, 0.1) + 1, _randn((c,), dev, dt, g, 0.1)
    return layernorm_residual, (x, r, w, b), 8 * rows * c, x.element_size() * (3 * rows * c + 2 * c), None


def _w_softmax(dev, dt, g, small):
    rows, c = (1024, 1024) if small else (16384, 4096)
    x = _randn((rows, c), dev, dt, g)
    return softmax, (x,), 5 * rows * c, x.element_size() * 2 * rows * c, None


def _w_mlp(dev, dt, g, small):
    m, k, n = (256, 256, 1024) if small else (8192, 4096, 16384)
    x = _randn((m, k), dev, dt, g)
    w1, b1 = _randn((k, n), dev, dt, g, k**-0.5), _randn((n,), dev, dt, g, 0.1)
    w2, b2 = _randn((n, k), dev, dt, g, n**-0.5), _randn((k,), dev, dt, g, 0.1)
    return mlp_gelu, (x, w1, b1, w2, b2), 4 * m * k * n, x.element_size() * (2 * m * k + 2 * k * n + m * n), None


def _w_attn(causal, b, h, s, d):
    def make(dev, dt, g, small):
        bb, hh, ss, dd = (1, 2, 128, d) if small else (b, h, s, d)
        q, k, v = (_randn((bb, hh, ss, dd), dev, dt, g) for _ in range(3))
        flops = 4 * bb * hh * ss * ss * dd // (2 if causal else 1)
        return (attn_causal if causal else attn_plain), (q, k, v), flops, q.element_size() * 4 * q.numel(), (sdpa_causal if causal else sdpa_plain)

    return make


def _w_gpt2(b, t):
    def make(dev, dt, g, small):
        torch.manual_seed(0)
        n_layer = 2 if small else 12
        model = GPT2(n_layer=n_layer).to(device=dev, dtype=dt).eval()
        x = _randn((b, t if not small else min(t, 64), 768), dev, dt, g)
        params = sum(p.numel() for p in model.parameters())
        return model, (x,), 2 * params * x.shape[0] * x.shape[1], 0, None

    return make


WORKLOADS = [
    Workload("ew_chain", _w_ew, "memory"),
    Workload("layernorm_residual", _w_ln, "memory"),
    Workload("softmax", _w_softmax, "memory"),
    Workload("mlp_gelu", _w_mlp, "tensor cores"),
    Workload("attn_s2048_d64_causal", _w_attn(True, 8, 16, 2048, 64), "tensor cores"),
    Workload("attn_s4096_d128", _w_attn(False, 4, 16, 4096, 128), "tensor cores"),
    Workload("gpt2_small_b1_t32", _w_gpt2(1, 32), "launch overhead"),
    Workload("gpt2_small_b8_t1024", _w_gpt2(8, 1024), "tensor cores"),
]

# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------


class Timer:
    """Median time of `fn()` in ms: device events and an L2 flush on CUDA, wall clock on CPU."""

    def __init__(self, device):
        self.device = device
        self.flush = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device=device) if device.type == "cuda" else None

    def __call__(self, fn, warmup=5, reps=50, budget_s=3.0):
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        t_end = time.perf_counter() + budget_s
        for i in range(reps):
            if self.flush is not None:
                self.flush.zero_()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            if i >= 4 and time.perf_counter() > t_end:
                break
        return statistics.median(times)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def host_us(fn, device, reps=50) -> float | None:
    """Host time of one call in us: from the call to its return (the work only enqueued),
    with the device idle before each call. Median of `reps` (None on CPU)."""
    if device.type != "cuda":
        return None
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(times)


def count_kernels(fn, device) -> int | None:
    """CUDA kernels launched by one call, read with torch.profiler (None on CPU)."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    n = 0
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and not e.name.startswith(("Memcpy", "Memset")):
            n += 1
    return n


def rel_error(out, ref) -> float:
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def tolerance(dtype) -> float:
    return {torch.float32: 1e-3, torch.bfloat16: 3e-2, torch.float16: 1e-2}[dtype]


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    bound: str
    results: dict = field(default_factory=dict)  # variant -> {ms, kernels, err, note}
    flops: int = 0
    bytes: int = 0


def variants(fn, sdpa_fn, kiln_mod):
    v = {"eager": fn}
    v["torch.compile"] = torch.compile(fn)
    v["reduce-overhead"] = torch.compile(fn, mode="reduce-overhead")
    if sdpa_fn is not None:
        v["SDPA"] = sdpa_fn
    if kiln_mod is not None:
        v["kiln"] = kiln_mod.compile(fn)
        if isinstance(fn, nn.Module):
            # the parameters guarded by address only (see kiln.compile's static_weights)
            v["kiln static_weights"] = kiln_mod.compile(fn, static_weights=True)
    return v


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filter", default="", help="run workloads whose name contains this")
    ap.add_argument("--json", help="write results to this JSON file")
    ap.add_argument("--markdown", help="write the BENCHMARKS.md table to this file")
    ap.add_argument("--small", action="store_true", help="small shapes (CPU smoke runs)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="bf16 (GPU default) or f32 (CPU default)")
    ap.add_argument("--no-kiln", action="store_true", help="skip Kiln even if importable")
    ap.add_argument("--variants", default=os.environ.get("KILN_COMPARE_VARIANTS", ""),
                    help="comma list to restrict variants (eager,torch.compile,reduce-overhead,SDPA,kiln,kiln static_weights); "
                         "default $KILN_COMPARE_VARIANTS, else all")
    ap.add_argument("--explain", metavar="DIR", help="write kiln.explain (regions, kernels, fallbacks) of each workload to DIR/NAME.txt")
    args = ap.parse_args()

    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32, None: None}[args.dtype]
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    kiln_mod = None
    if not args.no_kiln:
        try:
            import kiln as kiln_mod  # noqa: F401
        except ImportError as e:
            print(f"[compare_torch] kiln not importable ({e}); timing PyTorch only", file=sys.stderr)
    keep = set(filter(None, args.variants.split(",")))
    timer = Timer(device)
    rows = []
    to_count = []  # (result entry, compiled fn, inputs): kernel counts, taken last
    torch.backends.cuda.matmul.allow_tf32 = False
    for w in WORKLOADS:
        if args.filter not in w.name:
            continue
        gen = torch.Generator().manual_seed(1234)
        fn, inputs, flops, nbytes, sdpa_fn = w.make(device, dtype, gen, args.small)
        row = Row(w.name, w.bound, flops=flops, bytes=nbytes)
        with torch.no_grad():
            # fp32 reference from the same inputs
            if isinstance(fn, nn.Module):
                ref_model = GPT2(n_layer=len(fn.h)).to(device=device, dtype=torch.float32).eval()
                ref_model.load_state_dict({k: v.float() for k, v in fn.state_dict().items()})
                ref = ref_model(*[t.float() for t in inputs])
                del ref_model
            else:
                ref = fn(*[t.float() for t in inputs])
            for vname, vfn in variants(fn, sdpa_fn, kiln_mod).items():
                if keep and vname not in keep:
                    continue
                entry = {}
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        t0 = time.perf_counter()
                        out = vfn(*inputs)
                        timer.sync()
                        entry["first_call_s"] = round(time.perf_counter() - t0, 3)
                    if args.explain and vname == "kiln":
                        os.makedirs(args.explain, exist_ok=True)
                        with open(os.path.join(args.explain, f"{w.name}.txt"), "w") as f:
                            f.write(str(kiln_mod.explain(vfn, *inputs)) + "\n")
                    if caught:
                        entry["warnings"] = [str(c.message)[:200] for c in caught][:3]
                    err = rel_error(out, ref)
                    entry["rel_err"] = err
                    if not err <= tolerance(dtype):
                        entry["note"] = f"WRONG: relative error {err:.2e} > {tolerance(dtype):.0e}; not timed"
                    else:
                        entry["ms"] = timer(lambda: vfn(*inputs))
                        entry["host_us"] = host_us(lambda: vfn(*inputs), device)
                        # counted after every workload is timed: once torch.profiler has
                        # attached CUPTI, launches (host and device side) stay slower for the
                        # rest of the process
                        to_count.append((entry, vfn, inputs))
                except Exception as e:  # a variant failing is a result, not a crash
                    entry["note"] = f"failed: {type(e).__name__}: {str(e)[:200]}"
                row.results[vname] = entry
                ms = entry.get("ms")
                hu = entry.get("host_us")
                print(f"{w.name:24s} {vname:16s} " + (f"{ms:9.4f} ms  err={entry['rel_err']:.1e}"
                                                      + (f"  host {hu:.1f} us/call" if hu else "") if ms else entry.get("note", "")), flush=True)
        rows.append(row)
        del fn
        if device.type == "cuda":
            torch.cuda.empty_cache()

    for entry, vfn, inputs in to_count:
        with torch.no_grad():
            entry["kernels"] = count_kernels(lambda: vfn(*inputs), device)
    del to_count
    for r in rows:
        for vname, entry in r.results.items():
            if "ms" in entry:
                print(f"{r.name:24s} {vname:20s} kernels={entry.get('kernels')}", flush=True)

    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "dtype": str(dtype).replace("torch.", ""),
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["python3"] + sys.argv),
        "small": args.small,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": [r.__dict__ for r in rows]}, f, indent=1)
    table = markdown(rows, meta)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)


def markdown(rows, meta) -> str:
    names = ["eager", "torch.compile", "reduce-overhead", "SDPA", "kiln"]
    out = [f"Device: {meta['device']}, torch {meta['torch']}, {meta['dtype']}, {meta['date']}. Command: `{meta['command']}`", ""]
    out.append("| workload | " + " | ".join(f"{n} ms (kernels)" for n in names) + " | kiln vs eager | kiln vs torch.compile | kiln host us/call |")
    out.append("|---" * (len(names) + 4) + "|")
    for r in rows:
        cells = []
        for n in names:
            e = r.results.get(n)
            if e is None:
                cells.append("")
            elif "ms" in e:
                k = e.get("kernels")
                cells.append(f"{e['ms']:.3f}" + (f" ({k})" if k is not None else ""))
            else:
                cells.append(e.get("note", "")[:60])
        k, eg, tc = (r.results.get(n, {}).get("ms") for n in ("kiln", "eager", "torch.compile"))
        ratio = lambda a, b: f"{b / a:.2f}x" if a and b else ""
        hu = r.results.get("kiln", {}).get("host_us")
        out.append(f"| {r.name} | " + " | ".join(cells) + f" | {ratio(k, eg)} | {ratio(k, tc)} | " + (f"{hu:.1f}" if hu else "") + " |")
    # Host time per call of every variant (GPU runs only: the device idle before each call).
    hosted = [r for r in rows if any(e.get("host_us") for e in r.results.values())]
    if hosted:
        hnames = names + ["kiln static_weights"]
        out += ["", "Host time per call (us; until the call returns, the device idle before it), same run:", "",
                "| workload | " + " | ".join(hnames) + " |", "|---" * (len(hnames) + 1) + "|"]
        for r in hosted:
            cells = [f"{r.results.get(n, {}).get('host_us'):.1f}" if r.results.get(n, {}).get("host_us") else "" for n in hnames]
            out.append(f"| {r.name} | " + " | ".join(cells) + " |")
    static = [(r.name, r.results["kiln static_weights"]) for r in rows if "ms" in r.results.get("kiln static_weights", {})]
    if static:
        out += ["", "kiln.compile(model, static_weights=True), same run:", "",
                "| workload | kiln static_weights ms (kernels) | host us/call |", "|---|---|---|"]
        for name, e in static:
            k = e.get("kernels")
            hu = e.get("host_us")
            out.append(f"| {name} | {e['ms']:.3f}" + (f" ({k})" if k is not None else "") + " | " + (f"{hu:.1f}" if hu else "") + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
