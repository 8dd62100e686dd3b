"""BPTT over very long unrolls: one training step of the 64-unit Elman RNN (batch 1) at
T = 10^6 and 10^7 with checkpoint="sqrt", reporting time per unrolled step and peak memory
(each T in a fresh process, so the peak is that run's own).

    python bench/rnn_long.py [--T 1000000 10000000] [--dtype float32]
"""

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np
import fastgrad as fg
T, dtype = int(sys.argv[1]), np.dtype(sys.argv[2])
rng = np.random.default_rng(0)
xs = rng.normal(size=(T, 1, 8)).astype(dtype)
y = np.ones((1, 1), dtype)
rnn = fg.nn.RNN(8, 64, seed=1, dtype=dtype, checkpoint="sqrt", stack_outputs=False)
head = fg.nn.Linear(64, 1, seed=2, dtype=dtype)
opt = fg.optim.SGD(rnn.parameters() + head.parameters(), lr=1e-3)
def loss(x, t):
    _, h = rnn(x)
    return fg.mse_loss(head(h), t)
step = fg.compile(loss, optimizer=opt)
step(xs[:100], y)  # compile the kernels outside the timing
t0 = time.perf_counter()
value = step(xs, y)
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(dict(T=T, dtype=dtype.name, seconds=dt, us_per_step=dt / T * 1e6,
                      peak_bytes=peak, input_bytes=xs.nbytes, loss=float(value))))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    for T in args.T:
        out = subprocess.run([sys.executable, "-c", CHILD, str(T), args.dtype], check=True,
                             capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        rows.append(row)
        print(f"T={T:>10,} {args.dtype}: {row['us_per_step']:.2f} us/step, "
              f"{row['seconds']:.1f} s, peak memory {row['peak_bytes'] / 2**30:.2f} GiB "
              f"(input alone {row['input_bytes'] / 2**30:.2f} GiB)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
