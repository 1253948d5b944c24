"""Per-call time of kiln.compile'd callables vs eager PyTorch (and torch.compile), same
process, CPU tensors. Usage: python3 python/benches/overhead.py [--big]"""

import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/", 2)[0] + "/tests")
import kiln  # noqa: E402
from models import GPT, MLP  # noqa: E402


def per_call(fn, *args, reps=None, warm=3):
    for _ in range(warm):
        fn(*args)
    if reps is None:
        t = time.perf_counter()
        fn(*args)
        one = max(time.perf_counter() - t, 1e-7)
        reps = int(min(20000, max(5, 0.5 / one)))
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            fn(*args)
        best = min(best, (time.perf_counter() - t) / reps)
    return best * 1e6


def row(name, eager, args):
    t0 = time.perf_counter()
    k = kiln.compile(eager, strict=False)
    k(*args)
    compile_s = time.perf_counter() - t0
    tc = torch.compile(eager)
    tc(*args)
    e, kk, c = per_call(eager, *args), per_call(k, *args), per_call(tc, *args)
    p = k.plans()[-1] if k.plans() else None
    desc = f"{len(p.regions)} region(s), {sum(r.kernels for r in p.regions)} kernels, {len(p.fallbacks)} fallbacks" if p else "eager"
    print(f"{name:28s} eager {e:9.1f} us   kiln {kk:9.1f} us   torch.compile {c:9.1f} us   ({desc}; first call {compile_s:.2f} s)")


def main():
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with torch.no_grad():
        row("x + 1 (1 element)", lambda x: x + 1, (torch.randn(1),))
        row("softmax [8, 64]", lambda x: torch.softmax(x * 2, -1), (torch.randn(8, 64),))
        m = MLP(256, 512, 256).eval()
        row("MLP 256-512-256, batch 8", m, (torch.randn(8, 256),))
        g = GPT(vocab_size=512, block_size=64, n_layer=2, n_head=4, n_embd=128, spelling="masked_fill").eval()
        row("GPT 2x128, b1 t32", g, (torch.randint(0, 512, (1, 32)),))
        if "--big" in sys.argv:
            g = GPT(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, spelling="masked_fill").eval()
            row("GPT-2 small, b1 t32", g, (torch.randint(0, 50257, (1, 32)),))


if __name__ == "__main__":
    main()
