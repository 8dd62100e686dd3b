"""Cold and warm time to a first result, each in a fresh process (issue "First result in seconds").

Every cell is the wall time of a whole new Python process (interpreter start and
``import fastgrad`` included) that runs one scenario and exits: "cold" with an empty kernel
cache (a new ``FASTGRAD_CACHE_DIR``), "warm" a second process on the cache the cold one left.

Scenarios:
  readme     the README's first example: f = (x + y) * z; f.backward() (float64 scalars)
  eager_mlp  fg.nn.MLP([64, 64, 10]) float32, batch 32: forward, cross-entropy, backward,
             SGD with momentum opt.step()
  step_mlp   the same model and optimizer as one fg.compile'd step, called once
  step_rnn   fg.nn.RNN(8, 64) over T = 100 (batch 1) with a linear readout and MSE, Adam, as one
             fg.compile'd step, called once
  demo       ``fastgrad demo`` (the README's first command), output to a scratch directory
  ops_K      a tape using K distinct elementwise ops (float64), forward and backward: compile
             time against the number of distinct ops a program uses (K = 1, 2, 4, 8, 16)

Run:    python bench/cold_start.py                 (every scenario, 3 cold/warm pairs each)
        python bench/cold_start.py --repeats 1 readme step_mlp
        python bench/cold_start.py --workers 1,auto  (one compiling process against the
                                                      default, alternating: docs/kernel-cache.md)
Prints a table of medians (min-max) in seconds. Results: docs/benchmarks.md, "Cold start".
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

SCENARIOS = {
    "readme": """
import fastgrad as fg
x = fg.tensor(2.0, requires_grad=True); y = fg.tensor(-3.0, requires_grad=True)
z = fg.tensor(4.0, requires_grad=True)
f = (x + y) * z
f.backward()
assert (float(x.grad), float(y.grad), float(z.grad)) == (4.0, 4.0, -1.0)
""",
    "eager_mlp": """
import numpy as np, fastgrad as fg
model = fg.nn.MLP([64, 64, 10], seed=0, dtype=np.float32)
opt = fg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
x = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
y = np.arange(32) % 10
loss = fg.nn.functional.cross_entropy(model(x), y)
loss.backward()
opt.step()
assert np.isfinite(float(loss))
""",
    "step_mlp": """
import numpy as np, fastgrad as fg
model = fg.nn.MLP([64, 64, 10], seed=0, dtype=np.float32)
opt = fg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
step = fg.compile(lambda xb, yb: fg.nn.functional.cross_entropy(model(xb), yb), optimizer=opt)
x = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
assert np.isfinite(step(x, np.arange(32) % 10))
""",
    "step_rnn": """
import numpy as np, fastgrad as fg
rnn = fg.nn.RNN(8, 64, seed=0, dtype=np.float32)
readout = fg.nn.Linear(64, 1, seed=1, dtype=np.float32)
opt = fg.optim.Adam(rnn.parameters() + readout.parameters(), lr=1e-3)
def loss(xs, target):
    _, h = rnn(xs)
    return fg.nn.functional.mse_loss(readout(h), target)
step = fg.compile(loss, optimizer=opt)
xs = np.random.default_rng(0).standard_normal((100, 1, 8)).astype(np.float32)
assert np.isfinite(step(xs, np.ones((1, 1), np.float32)))
""",
    "demo": None,  # the CLI, see run()
}
BINARY = ["__add__", "__mul__", "__sub__", "__truediv__", "maximum", "minimum"]


def ops_program(k):
    """A tape of k distinct elementwise ops on float64 vectors, then backward."""
    lines = ["import numpy as np, fastgrad as fg",
             "x = fg.tensor(np.linspace(0.5, 1.5, 8), requires_grad=True)",
             "y = fg.tensor(np.linspace(1.0, 2.0, 8), requires_grad=True)", "h = x"]
    ops = (["__add__", "tanh", "__mul__", "exp", "__sub__", "sigmoid", "__truediv__", "relu",
            "maximum", "abs", "minimum", "sqrt", "log", "softplus", "__neg__", "sin"])[:k]
    for op in ops:
        if op in BINARY:
            call = f"fg.{op}(h, y)" if not op.startswith("__") else f"h.{op}(y)"
        elif op in ("sqrt", "log"):
            call = f"(h * h + 1.0).{op}()" if k > 1 else f"h.{op}()"
        else:
            call = f"h.{op}()"
        lines.append(f"h = {call}")
    lines.append("tape = h.tape")
    lines.append("h.sum().backward()" if k > 1 else "h.backward(np.ones(8))")
    lines.append("assert np.isfinite(x.grad).all()")
    lines.append("print('distinct ops', len(set(tape.ops.view.tolist())))")
    return "\n".join(lines)


def run(name, cache, out_dir, workers="auto"):
    env = dict(os.environ, FASTGRAD_CACHE_DIR=cache, PYTHONWARNINGS="ignore")
    env.pop("NUMBA_CACHE_DIR", None)
    env.pop("FASTGRAD_COMPILE_WORKERS", None)
    if workers != "auto":
        env["FASTGRAD_COMPILE_WORKERS"] = workers
    if name == "demo":
        cmd = [sys.executable, "-m", "fastgrad.cli", "demo", "--out", out_dir]
    elif name.startswith("ops_"):
        cmd = [sys.executable, "-c", ops_program(int(name[4:]))]
    else:
        cmd = [sys.executable, "-c", SCENARIOS[name]]
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stdout}\n{done.stderr}")
    for line in done.stdout.splitlines():
        if line.startswith("distinct ops"):
            DISTINCT[name] = int(line.split()[-1])
    return seconds


DISTINCT = {}  # ops_K scenario -> distinct op codes on its tape (with the sum that seeds it)


def spread(values):
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", help="default: all (readme eager_mlp step_mlp "
                        "step_rnn demo ops_1 ops_2 ops_4 ops_8 ops_16)")
    parser.add_argument("--repeats", type=int, default=3, help="cold/warm pairs per scenario")
    parser.add_argument("--workers", default="auto",
                        help="compiling processes (FASTGRAD_COMPILE_WORKERS), a comma-separated "
                        "list to compare settings in alternating runs; auto: the default")
    args = parser.parse_args(argv)
    settings = [w.strip() for w in args.workers.split(",") if w.strip()]
    for w in settings:
        if w != "auto" and not w.isdigit():
            parser.error(f"--workers: {w!r} is not a number or auto")
    names = args.scenarios or (list(SCENARIOS) + [f"ops_{k}" for k in (1, 2, 4, 8, 16)])
    for name in names:
        if name not in SCENARIOS and not (name.startswith("ops_") and name[4:].isdigit()):
            parser.error(f"unknown scenario {name!r}")
    import numba
    import numpy

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, Numba {numba.__version__}, NumPy {numpy.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    results = {}
    for rep in range(args.repeats):
        for name in names:
            for w in settings:
                with tempfile.TemporaryDirectory(prefix="fastgrad-cold-") as scratch:
                    cache = os.path.join(scratch, "cache")
                    cold = run(name, cache, scratch, w)
                    warm = run(name, cache, scratch, w)
                results.setdefault((name, w), []).append((cold, warm))
                print(f"  {name} (workers {w}): cold {cold:.1f} s, warm {warm:.1f} s", flush=True)
    head = " | ".join(f"cold, s (workers {w}) | warm, s (workers {w})" for w in settings)
    print(f"\n| first … (whole process) | {head} |\n|---|" + "---:|" * (2 * len(settings)))
    for name in names:
        label = f"{name} ({DISTINCT[name]} distinct ops)" if name in DISTINCT else name
        cells = []
        for w in settings:
            pairs = results[(name, w)]
            cells += [spread([c for c, _ in pairs]), spread([v for _, v in pairs])]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
