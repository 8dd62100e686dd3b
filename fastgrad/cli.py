"""The ``fastgrad`` command line: ``fastgrad demo`` shows what fastgrad is for."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import numpy as np

from .timing import median_time


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
    from fastgrad.baselines import numpy_step
    from fastgrad.datasets import load_digits

    Xtr, ytr, Xte, yte = load_digits(seed=seed)
    epochs = 4 if quick else 20
    _say(f"\n2. An MLP 64-64-10 (ReLU) on handwritten digits (UCI, CC BY 4.0; ships with "
         f"fastgrad): {len(ytr)} train / {len(yte)} test images, {epochs} epochs of Adam")
    model = fg.nn.MLP([64, 64, 10], activation="relu", seed=seed, dtype=np.float32)
    opt = fg.optim.Adam(model.parameters(), lr=3e-3)
    step = fg.compile(lambda xb, yb: fg.cross_entropy(model(xb), yb), optimizer=opt)
    t0 = time.perf_counter()
    hist = fg.fit(step, Xtr, ytr, epochs=epochs, batch_size=32, seed=seed, progress=True)
    train_s = time.perf_counter() - t0
    with fg.no_grad():
        acc = float((model(Xte).numpy().argmax(axis=1) == yte).mean())
    _say(f"   test accuracy {acc:.3f} (train loss {hist.loss[-1]:.4f}, {train_s:.2f} s "
         "including the first-call compile)")
    # one SGD step of the same network, fastgrad vs hand-written NumPy, same run
    xb, yb = Xtr[:32], ytr[:32]
    m2 = fg.nn.MLP([64, 64, 10], activation="relu", seed=seed, dtype=np.float32)
    sgd = fg.optim.SGD(m2.parameters(), lr=0.01)
    fg_step = fg.compile(lambda a, b: fg.cross_entropy(m2(a), b), optimizer=sgd)
    params = [p.numpy().copy() for p in fg.nn.MLP([64, 64, 10], seed=seed,
                                                    dtype=np.float32).parameters()]
    t_fg = median_time(fg_step, xb, yb, repeat=5, min_time=0.05)
    t_np = median_time(numpy_step, params, xb, yb, "relu", "ce", 0.01, repeat=5,
                       min_time=0.05)
    _say(f"   one training step (batch 32, forward + backward + SGD): fastgrad "
         f"{t_fg * 1e6:.1f} us, hand-written NumPy {t_np * 1e6:.1f} us "
         f"(NumPy / fastgrad = {t_np / t_fg:.2f}x)")
    return {"test_accuracy": acc, "epochs": epochs, "loss": hist.loss,
            "step_us_fastgrad": t_fg * 1e6, "step_us_numpy": t_np * 1e6,
            "numpy_over_fastgrad": t_np / t_fg}


def cmd_demo(args):
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = {"lecture": demo_lecture(), "mlp": demo_mlp(args.quick, args.seed)}
    results["seconds"] = time.perf_counter() - t0
    path = out / "demo.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, path)
    _say(f"\nOutputs: {path.resolve()}  ({results['seconds']:.1f} s in all)")
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
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
