"""``fastgrad bench``: its options, and what each kind of run does with them: a table of
cells in fresh processes (runner.py), alternating pairs in one process (``--paired``,
paired.py), a step beside busy processes (``--contended``, contended.py), or the workload list.

Standard library only at import, as the CLI imports it for every command.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from . import runner


def add_arguments(p):
    """The options of ``fastgrad bench`` (see docs/benchmarks.md)."""
    p.add_argument("--workload", action="append", metavar="NAME",
                   help="a workload name or shell pattern, e.g. 'rnn-*' (repeatable; default: "
                   "the MLP and RNN sets; 'long-*': the opt-in long unrolls)")
    p.add_argument("--dtype", action="append", choices=["float32", "float64"],
                   help="repeatable (default: each workload's, float32 and float64)")
    p.add_argument("--impl", action="append", metavar="NAME",
                   help="limit the references, e.g. numpy (repeatable; fastgrad always runs)")
    p.add_argument("--repeat", type=int, help="timing rounds per cell (default 7 MLP, 5 RNN)")
    p.add_argument("--min-time", type=float, metavar="S",
                   help="each timing round lasts at least S/4 seconds (default 0.2 MLP, 0.05 RNN)")
    p.add_argument("--processes", type=int, default=1, metavar="N",
                   help="run each cell N times, each in a fresh process, in rounds over all "
                   "cells, and keep its fastest (default 1; with --paired: each pair, keeping "
                   "the median)")
    p.add_argument("--json", metavar="PATH",
                   help="where to write the JSON (default: OUT/bench.json)")
    p.add_argument("--out", default="fastgrad-bench", help="output folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="tiny workloads, float64, 2 rounds: a smoke test")
    p.add_argument("--list", action="store_true", help="list the workloads and exit")
    p.add_argument("--paired", action="store_true",
                   help="time fastgrad and each reference (default: numba) in alternating "
                   "rounds in one process per pair, for ratios precise to about a percent; "
                   "--repeat sets the rounds (default 21)")
    p.add_argument("--contended", action="store_true",
                   help="the 784-128-10 batch-64 float32 SGD step on an idle machine and "
                   "beside --busy spinning processes, alternating, with fastgrad's automatic "
                   "BLAS threads and with a thread per CPU; --repeat sets the rounds (default "
                   "5), --min-time the seconds timed per phase (default 1)")
    p.add_argument("--busy", type=int, default=1, metavar="N",
                   help="with --contended: how many busy processes (default 1)")


def command(args):
    """Run ``fastgrad bench``; returns the exit status (1 if any cell failed)."""
    if args.list:
        default = {w.name for w in runner.select_workloads()}
        quick = {w.name for w in runner.select_workloads(quick=True)}
        for w in runner.all_workloads().values():
            which = "default" if w.name in default else "quick" if w.name in quick else "opt-in"
            impls = ", ".join(runner.implementations(w))
            print(f"{w.name:28s} {which:8s} {w.kind}  {'/'.join(w.dtypes):16s} {impls}")
        return 0
    workloads = runner.select_workloads(args.workload, args.quick)
    unknown = set(args.impl or ()) - set(runner.IMPL_ORDER)
    if unknown:
        raise SystemExit(f"fastgrad bench: unknown --impl {', '.join(sorted(unknown))}; choose "
                         f"from {', '.join(runner.IMPL_ORDER)}")
    dtypes = args.dtype or (["float64"] if args.quick else None)
    repeat = args.repeat if args.repeat is not None else (2 if args.quick else None)
    min_time = args.min_time if args.min_time is not None else (0.01 if args.quick else None)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    if args.processes < 1:
        raise SystemExit("fastgrad bench: --processes must be at least 1")
    if args.contended:
        from . import contended

        if args.busy < 1:
            raise SystemExit("fastgrad bench: --busy must be at least 1")
        seconds = args.min_time if args.min_time is not None else (
            0.05 if args.quick else contended.DEFAULT_SECONDS)
        return contended.command(
            args.repeat or (1 if args.quick else contended.DEFAULT_ROUNDS), seconds,
            min(seconds * 1.5, contended.DEFAULT_SETTLE), args.busy, args.out, args.json, log)
    if args.paired:
        from . import paired

        return paired.command(
            workloads, dtypes, args.impl, args.processes,
            paired.DEFAULT_ROUNDS if repeat is None else repeat,
            paired.DEFAULT_MIN_TIME if min_time is None else min_time, args.out, args.json, log)
    result = runner.run(workloads, dtypes, args.impl, repeat, min_time, log=log,
                 processes=args.processes)
    result["settings"].update(workloads=[w.name for w in workloads], dtypes=dtypes,
                              impls=args.impl, quick=args.quick)
    out = pathlib.Path(args.out)
    json_path = pathlib.Path(args.json) if args.json else out / "bench.json"
    runner.write_text(json_path, json.dumps(result, indent=2) + "\n")
    runner.write_text(out / "bench.md", runner.markdown(result))
    print(runner.format_table(result), flush=True)
    written = [json_path, out / "bench.md"]
    if runner.plot(result, out / "bench.png"):
        written.append(out / "bench.png")
    else:
        print("matplotlib is not installed (pip install 'fastgrad[plot]'): no bench.png")
    print("Wrote " + ", ".join(str(p) for p in written) + f"  ({result['seconds']:.0f} s)")
    return 1 if any(r.get("error") for r in result["rows"]) else 0


def restricted_main(workloads, argv=None) -> int:
    """``fastgrad bench`` over ``workloads`` unless ``--workload`` is given (bench/ scripts)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a.startswith("--workload") for a in argv):
        argv += [f"--workload={w.name}" for w in workloads]
    parser = argparse.ArgumentParser(prog="fastgrad bench")
    add_arguments(parser)
    return command(parser.parse_args(argv))


__all__ = ["add_arguments", "command", "restricted_main"]
