"""``fastgrad bench --contended``: a training step's time with busy processes beside it.

A compiled 784-128-10 ReLU MLP step (batch 64, float32, plain SGD), timed in rounds that
alternate an idle machine and one with ``busy`` processes spinning on the cores, for two
settings of the large products' BLAS threads, also alternating: ``auto`` (fastgrad's default,
fastgrad/runtime/blas_threads.py: never more threads than the cores the neighbours leave free) and
``all CPUs`` (a thread per CPU whatever the load: the default before). Each phase first steps
for ``settle`` seconds (the automatic choice samples the load as the step runs), then times
steps for ``seconds``: the mean time per step, which counts the slow steps a median hides.
The ratio is contended / idle per round; the table gives the median round and the quartiles.
Results and how to read them: docs/benchmarks.md, "A busy neighbour".
"""

from __future__ import annotations

import json
import pathlib
import statistics
import subprocess
import sys
import time

import numpy as np

DEFAULT_ROUNDS = 5
DEFAULT_SECONDS = 1.0
DEFAULT_SETTLE = 1.5


def _step():
    import fastgrad as fg

    model = fg.nn.MLP([784, 128, 10], activation="relu", seed=0, dtype=np.float32)
    opt = fg.optim.SGD(model.parameters(), lr=0.01)
    step = fg.compile(lambda xb, yb: fg.nn.functional.cross_entropy(model(xb), yb),
                      optimizer=opt)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 784)).astype(np.float32)
    y = (np.arange(64) % 10).astype(np.int64)
    return lambda: step(x, y)


def _mean_step_us(step, settle, seconds):
    """Step for ``settle`` seconds, then the mean µs per step over ``seconds``."""
    end = time.perf_counter() + settle
    while time.perf_counter() < end:
        step()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        n += 1
    return (time.perf_counter() - start) / n * 1e6


def measure(rounds=DEFAULT_ROUNDS, seconds=DEFAULT_SECONDS, settle=DEFAULT_SETTLE, busy=1,
            log=print):
    """{setting: {"idle": [µs], "contended": [µs], "ratio": [...]}} over ``rounds``."""
    import fastgrad as fg
    from fastgrad.runtime.blas_threads import cpus

    step = _step()
    for _ in range(20):
        step()
    settings = {"auto": None, "all CPUs": cpus()}
    out = {name: {"idle": [], "contended": [], "ratio": []} for name in settings}
    try:
        for r in range(rounds):
            for name, threads in settings.items():
                fg.set_blas_threads(threads)
                idle = _mean_step_us(step, settle, seconds)
                idle_threads = fg.get_blas_threads()
                spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                            for _ in range(busy)]
                try:
                    contended = _mean_step_us(step, settle, seconds)
                    busy_threads = fg.get_blas_threads()
                finally:
                    for p in spinners:
                        p.kill()
                        p.wait()
                cell = out[name]
                cell["idle"].append(idle)
                cell["contended"].append(contended)
                cell["ratio"].append(contended / idle)
                log(f"[round {r + 1}/{rounds}] {name}: idle {idle:.0f} us ({idle_threads} "
                    f"BLAS threads), with {busy} busy {contended:.0f} us per step "
                    f"({busy_threads}), ratio {contended / idle:.2f}")
    finally:
        fg.set_blas_threads(None)
    return out


def _quartiles(values):
    q = np.percentile(values, [25, 50, 75])
    return float(q[0]), float(q[1]), float(q[2])


def table(result, busy):
    lines = [f"| BLAS threads | idle, µs/step | with {busy} busy process(es), µs/step | "
             "ratio (quartiles) |", "|---|---:|---:|---:|"]
    for name, cell in result.items():
        lo, mid, hi = _quartiles(cell["ratio"])
        lines.append(f"| {name} | {statistics.median(cell['idle']):.0f} | "
                     f"{statistics.median(cell['contended']):.0f} | {mid:.2f} ({lo:.2f}–{hi:.2f}) |")
    return "\n".join(lines)


def command(rounds, seconds, settle, busy, out, json_path, log):
    """Run the measurement, print the table, write OUT/contended.json; returns 0."""
    from fastgrad.runtime.blas_threads import cpus
    from fastgrad.kernels.blas import describe_provider

    started = time.time()
    result = measure(rounds, seconds, settle, busy, log)
    text = table(result, busy)
    print(f"784-128-10 ReLU MLP, batch 64, float32, SGD: compiled step; {cpus()} CPUs, "
          f"{describe_provider()}; mean time per step over {seconds:g} s after {settle:g} s "
          f"of stepping, {rounds} alternating rounds")
    print(text)
    from fastgrad.io import atomic_write

    path = pathlib.Path(json_path) if json_path else pathlib.Path(out) / "contended.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"busy": busy, "rounds": rounds, "seconds": seconds, "settle": settle,
                       "cpus": cpus(), "result": result, "elapsed": time.time() - started},
                      indent=2) + "\n"
    atomic_write(str(path), lambda f: f.write(text.encode()))
    print(f"Wrote {path}")
    return 0


__all__ = ["DEFAULT_ROUNDS", "DEFAULT_SECONDS", "DEFAULT_SETTLE", "command", "measure", "table"]
