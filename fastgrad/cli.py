"""The ``fastgrad`` command line: ``fastgrad demo`` shows what fastgrad is for."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import textwrap
import time

import numpy as np

from .core.timing import median_time
from .io import atomic_write

__all__ = ["cmd_demo", "cmd_warmup", "demo_lecture", "demo_mlp", "demo_rnn", "main"]


def _say(text=""):
    print(text, flush=True)


def demo_lecture():
    import fastgrad as fg

    _say("1. The lecture's example: f(x, y, z) = (x + y) z at x=2, y=-3, z=4")
    x = fg.tensor(2.0, requires_grad=True)
    y = fg.tensor(-3.0, requires_grad=True)
    z = fg.tensor(4.0, requires_grad=True)
    f = (x + y) * z
    f.backward()
    _say(f"   f = {f.item():g}; grad [x, y, z] = [{float(x.grad):g}, {float(y.grad):g}, "
         f"{float(z.grad):g}]   (closed form [z, z, x+y] = [4, 4, -1])")
    _say("   the tape that computed it (one native call replays it backward):")
    for line in str(f.tape).splitlines():
        _say("     " + line)
    return {"f": f.item(), "grad": [float(x.grad), float(y.grad), float(z.grad)]}


def demo_mlp(quick, seed):
    import fastgrad as fg
    from fastgrad.benchmarks.baselines import numpy_step
    from fastgrad.data.digits import load_digits

    Xtr, ytr, Xte, yte = load_digits(seed=seed, dtype=np.float64)
    epochs = 4 if quick else 20
    _say(f"\n2. An MLP 64-64-10 (ReLU) on handwritten digits (UCI, CC BY 4.0; ships with "
         f"fastgrad): {len(ytr)} train / {len(yte)} test images, {epochs} epochs of Adam")
    # float64 throughout the demo: one dtype means one set of kernels to compile on a fresh install
    model = fg.nn.MLP([64, 64, 10], activation="relu", seed=seed, dtype=np.float64)
    opt = fg.optim.Adam(model.parameters(), lr=3e-3)
    step = fg.compile(lambda xb, yb: fg.cross_entropy(model(xb), yb), optimizer=opt)
    t0 = time.perf_counter()
    # drop_last: every epoch is one native call of full batches (reshuffled each epoch, so no
    # image is left out for good); a partial batch would also compile the single-step kernel
    hist = fg.fit(step, Xtr, ytr, epochs=epochs, batch_size=32, seed=seed, drop_last=True,
                  progress=True)
    train_s = time.perf_counter() - t0
    with fg.no_grad():
        acc = float((model(Xte).numpy().argmax(axis=1) == yte).mean())
    _say(f"   test accuracy {acc:.3f} (train loss {hist.loss[-1]:.4f}, {train_s:.2f} s "
         "including the first-call compile)")
    # SGD steps of the same network over the same 16 batches of 32: fastgrad's native epoch
    # loop (fg.fit; also the only training kernel a fresh install compiles for the demo) vs a
    # hand-written NumPy step per batch, same run
    nb, bs = 16, 32
    xs, ys = Xtr[: nb * bs], ytr[: nb * bs]
    m2 = fg.nn.MLP([64, 64, 10], activation="relu", seed=seed, dtype=np.float64)
    sgd = fg.optim.SGD(m2.parameters(), lr=0.01)
    fg_step = fg.compile(lambda a, b: fg.cross_entropy(m2(a), b), optimizer=sgd)
    params = [p.numpy().copy() for p in fg.nn.MLP([64, 64, 10], seed=seed,
                                                    dtype=np.float64).parameters()]

    def numpy_epoch():
        for i in range(0, nb * bs, bs):
            numpy_step(params, xs[i : i + bs], ys[i : i + bs], "relu", "ce", 0.01)

    def fastgrad_epoch():
        fg.fit(fg_step, xs, ys, batch_size=bs, shuffle=False, progress=False)

    t_fg = median_time(fastgrad_epoch, repeat=5, min_time=0.1) / nb
    t_np = median_time(numpy_epoch, repeat=5, min_time=0.1) / nb
    _say(f"   one training step (batch {bs}, forward + backward + SGD): fastgrad "
         f"{t_fg * 1e6:.1f} us, hand-written NumPy {t_np * 1e6:.1f} us "
         f"(NumPy / fastgrad = {t_np / t_fg:.2f}x)")
    return {"test_accuracy": acc, "epochs": epochs, "loss": hist.loss,
            "step_us_fastgrad": t_fg * 1e6, "step_us_numpy": t_np * 1e6,
            "numpy_over_fastgrad": t_np / t_fg}


def demo_rnn(quick, seed, out):
    from . import study

    T = 1_000 if quick else 10_000
    radii = [0.9, 1.0, 1.1]
    _say(f"\n3. An Elman RNN (hidden 64, tanh) unrolled over {T:,} steps at spectral radii "
         f"{radii} of W_hh:\n   log ||dL/dh_t|| for every t (the backward sweep in segments, "
         "exact at any magnitude), its growth rate per step against log(radius) and the top "
         "Lyapunov exponent (forward mode)")
    r = study.rnn_gradient_norms(hidden=64, T=T, spectral_radius=radii, seed=seed,
                                 lyapunov_steps=500 if quick else 2000)
    for line in str(r.table()).splitlines():
        _say("   " + line)
    files = [str(p) for p in r.save(out, stem="rnn_gradient_norms")]
    if not any(f.endswith(".png") for f in files):
        _say('   (no PNG: matplotlib is not installed; pip install "fastgrad[plot]")')
    _say("   In the tanh RNN saturation shrinks the gradients: the Lyapunov exponent, not "
         "log(radius), predicts their growth rate (docs/studies.md).")
    return {"T": T, "rows": r.rows, "seconds": r.seconds, "files": files}


def cmd_demo(args):
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = {"lecture": demo_lecture(), "mlp": demo_mlp(args.quick, args.seed),
               "rnn": demo_rnn(args.quick, args.seed, out)}
    results["seconds"] = time.perf_counter() - t0
    text = json.dumps(results, indent=2).encode()
    atomic_write(str(out / "demo.json"), lambda f: f.write(text))
    _say(f"\n4. Outputs ({results['seconds']:.1f} s in all), in {out.resolve()}:")
    for f in sorted(out.iterdir()):
        _say(f"   {f.name}")
    return 0


def cmd_warmup(args):
    from . import warmup
    from .core.errors import FastgradError
    from .runtime import kernel_cache

    where, status = kernel_cache.cache_status()
    if where is None:
        print(f"fastgrad warmup: nothing would be kept ({status.split(': ', 1)[1]}). Fix: set "
              "FASTGRAD_CACHE_DIR to a writable directory (docs/kernel-cache.md)",
              file=sys.stderr)
        return 2
    _say(f"fastgrad warmup: kernel cache {kernel_cache.shorten_home(where)}")
    t0 = time.perf_counter()
    try:
        rows = warmup.warmup(args.dtype or warmup.DTYPES,
                             args.ops or tuple(warmup.FAMILIES) + (warmup.ALL_OPS,), report=_say)
    except FastgradError as e:
        print(f"fastgrad {e}", file=sys.stderr)
        return 2
    if kernel_cache.cache_status()[0] is None:  # a write failed meanwhile (warned above)
        print("fastgrad warmup: the kernel cache could not be written; nothing was kept",
              file=sys.stderr)
        return 1
    compiled = sum(len(r["compiled"]) for r in rows)
    cached = sum(not r["compiled"] for r in rows)
    _say(f"fastgrad warmup: {compiled} kernels compiled, {cached} of {len(rows)} "
         f"families or ops already cached, in {time.perf_counter() - t0:.1f} s")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastgrad", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="the lecture's example, an MLP trained on real digits, "
                       "and fastgrad's step time next to hand-written NumPy")
    p.add_argument("--quick", action="store_true", help="tiny sizes (under 20 s when cached)")
    p.add_argument("--out", default="fastgrad-demo", help="output folder (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
    from .warmup import DTYPES, FAMILIES

    p = sub.add_parser(
        "warmup", help="compile the kernels ahead into the kernel cache (for container images "
        "and CI caches; docs/kernel-cache.md)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Compile fastgrad's kernels ahead of their first use into the kernel cache "
            "($FASTGRAD_CACHE_DIR/<digest>, else ~/.cache/fastgrad/<digest>), so that a later "
            "process using the same directory starts warm. Prints what it compiled, the cache "
            "directory and the time.", 79) + "\n\nop families (--ops):\n" + "\n".join(
            textwrap.fill(what, 79, initial_indent=f"  {name:<7}", subsequent_indent=" " * 9)
            for name, what in FAMILIES.items()) + "\n\n" + textwrap.fill(
            "--ops also takes op names (each op's forward and VJP kernels: matmul, tanh, ...) "
            "and all-ops (every op). The default is every family and every op.", 79))
    p.add_argument("--dtype", action="extend", nargs="+", metavar="DTYPE", choices=DTYPES,
                   help=f"dtypes to compile for: {' '.join(DTYPES)} (default: both)")
    p.add_argument("--ops", action="extend", nargs="+", metavar="NAME",
                   help=f"op families or ops to compile, space- or comma-separated: "
                   f"{' '.join(FAMILIES)}, all-ops or an op name (default: all)")
    p.set_defaults(func=cmd_warmup)
    from .benchmarks import command as bench_command  # standard library only at import

    p = sub.add_parser("bench", help="time the benchmark workloads against hand-written NumPy "
                       "and Numba, and PyTorch and JAX when installed: one table, JSON, PNG")
    bench_command.add_arguments(p)
    p.set_defaults(func=bench_command.command)
    from .study.cli import add_parser as add_study_parser  # fastgrad study ...

    add_study_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
