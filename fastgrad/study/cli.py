"""``fastgrad study ...``: the studies from the command line."""

from __future__ import annotations

import pathlib
import time

import numpy as np

from .clipping import gradient_clipping
from .data_scale import data_scale
from .dead_relus import dead_relus
from .rnn import rnn_gradient_norms
from .saturation import saturation
from .spectral import WEIGHTS
from .sweep import sweep

__all__ = ["add_parser", "parse_range"]


def parse_range(text):
    """"0.8:1.2:5" -> 5 values from 0.8 to 1.2 inclusive; "0.9,1.1" -> [0.9, 1.1]; "1" -> [1.0].

    >>> parse_range("0.8:1.2:5")
    [0.8, 0.9, 1.0, 1.1, 1.2]
    """
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"expected start:stop:count, got {text!r}")
        a, b, n = float(parts[0]), float(parts[1]), int(parts[2])
        return [round(float(v), 12) for v in np.linspace(a, b, n)]
    return [float(v) for v in text.split(",") if v]


def _out(args, result, stem):
    paths = result.save(args.out, stem)
    print(result.table(), flush=True)
    if getattr(result, "seconds", None) is not None and not isinstance(result.seconds, list):
        print(f"({result.seconds:.1f} s of study)")
    print("wrote " + ", ".join(str(p) for p in paths), flush=True)
    return 0


def _cmd_rnn(args):
    radii = parse_range(args.radius)
    grid = {"spectral_radius": radii, "seed": list(range(args.seeds))}
    fixed = {"hidden": args.hidden, "T": args.T, "nonlinearity": args.nonlinearity,
             "checkpoint": _checkpoint(args.checkpoint), "weights": args.weights,
             "input_std": args.input_std, "lyapunov_steps": args.lyapunov_steps}
    executor = args.scheduler or ("serial" if args.workers == 1 else None)
    t0 = time.perf_counter()
    swept = sweep(rnn_gradient_norms, grid, executor=executor, out=pathlib.Path(args.out) /
                  "cells", retries=args.retries, max_workers=args.workers, **fixed)
    if swept.failed:
        print(swept.table())
    if not any(r is not None for r in swept.results):
        return 1
    result = swept.combined()
    result.seconds = time.perf_counter() - t0
    code = _out(args, result, "rnn_gradient_norms")
    return 1 if swept.failed else code


def _checkpoint(text):
    if text in (None, "none", "None"):
        return None
    return int(text) if text.isdigit() else text


def _cmd_clipping(args):
    return _out(args, gradient_clipping(T=args.T, hidden=args.hidden, steps=args.steps,
                                        lr=args.lr, max_norm=args.max_norm, radius=args.radius,
                                        seed=args.seed), "gradient_clipping")


def _cmd_saturation(args):
    return _out(args, saturation(depth=args.depth, width=args.width, init=args.init,
                                 weight_scale=args.weight_scale, seed=args.seed), "saturation")


def _cmd_dead_relu(args):
    return _out(args, dead_relus(epochs=args.epochs, large_lr=args.large_lr, seed=args.seed),
                "dead_relus")


def _cmd_data_scale(args):
    return _out(args, data_scale(scales=parse_range(args.scales), lr=args.lr,
                                 epochs=args.epochs, seed=args.seed), "data_scale")


def add_parser(subparsers):
    """Register ``fastgrad study ...`` on the main parser's subparsers."""
    study = subparsers.add_parser(
        "study", help="gradient studies: RNN gradient norms vs spectral radius, clipping, "
        "saturation, dead ReLUs, data scale (tables, CSV/JSON, PNG)")
    sub = study.add_subparsers(dest="study", required=True)

    def common(p, out):
        p.add_argument("--out", default=out, help="output folder (default: %(default)s)")
        p.add_argument("--seed", type=int, default=0)
        return p

    p = sub.add_parser("rnn", help="||dL/dh_t|| over a long unroll per spectral radius and seed")
    p.add_argument("--T", type=int, default=10_000, help="unroll length (default: %(default)s)")
    p.add_argument("--radius", default="0.8:1.2:5",
                   help="spectral radii: start:stop:count or a comma list (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..n-1 per radius")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--nonlinearity", default="tanh", help="tanh, linear, relu, sigmoid, ...")
    p.add_argument("--weights", default="gaussian", choices=WEIGHTS)
    p.add_argument("--input-std", type=float, default=0.1)
    p.add_argument("--checkpoint", default=None, help="none, sqrt or a segment length k")
    p.add_argument("--lyapunov-steps", type=int, default=2000)
    p.add_argument("--scheduler", default=None,
                   help="Dask scheduler address tcp://host:port (default: local processes)")
    p.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: all cores; 1: in this process)")
    p.add_argument("--retries", type=int, default=1)
    p.add_argument("--out", default="fastgrad-study", help="output folder (default: %(default)s)")
    p.set_defaults(func=_cmd_rnn)

    p = common(sub.add_parser("clipping", help="adding problem with and without "
                              "clip_grad_norm_"), "fastgrad-study")
    p.add_argument("--T", type=int, default=50)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--max-norm", type=float, default=1.0)
    p.add_argument("--radius", type=float, default=1.5)
    p.set_defaults(func=_cmd_clipping)

    p = common(sub.add_parser("saturation", help="deep sigmoid/tanh MLPs: local gradients and "
                              "gradient norm per layer"), "fastgrad-study")
    p.add_argument("--depth", type=int, default=10)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--init", default="default")
    p.add_argument("--weight-scale", type=float, default=1.0)
    p.set_defaults(func=_cmd_saturation)

    p = common(sub.add_parser("dead-relu", help="dead ReLU fractions per layer and epoch"),
               "fastgrad-study")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--large-lr", type=float, default=0.8)
    p.set_defaults(func=_cmd_dead_relu)

    p = common(sub.add_parser("data-scale", help="gradient magnitude vs input scale"),
               "fastgrad-study")
    p.add_argument("--scales", default="1,10,1000")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=5)
    p.set_defaults(func=_cmd_data_scale)
    return study
