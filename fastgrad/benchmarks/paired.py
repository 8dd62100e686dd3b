"""``fastgrad bench --paired``: fastgrad and one reference timed in alternating rounds in ONE
process, so that a ratio of a few percent can be told from noise.

Why a second mode: ``fastgrad bench`` times every cell in its own fresh process, which keeps
memory figures honest but exposes each cell to its process's luck. On a shared 2-core VM one
fresh process can run the same step 30 % slower than the next (memory placement, neighbours),
which swamps a 3 % difference between fastgrad and the hand-written Numba step. Here each
process builds both steps on the same inputs and alternates rounds (fastgrad first in even
rounds, the reference first in odd ones); a slow phase of the machine slows both halves of a
round alike, and the median of the per-round ratios is stable to about a percent. With
``--processes N`` the pair runs in N fresh processes and the median of their ratios is kept.

    fastgrad bench --paired --workload 'mlp-*' --impl numba --processes 3

Ratios are reference time / fastgrad time, as in the main table (> 1: fastgrad is faster).

fastgrad runs with SciPy's BLAS here (FASTGRAD_BLAS=scipy), even when MKL is installed: the
hand-written references use SciPy's and NumPy's, and two BLAS thread pools in one process fight
over the cores (kernels/blas.py, OPENBLAS_ONE_THREAD_MAX_WORK), which would time the fight, not
the steps.
"""

from __future__ import annotations

import json
import os
import statistics
import time

from .runner import (RESULT_MARK, all_workloads, implementations, machine_info,
                     make_data, run_child, write_text)

__all__ = ["DEFAULT_MIN_TIME", "DEFAULT_ROUNDS", "calls_per_half", "combine", "command",
           "format_table", "measure_pair", "pair_main", "paired_times", "ratio_summary",
           "run_pair"]

DEFAULT_ROUNDS = 21
DEFAULT_MIN_TIME = 0.1  # seconds per round, both halves together


def calls_per_half(fn, args, seconds, clock=time.perf_counter):
    """How many calls of ``fn(*args)`` last about ``seconds`` (at least one)."""
    n = 1
    while True:
        t0 = clock()
        for _ in range(n):
            fn(*args)
        elapsed = clock() - t0
        if elapsed >= seconds / 4 or n >= 1 << 20:
            return max(1, round(n * seconds / max(elapsed, 1e-12)))
        n *= 4


def paired_times(fast, ref, args, rounds=DEFAULT_ROUNDS, min_time=DEFAULT_MIN_TIME,
                 clock=time.perf_counter):
    """Seconds per call of ``fast(*args)`` and of ``ref(*args)`` in each of ``rounds``
    alternating rounds: two lists of equal length, round by round.

    Each half of a round lasts about ``min_time / 2``; the order within a round alternates
    so that neither side always runs right after the other.
    """
    nf = calls_per_half(fast, args, min_time / 2, clock)
    nr = calls_per_half(ref, args, min_time / 2, clock)
    sides = [(fast, nf, []), (ref, nr, [])]
    for r in range(rounds):
        for fn, n, times in sides if r % 2 == 0 else sides[::-1]:
            t0 = clock()
            for _ in range(n):
                fn(*args)
            times.append((clock() - t0) / n)
    return sides[0][2], sides[1][2]


def ratio_summary(fast_times, ref_times):
    """Median and quartiles of the per-round ratios ref / fast, and each side's median time."""
    ratios = sorted(r / f for f, r in zip(fast_times, ref_times))
    q1, median, q3 = (statistics.quantiles(ratios, n=4, method="inclusive")
                      if len(ratios) > 1 else ratios * 3)
    return dict(ratio=median, ratio_q1=q1, ratio_q3=q3,
                fastgrad_us=statistics.median(fast_times) * 1e6,
                ref_us=statistics.median(ref_times) * 1e6, rounds=len(ratios))


def measure_pair(name, dtype, impl, rounds=DEFAULT_ROUNDS, min_time=DEFAULT_MIN_TIME):
    """Time fastgrad against ``impl`` on workload ``name`` in this process; returns a row."""
    import numpy as np

    w = all_workloads()[name]
    makers = implementations(w)
    dtype = np.dtype(dtype)
    tiny = w.tiny()  # compile or load kernels and initialise both libraries first
    tx, ty = make_data(tiny, dtype)
    for make in (makers["fastgrad"], makers[impl]):
        warm = make(tiny, dtype)
        warm(tx, ty)
        warm(tx, ty)
    x, y = make_data(w, dtype)
    fast, ref = makers["fastgrad"](w, dtype), makers[impl](w, dtype)
    for _ in range(max(w.warmup, 1)):
        fast(x, y)
        ref(x, y)
    row = dict(workload=w.name, dtype=dtype.name, impl=impl, error=None)
    row.update(ratio_summary(*paired_times(fast, ref, (x, y), rounds, min_time)))
    return row


def pair_main(argv=None):
    """``python -m fastgrad.benchmarks pair WORKLOAD DTYPE IMPL [--rounds N] [--min-time S]``:
    one paired measurement in this fresh process, printed as one JSON line after a marker."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m fastgrad.benchmarks pair")
    ap.add_argument("workload")
    ap.add_argument("dtype")
    ap.add_argument("impl")
    ap.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    ap.add_argument("--min-time", type=float, default=DEFAULT_MIN_TIME)
    a = ap.parse_args(argv)
    try:
        row = measure_pair(a.workload, a.dtype, a.impl, a.rounds, a.min_time)
        code = 0
    except Exception as e:  # noqa: BLE001 - reported in the parent's table
        row = dict(workload=a.workload, dtype=a.dtype, impl=a.impl,
                   error=f"{type(e).__name__}: {e}")
        code = 1
    print(RESULT_MARK + json.dumps(row), flush=True)
    return code


def run_pair(name, dtype, impl, rounds, min_time):
    """One paired measurement in a fresh interpreter; its row (``error`` set on failure)."""
    return run_child(["pair", name, dtype, impl, "--rounds", str(rounds), "--min-time",
                      str(min_time)], dict(workload=name, dtype=dtype, impl=impl),
                     env=dict(os.environ, FASTGRAD_BLAS="scipy"))


def combine(runs):
    """The row of one pair over several processes: the median process's figures (the lower
    middle one for an even count), every process's ratio (``process_ratios``) and how many
    processes failed (``failed_processes``; the last failure's ``error`` when all did)."""
    ok = sorted((r for r in runs if not r.get("error")), key=lambda r: r["ratio"])
    failed = len(runs) - len(ok)
    row = dict(ok[(len(ok) - 1) // 2]) if ok else dict(runs[-1])
    row["process_ratios"] = [r["ratio"] for r in ok]
    row["failed_processes"] = failed
    return row


def format_table(rows):
    head = ["workload", "dtype", "reference", "fastgrad us", "reference us",
            "ratio", "quartiles", "per process"]
    lines = [head]
    for r in rows:
        name = f"{r['workload']}  {r['dtype']}  {r['impl']}"
        if r.get("error"):
            lines.append(f"{name}  failed: {r['error']}")
            continue
        if r.get("failed_processes"):
            lines.append(f"{name}: {r['failed_processes']} process(es) failed; the next line is "
                         "the others'")
        lines.append([r["workload"], r["dtype"], r["impl"], f"{r['fastgrad_us']:.1f}",
                      f"{r['ref_us']:.1f}", f"{r['ratio']:.3f}",
                      f"{r['ratio_q1']:.3f}-{r['ratio_q3']:.3f}",
                      " ".join(f"{p:.3f}" for p in r.get("process_ratios", []))])
    widths = [max(len(l[i]) for l in lines if isinstance(l, list)) for i in range(len(head))]
    text = [l if isinstance(l, str) else "  ".join(c.ljust(w) for c, w in zip(l, widths)).rstrip()
            for l in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    text += ["", "ratio: median over alternating rounds in one process of reference time / "
             "fastgrad time (> 1: fastgrad is faster); quartiles of those rounds; per process: "
             "each fresh process's ratio (the row is the median process, the lower middle one "
             "for an even count)."]
    return "\n".join(text)


def command(workloads, dtypes, impls, processes, rounds, min_time, out, json_path, log):
    """``fastgrad bench --paired``: every (workload, dtype, reference) pair, each in
    ``processes`` fresh processes; prints the table and writes the JSON. Returns 1 if a pair
    failed."""
    t0 = time.perf_counter()
    if rounds < 1:
        raise SystemExit("fastgrad bench --paired: --repeat (rounds) must be at least 1")
    pairs = [(w, dt, impl) for w in workloads for dt in (dtypes or w.dtypes)
             for impl in (impls or ["numba"])
             if impl not in ("fastgrad", "fastgrad-scipy") and impl in implementations(w)]
    if not pairs:
        raise SystemExit("fastgrad bench --paired: no (workload, reference) pair to time; "
                         "--impl names a reference such as numba, and the workloads must have it")
    runs = {i: [] for i in range(len(pairs))}
    for p in range(processes):
        for i, (w, dt, impl) in enumerate(pairs):
            row = run_pair(w.name, dt, impl, rounds, min_time)
            runs[i].append(row)
            msg = row.get("error") or f"ratio {row['ratio']:.3f}"
            log(f"[{i + 1}/{len(pairs)}] (process {p + 1}/{processes}) {w.name} {dt} "
                f"fastgrad vs {impl}: {msg}")
    rows = [combine(runs[i]) for i in range(len(pairs))]
    machine = dict(machine_info(), blas="scipy (FASTGRAD_BLAS=scipy in every pair)")
    result = dict(schema="fastgrad-bench-paired/1", created=time.strftime("%Y-%m-%dT%H:%M:%S"),
                  seconds=time.perf_counter() - t0, machine=machine,
                  settings=dict(processes=processes, rounds=rounds, min_time=min_time),
                  rows=rows)
    json_path = json_path or f"{out}/paired.json"
    write_text(json_path, json.dumps(result, indent=2) + "\n")
    print(format_table(rows), flush=True)
    print(f"Wrote {json_path}  ({result['seconds']:.0f} s)")
    return 1 if any(r.get("error") or r.get("failed_processes") for r in rows) else 0
