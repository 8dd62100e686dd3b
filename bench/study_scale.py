"""The RNN gradient study at scale against a compiled training step of the same RNN.

Each measurement runs in a fresh process (its peak resident memory is that process's own):

  study   study.rnn_gradient_norms(hidden=H, T=T, spectral_radius=r, nonlinearity="tanh",
          checkpoint="sqrt", lyapunov_steps=0): every step's log ||dL/dh_t||
  step    a compiled fg.nn.RNN(H, H) training step (batch 1, SGD, MSE of the last state) over
          T_step steps, timed after its first call

Prints µs per unrolled step of each, their ratio and the study's peak RSS; the kernels are
compiled once beforehand (the study's time is its work, not compilation).

Run:   python bench/study_scale.py                      (T = 10^6, one radius)
       python bench/study_scale.py --T 10000000 --radius 0.9 1.0 1.1
Results: docs/studies.md ("At 10^7 steps").
"""

import argparse
import json
import subprocess
import sys

STUDY = """
import json, resource, sys, time
from fastgrad import study
T, H, radii = int(sys.argv[1]), int(sys.argv[2]), [float(r) for r in sys.argv[3:]]
study.rnn_gradient_norms(hidden=H, T=2048, spectral_radius=radii[0], lyapunov_steps=0,
                         checkpoint="sqrt")  # compile (or load) the kernels first
t = time.perf_counter()
r = study.rnn_gradient_norms(hidden=H, T=T, spectral_radius=radii, nonlinearity="tanh",
                             checkpoint="sqrt", lyapunov_steps=0)
seconds = time.perf_counter() - t
finite = all(bool((v == v).all() and (abs(v) != float("inf")).all())
             for v in r.log_norms.values())
print(json.dumps({"seconds": seconds, "us_per_step": seconds / (T * len(radii)) * 1e6,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "finite": finite}))
"""

STEP = """
import json, sys, time
import numpy as np, fastgrad as fg
T, H = int(sys.argv[1]), int(sys.argv[2])
rnn = fg.nn.RNN(H, H, seed=0)
opt = fg.optim.SGD(rnn.parameters(), lr=1e-4)
step = fg.compile(lambda xs, y: fg.mse_loss(rnn(xs)[1], y), optimizer=opt)
xs = np.random.default_rng(0).standard_normal((T, 1, H)) * 0.1
y = np.zeros((1, H))
step(xs, y)
times = []
for _ in range(5):
    t = time.perf_counter()
    step(xs, y)
    times.append(time.perf_counter() - t)
print(json.dumps({"us_per_step": sorted(times)[2] / T * 1e6}))
"""


def _run(source, *args):
    out = subprocess.run([sys.executable, "-c", source, *map(str, args)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--T", type=int, default=1_000_000)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--radius", type=float, nargs="+", default=[1.0])
    p.add_argument("--step-T", type=int, default=10_000)
    args = p.parse_args(argv)
    study = _run(STUDY, args.T, args.hidden, *args.radius)
    step = _run(STEP, args.step_T, args.hidden)
    print(f"study, hidden {args.hidden}, T {args.T:,}, radii {args.radius}: "
          f"{study['seconds']:.1f} s, {study['us_per_step']:.2f} µs per step, peak RSS "
          f"{study['peak_mib']:.0f} MiB, every log-norm finite: {study['finite']}")
    print(f"compiled fg.nn.RNN training step, T {args.step_T:,}: "
          f"{step['us_per_step']:.2f} µs per step")
    print(f"study / training step: {study['us_per_step'] / step['us_per_step']:.2f}x per step")


if __name__ == "__main__":
    main()
