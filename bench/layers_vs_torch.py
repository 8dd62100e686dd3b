"""The drop-in issue's layers against PyTorch eager: one training step (forward, cross-entropy,
backward, SGD) of a small model around each layer, float32, fastgrad compiled vs torch eager,
in alternating rounds in one process (the ratio is precise to a few percent where a whole
benchmark process is not).

    python bench/layers_vs_torch.py [--rounds 15] [--steps 50] [--torch-threads 1]

Prints, per model, the median step time of each and the median of the per-round ratios
(torch time / fastgrad time: > 1, fastgrad is faster). Needs torch (the ``torch`` extra).
Results: docs/benchmarks.md, "Layers against PyTorch".
"""

import argparse
import platform
import statistics
import time

import numpy as np

import fastgrad as fg

torch = None  # imported by main(): the module imports without torch (pytest's doctest pass)


def conv_model(nn, **kw):
    """Conv2d 1 -> 16 -> 32 channels, 3x3, padding 1, on 8x8 digits-sized images."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, **kw), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1, **kw), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32 * 8 * 8, 10, **kw))


class EmbeddingModel:
    """Embedding(1000, 64) over 64 x 32 tokens, averaged, then a linear readout."""

    def __init__(self, nn, **kw):
        self.emb, self.head = nn.Embedding(1000, 64, **kw), nn.Linear(64, 10, **kw)

    def __call__(self, tokens):
        return self.head(self.emb(tokens).mean(1))

    def parameters(self):
        return [*self.emb.parameters(), *self.head.parameters()]

    def astype(self, dtype):
        self.emb.astype(dtype)
        self.head.astype(dtype)


def layer_norm_model(nn, **kw):
    """LayerNorm(256) at batch 128, then a linear readout."""
    return nn.Sequential(nn.LayerNorm(256), nn.Linear(256, 10, **kw))


def cases(rng):
    yield ("Conv2d 1-16-32 3x3, 8x8, batch 64", conv_model,
           rng.standard_normal((64, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 64))
    yield ("Embedding(1000, 64), 64x32 tokens", EmbeddingModel, rng.integers(0, 1000, (64, 32)),
           rng.integers(0, 10, 64))
    yield ("LayerNorm(256), batch 128", layer_norm_model,
           rng.standard_normal((128, 256)).astype(np.float32), rng.integers(0, 10, 128))


def fastgrad_step(build, x, y):
    model = build(fg.nn, seed=0)
    model.astype(np.float32)  # float32 parameters, as torch's default and the data
    opt = fg.optim.SGD(model.parameters(), lr=0.01)
    step = fg.compile(lambda a, b: fg.cross_entropy(model(a), b), optimizer=opt)
    return lambda: step(x, y)


def torch_step(build, x, y):
    model = build(torch.nn)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    tx, ty = torch.tensor(x), torch.tensor(y)

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(tx), ty).backward()
        opt.step()

    return step


def main():
    global torch
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=50, help="steps per round")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch.set_num_threads (default: torch's own)")
    args = ap.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    print(f"{platform.machine()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"fastgrad {fg.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    rng = np.random.default_rng(0)
    for name, build, x, y in cases(rng):
        ours, theirs = fastgrad_step(build, x, y), torch_step(build, x, y)
        for f in (ours, theirs):  # compile, warm up
            f(), f()
        times = {"fastgrad": [], "torch": []}
        for _ in range(args.rounds):
            for label, f in (("fastgrad", ours), ("torch", theirs)):
                start = time.perf_counter()
                for _ in range(args.steps):
                    f()
                times[label].append((time.perf_counter() - start) / args.steps)
        ratios = [t / f for f, t in zip(times["fastgrad"], times["torch"])]
        print(f"  {name}: fastgrad {statistics.median(times['fastgrad']) * 1e6:.0f} us, torch "
              f"{statistics.median(times['torch']) * 1e6:.0f} us, ratio "
              f"{statistics.median(ratios):.2f} (quartiles "
              f"{np.percentile(ratios, 25):.2f}-{np.percentile(ratios, 75):.2f})")


if __name__ == "__main__":
    main()
