"""Where a scan step's time goes: the fused cell, plain-op cells, and the same rows unrolled.

Per step of forward + backward (a compiled value-and-gradient, no optimizer), for an Elman cell
of hidden H, batch B, float32 or float64, T steps:

  fused      fg.nn.RNN(H, H): one LINEAR_ACT row, run by the single-cell scan kernel
  plain_T    fg.scan over (h @ Wh.T + x).tanh(): matmul, add, tanh rows, which the fusion
             pass (fastgrad/transforms/fusion.py) makes one LINEAR_ACT row, as fused
  plain      fg.scan over (h @ Wh + x).tanh() (weight stored (in, out)): the same, the product
             on the weight as it is stored (trans_b=0)
  unfused_T  plain_T with fg.compile(..., fuse=False): the three rows by the general path
  unrolled   the rows of ``plain`` recorded T times on one tape, no scan, not fused: what the
             rows cost through the replay loops, the floor the general scan path is measured
             against

Run:   python bench/scan_body.py                  (H 64, B 1, T 2000, both dtypes)
       python bench/scan_body.py --hidden 64 --batch 16 --steps 5000 --dtype float32
Prints µs per step (median of rounds) and each path against ``unrolled``. Results and the
breakdown: docs/benchmarks.md, "Scan body".
"""

import argparse
import statistics
import time

import numpy as np

import fastgrad as fg


def _data(hidden, batch, steps, dtype, seed=0):
    rng = np.random.default_rng(seed)
    xs = (rng.standard_normal((steps, batch, hidden)) * 0.1).astype(dtype)
    w = (rng.standard_normal((hidden, hidden)) * (0.9 / np.sqrt(hidden))).astype(dtype)
    return xs, w


def fused(hidden, batch, steps, dtype):
    xs, w = _data(hidden, batch, steps, dtype)
    rnn = fg.nn.RNN(hidden, hidden, bias=False, seed=0, dtype=dtype)
    rnn.weight_hh_l0.numpy()[...] = w
    eye = np.eye(hidden, dtype=dtype)
    rnn.weight_ih_l0.numpy()[...] = eye  # x enters as itself, as in the plain cells

    def loss(x):
        _, h = rnn(x)
        return h.sum()

    return fg.compile(loss, params=rnn.parameters()), xs


def _plain(hidden, batch, steps, dtype, transposed, fuse=True):
    xs, w = _data(hidden, batch, steps, dtype)
    wt = fg.tensor(w if transposed else np.ascontiguousarray(w.T), requires_grad=True)

    def cell(h, x):
        return ((h @ wt.T) + x).tanh() if transposed else ((h @ wt) + x).tanh()

    def loss(x):
        return fg.scan(cell, fg.tensor(np.zeros((batch, hidden), dtype)), x).sum()

    return fg.compile(loss, params=[wt], fuse=fuse), xs


def plain_T(hidden, batch, steps, dtype):
    return _plain(hidden, batch, steps, dtype, True)


def unfused_T(hidden, batch, steps, dtype):
    return _plain(hidden, batch, steps, dtype, True, fuse=False)


def plain(hidden, batch, steps, dtype):
    return _plain(hidden, batch, steps, dtype, False)


def unrolled(hidden, batch, steps, dtype):
    xs, w = _data(hidden, batch, steps, dtype)
    wt = fg.tensor(np.ascontiguousarray(w.T), requires_grad=True)

    def loss(x):
        h = fg.tensor(np.zeros((batch, hidden), dtype))
        for t in range(steps):
            h = ((h @ wt) + x[t]).tanh()
        return h.sum()

    return fg.compile(loss, params=[wt], fuse=False), xs


PATHS = {"fused": fused, "plain_T": plain_T, "plain": plain, "unfused_T": unfused_T,
         "unrolled": unrolled}


def per_step(make, hidden, batch, steps, dtype, rounds):
    step, xs = make(hidden, batch, steps, dtype)
    step(xs)  # compile and first run
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        step(xs)
        times.append(time.perf_counter() - t)
    return statistics.median(times) / steps * 1e6


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--dtype", action="append", choices=["float32", "float64"])
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args(argv)
    for dtype in args.dtype or ["float32", "float64"]:
        dt = np.dtype(dtype).type
        us = {name: per_step(make, args.hidden, args.batch, args.steps, dt, args.rounds)
              for name, make in PATHS.items()}
        print(f"H {args.hidden}, B {args.batch}, T {args.steps}, {dtype}: µs per step "
              "(forward + backward)")
        for name, v in us.items():
            print(f"  {name:9s} {v:8.2f}   {v / us['unrolled']:5.2f}x unrolled")


if __name__ == "__main__":
    main()
