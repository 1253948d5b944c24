"""Host time of one `@kiln.compile` GPT-2 small b1 t32 call on CUDA, and where it goes.

For each mode (the default, fully guarded path and `static_weights=True`): the median host
time of a call with the device idle before it, then the parts of the default path timed
alone: PyTorch's C++ `TensorGuards.check` over the parameters and the input, the native
address check of the parameters, and the region's launch with only the input bound.

Usage (a CUDA machine, the kiln package importable):
    python3 python/benches/host_time.py [--profile]
`--profile` adds a cProfile of 200 default-path calls."""

import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/", 3)[0] + "/benches")
import compare_torch as ct  # noqa: E402
import kiln  # noqa: E402
from kiln import _native  # noqa: E402


def loop_us(fn, reps=2000) -> float:
    """Mean time of `fn()` back to back (for host-only parts)."""
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e6


def host_us(fn) -> float:
    """compare_torch's host time (device idle before each call), median of 200 calls."""
    return ct.host_us(fn, torch.device("cuda"), reps=200)


def main() -> None:
    if not torch.cuda.is_available():
        print("host_time: no CUDA device; nothing to measure")
        return
    torch.manual_seed(0)
    m = ct.GPT2(n_layer=12).to(device="cuda", dtype=torch.bfloat16).eval()
    x = torch.randn(1, 32, 768, device="cuda", dtype=torch.bfloat16)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, GPT-2 small b1 t32 bf16, "
          f"{len(list(m.parameters()))} parameters")
    with torch.no_grad():
        for sw in (False, True):
            c = kiln.compile(m, static_weights=sw)
            ref = m(x)
            out = c(x)
            err = ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
            assert err < 5e-2, f"output differs from eager by {err:.3g} (relative to its max)"
            for _ in range(5):
                c(x)
            print(f"static_weights={sw}: host {host_us(lambda: c(x)):.1f} us/call (median of 200, device idle before each)")
        c = kiln.compile(m)
        for _ in range(3):
            c(x)
        state = c._state()[1]
        all_tensors = state + [x]
        guards = c._fast[2]
        addrs = _native.Addresses(state)
        entry = c._fast[3]
        region = entry[0]._only_region
        print(f"  TensorGuards.check over {len(all_tensors)} tensors: {loop_us(lambda: guards.check(*all_tensors)):.1f} us")
        print(f"  Addresses.same over {len(state)} parameters: {loop_us(lambda: addrs.same(state)):.1f} us")
        if region is not None:
            print(f"  the region's launch, the input bound (run_static): {host_us(lambda: region.run_static(addrs, [x])):.1f} us")
        if "--profile" in sys.argv:
            import cProfile
            import pstats

            pr = cProfile.Profile()
            pr.enable()
            for _ in range(200):
                c(x)
            pr.disable()
            torch.cuda.synchronize()
            pstats.Stats(pr).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
