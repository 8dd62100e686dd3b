"""``fastgrad bench``: time every workload against every available reference, one table.

A *cell* is one (workload, dtype, implementation). Each cell runs in a fresh Python process
(``python -m fastgrad.benchmarks cell ...``), so that its peak memory is its own and no
implementation warms caches or the allocator for another. A cell:

1. runs the same implementation on a tiny workload of the same kind, so that importing its
   library, compiling or loading Numba kernels and initialising thread pools are not part of
   the measurement;
2. builds the input data, collects garbage and returns free heap memory to the OS
   (``malloc_trim``), then reads the process's resident memory (RSS, ``/proc/self/statm``) and
   resets its peak (``/proc/self/clear_refs``);
3. builds the model or step function, calls it once (the loss of that call, at the common
   initial weights, is reported so that the implementations can be checked against each other),
   then times it with ``fastgrad.core.timing.median_time``;
4. reports the peak RSS (``getrusage`` ``ru_maxrss``) minus the RSS of step 2: the memory the
   implementation needed on top of the interpreter, its libraries and the inputs.

The parent collects the cells into rows, computes ratios (other / fastgrad: above 1 means
fastgrad is faster), prints the table and writes ``bench.json``, ``bench.md`` (the README's
table layout) and ``bench.png`` (when matplotlib is installed).

This module imports only the standard library at the top: ``fastgrad --help`` stays fast.
"""

from __future__ import annotations

import fnmatch
import gc
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

__all__ = ["COLUMNS", "IMPL_ORDER", "IMPL_TITLES", "PEERS", "PeakRSS", "RESULT_MARK",
           "TABLE_HEADER", "all_workloads", "cell_main", "format_table", "implementations",
           "machine_info", "make_data", "markdown", "measure_cell", "peer_versions", "plot", "run",
           "run_cell", "run_child", "select_workloads", "write_text"]

RESULT_MARK = "FASTGRAD-BENCH-CELL "
IMPL_ORDER = ["fastgrad", "fastgrad-scipy", "numpy", "numba", "torch", "torch.nn.RNN",
              "torch.nn.LSTM", "torch.nn.GRU", "jax", "fastgrad-eager", "fastgrad-plain"]
IMPL_TITLES = {
    "fastgrad": "fastgrad",
    "fastgrad-scipy": "fastgrad, SciPy's BLAS",
    "numpy": "NumPy",
    "numba": "Numba (hand-written)",
    "torch": "PyTorch eager",
    "torch.nn.RNN": "torch.nn.RNN",
    "torch.nn.LSTM": "torch.nn.LSTM",
    "torch.nn.GRU": "torch.nn.GRU",
    "jax": "JAX jit",
    "fastgrad-eager": "fastgrad eager",
    "fastgrad-plain": "fastgrad, plain ops",
}
PEERS = ("torch", "jax")
COLUMNS = {  # the fields of a row of bench.json
    "seconds": "median seconds per training step (forward + backward + SGD update): "
    "fastgrad.core.timing.median_time over `repeat` rounds; `median_us` is the same in µs",
    "us_per_unrolled_step": "RNN workloads only: the time per step divided by the unroll length T",
    "ratio_to_fastgrad": "this implementation's time / fastgrad's time on the same workload and "
    "dtype, measured in the same run (> 1 means fastgrad is faster)",
    "peak_mib": "peak resident memory (RSS) of the cell's fresh process while building and "
    "running the step, minus its RSS just before (after imports, kernel compilation or loading, "
    "and creating the inputs), in MiB",
    "rss_before_mib": "that RSS just before: interpreter, libraries, compiled kernels, inputs",
    "input_mib": "the size of the inputs (x, y) themselves",
    "loss": "the loss of the first call, at the weights every implementation starts from",
    "error": "why the cell failed, or null",
    "process_seconds": "`seconds` of each fresh process that ran the cell (N with --processes N, "
    "else one); the row is the fastest one's",
}

# ---------------------------------------------------------------- workloads and implementations


def _modules():
    from . import rnn_workloads, workloads

    return workloads, rnn_workloads


def all_workloads():
    """Every workload by name: the default set, the opt-in long unrolls and the quick ones."""
    W, R = _modules()
    lists = (W.MLP_WORKLOADS, R.RNN_WORKLOADS, R.RNN_LONG_WORKLOADS, R.GATE_WORKLOADS,
             W.QUICK_MLP_WORKLOADS, R.QUICK_RNN_WORKLOADS, R.QUICK_GATE_WORKLOADS)
    return {w.name: w for ws in lists for w in ws}


def select_workloads(patterns=None, quick=False):
    """Workloads whose names match any of the shell-style ``patterns``, among the quick ones
    with ``quick``, otherwise among all (default: the MLP and RNN sets, without the long unrolls).
    """
    W, R = _modules()
    if quick:
        pool = W.QUICK_MLP_WORKLOADS + R.QUICK_RNN_WORKLOADS + R.QUICK_GATE_WORKLOADS
    elif not patterns:
        return W.MLP_WORKLOADS + R.RNN_WORKLOADS
    else:
        pool = list(all_workloads().values())
    if not patterns:
        return pool
    chosen = [w for w in pool if any(fnmatch.fnmatchcase(w.name, p) for p in patterns)]
    for p in patterns:
        if not any(fnmatch.fnmatchcase(w.name, p) for w in pool):
            names = ", ".join(w.name for w in pool)
            raise SystemExit(f"fastgrad bench: no workload matches {p!r}; choose from {names}")
    return chosen


def implementations(w):
    """name -> factory for workload ``w``, in table order."""
    W, R = _modules()
    impls = (W if w.kind == "mlp" else R).implementations(w)
    return {k: impls[k] for k in sorted(impls, key=IMPL_ORDER.index)}


def make_data(w, dtype):
    W, R = _modules()
    return (W if w.kind == "mlp" else R).data(w, dtype)


def peer_versions():
    """{"torch": version or None, "jax": ...}: which peers are installed (found, not imported)."""
    out = {}
    for name in PEERS:
        version = None
        if importlib.util.find_spec(name) is not None:
            try:
                version = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                version = "unknown"
        out[name] = version
    return out


# ---------------------------------------------------------------- one cell, in this process


def _rss_bytes():
    """Current resident set size, or None where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def _peak_bytes():
    """The process's peak RSS so far, or 0 where the OS does not report it."""
    try:
        import resource
    except ImportError:  # Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def _reset_peak():
    """Reset the peak-RSS mark to the current RSS (Linux >= 4.0); False when not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim_heap():
    """Give free heap memory back to the OS (glibc), so that what the block allocates must
    become resident anew instead of hiding in pages the process already had."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class PeakRSS:
    """Peak resident-memory growth of this process inside a ``with`` block, in MiB:
    ``peak RSS during the block - RSS at its start``; ``mib`` is None where it cannot be known
    (no /proc, or the peak mark could not be reset and never rose above its old value).

    >>> import numpy as np
    >>> with PeakRSS() as m:
    ...     a = np.ones(2**22)            # 32 MiB, touched
    >>> m.mib is None or m.mib > 30
    True
    """

    def __enter__(self):
        gc.collect()
        _trim_heap()
        self.rss0 = _rss_bytes()
        self.reset = _reset_peak()
        self.before = _peak_bytes()
        self.mib = None
        return self

    def __exit__(self, *exc):
        peak = _peak_bytes()
        if self.rss0 is not None and (self.reset or peak > self.before):
            self.mib = max(peak - self.rss0, 0) / 2**20
        return False


def measure_cell(name, dtype, impl, repeat=None, min_time=None):
    """Measure one (workload, dtype, implementation) in this process; returns a dict (a row).
    Run it in a fresh process (``run_cell``): the memory figure assumes nothing ran before."""
    import numpy as np

    from ..core.timing import median_time

    w = all_workloads()[name]
    make = implementations(w)[impl]
    dtype = np.dtype(dtype)
    repeat = w.repeat if repeat is None else repeat
    min_time = w.min_time if min_time is None else min_time

    tiny = w.tiny()  # compile or load the kernels, initialise the library
    tx, ty = make_data(tiny, dtype)
    warm = make(tiny, dtype)
    for _ in range(2):
        warm(tx, ty)
    del warm, tx, ty
    x, y = make_data(w, dtype)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        step = make(w, dtype)
        loss = float(step(x, y))  # at the common initial weights; traces or jits this shape
        first_call = time.perf_counter() - t0
        seconds = median_time(step, x, y, repeat=repeat, min_time=min_time, warmup=w.warmup)
    return dict(
        workload=w.name, kind=w.kind, dtype=dtype.name, impl=impl,
        seconds=seconds, median_us=seconds * 1e6,
        us_per_unrolled_step=seconds * 1e6 / w.steps if w.kind == "rnn" else None,
        peak_mib=mem.mib, rss_before_mib=None if mem.rss0 is None else mem.rss0 / 2**20,
        input_mib=(x.nbytes + y.nbytes) / 2**20, loss=loss, build_and_first_call_s=first_call,
        repeat=repeat, min_time=min_time, error=None,
    )


def cell_main(argv=None):
    """``python -m fastgrad.benchmarks cell WORKLOAD DTYPE IMPL [--repeat N] [--min-time S]``:
    measure one cell and print its row as one JSON line after a marker."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m fastgrad.benchmarks cell")
    ap.add_argument("workload")
    ap.add_argument("dtype")
    ap.add_argument("impl")
    ap.add_argument("--repeat", type=int)
    ap.add_argument("--min-time", type=float)
    a = ap.parse_args(argv)
    try:
        row = measure_cell(a.workload, a.dtype, a.impl, a.repeat, a.min_time)
        code = 0
    except Exception as e:  # noqa: BLE001 - the cell's result; the parent shows it in the table
        row = dict(workload=a.workload, dtype=a.dtype, impl=a.impl,
                   error=f"{type(e).__name__}: {e}")
        code = 1
    print(RESULT_MARK + json.dumps(row), flush=True)
    return code


def run_cell(w, dtype, impl, repeat=None, min_time=None):
    """Run one cell in a fresh interpreter; returns its row (with ``error`` set on failure)."""
    args = ["cell", w.name, dtype, impl]
    if repeat is not None:
        args += ["--repeat", str(repeat)]
    if min_time is not None:
        args += ["--min-time", str(min_time)]
    env = dict(os.environ, FASTGRAD_BLAS="scipy") if impl == "fastgrad-scipy" else None
    return run_child(args, dict(workload=w.name, dtype=dtype, impl=impl), env=env)


def _blas_provider():
    from ..kernels.blas import PROVIDER

    return PROVIDER


def run_child(args, row, env=None):
    """``python -m fastgrad.benchmarks *args`` in a fresh interpreter (with ``env``, default
    this process's): the JSON row it prints after RESULT_MARK, or ``row`` with ``error`` set
    (exit code and last stderr line)."""
    cmd = [sys.executable, "-m", "fastgrad.benchmarks", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return dict(row, error=f"exit code {proc.returncode}: {tail}")


# ---------------------------------------------------------------- the whole run


def machine_info():
    """Where the numbers were measured: OS, CPU model and cores, Python and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass

    def version(dist):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    from ..kernels.blas import describe_provider
    from .workloads import usable_cores

    return dict(
        platform=platform.platform(), machine=platform.machine(), cpu=cpu,
        cores=os.cpu_count(), usable_cores=usable_cores(), load_average=_load_average(),
        python=platform.python_version(), fastgrad=version("fastgrad"),
        numpy=version("numpy"), numba=version("numba"), scipy=version("scipy"),
        blas=describe_provider(),
    )


def _load_average():
    """The 1-minute load average (runnable processes), or None where the OS has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _busy(machine):
    """Other work competing for the cores: every timing suffers, multi-threaded ones most (a
    PyTorch thread pool that waits for a descheduled thread can be 10-50x slower). At the end of
    the run the benchmark's own last cell still counts about 1 in the load average."""
    limit = max(1.0, 0.5 * machine["usable_cores"])
    start, end = machine.get("load_average"), machine.get("load_average_at_end")
    return (start or 0) >= limit or (end or 0) >= limit + 1


def run(workloads, dtypes=None, impls=None, repeat=None, min_time=None, log=None, processes=1):
    """Measure every cell of ``workloads`` x dtypes x implementations (fastgrad always; peers only
    when installed); returns the result dict that ``bench.json`` holds.

    With ``processes`` > 1 every cell runs that many times, each in a fresh process, in rounds
    (all cells once, then all again in reverse order, and so on), and keeps its fastest
    process's row (``process_seconds`` lists them all): a slow spell of a shared machine then
    falls on every implementation alike rather than on whichever cell it met, and a process
    that landed in a slow mode (see docs/benchmarks.md) is not the one quoted."""
    peers = peer_versions()
    cells = []
    for w in workloads:
        for dt in dtypes or w.dtypes:
            for name in implementations(w):
                lib = name.split(".")[0]
                if lib in PEERS and peers[lib] is None:
                    continue
                if impls and name != "fastgrad" and name not in impls:
                    continue
                if name == "fastgrad-scipy" and _blas_provider() == "scipy":
                    continue  # the same as the fastgrad column: only beside MKL's
                cells.append((w, dt, name))
    machine = machine_info()
    runs = [[] for _ in cells]
    t_start = time.perf_counter()
    for k in range(processes):
        order = range(1, len(cells) + 1) if k % 2 == 0 else range(len(cells), 0, -1)
        for i in order:  # every other round backwards: a cell follows another neighbour
            w, dt, name = cells[i - 1]
            row = run_cell(w, dt, name, repeat, min_time)
            row.setdefault("kind", w.kind)
            runs[i - 1].append(row)
            if log:
                what = row["error"] or f"{_fmt_time(row['seconds'])} per step"
                pass_no = f" (process {k + 1}/{processes})" if processes > 1 else ""
                log(f"[{i}/{len(cells)}]{pass_no} {w.name} {dt} {name}: {what}")
    rows = [_fastest(cell_runs) for cell_runs in runs]
    _add_ratios(rows)
    machine["load_average_at_end"] = _load_average()
    return dict(
        schema="fastgrad-bench/1",
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        seconds=time.perf_counter() - t_start,
        machine=machine,
        peers=peers,
        settings=dict(repeat=repeat, min_time=min_time, processes=processes,
                      isolation="one fresh process per cell and run; the fastest run is kept"),
        columns=COLUMNS,
        rows=rows,
        warnings=_loss_warnings(rows),
    )


def _fastest(cell_runs):
    """The row of a cell's fastest process (or its first failure), with every process's time."""
    failed = [r for r in cell_runs if r.get("error")]
    best = dict(failed[0] if failed else min(cell_runs, key=lambda r: r["seconds"]))
    best["process_seconds"] = [r["seconds"] for r in cell_runs if not r.get("error")]
    return best


def _groups(rows):
    groups = {}
    for r in rows:
        groups.setdefault((r["workload"], r["dtype"]), []).append(r)
    return groups


def _add_ratios(rows):
    for group in _groups(rows).values():
        base = next((r for r in group if r["impl"] == "fastgrad" and not r.get("error")), None)
        for r in group:
            ok = base is not None and not r.get("error")
            r["ratio_to_fastgrad"] = r["seconds"] / base["seconds"] if ok else None


def _loss_warnings(rows):
    """Every implementation starts from the same weights and data, so the first call's loss
    must agree with fastgrad's; a disagreement means the comparison is not like for like."""
    out = []
    for (wl, dt), group in _groups(rows).items():
        base = next((r for r in group if r["impl"] == "fastgrad" and not r.get("error")), None)
        if base is None:
            continue
        rtol = 1e-3 if dt == "float32" else 1e-6
        for r in group:
            if r.get("error") or r["impl"] == "fastgrad":
                continue
            if abs(r["loss"] - base["loss"]) > rtol * max(abs(base["loss"]), 1e-30):
                out.append(f"{wl} {dt}: {r['impl']} loss {r['loss']:.9g} differs from "
                           f"fastgrad's {base['loss']:.9g}")
    return out


# ---------------------------------------------------------------- output


def _fmt_time(seconds):
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


TABLE_HEADER = ["workload", "dtype", "implementation", "time/step", "us/unrolled step",
                "ratio", "peak MiB"]


def format_table(result):
    """The plain-text table: one line per cell, a blank line between (workload, dtype) groups."""
    lines = []  # lists of cells; None: a blank line; str: a failed cell's line
    for group in _groups(result["rows"]).values():
        if lines:
            lines.append(None)
        for r in group:
            if r.get("error"):
                lines.append(f"{r['workload']}  {r['dtype']}  {r['impl']}  failed: {r['error']}")
                continue
            unrolled = r.get("us_per_unrolled_step")
            ratio = r.get("ratio_to_fastgrad")
            lines.append([
                r["workload"], r["dtype"], r["impl"], _fmt_time(r["seconds"]),
                "-" if unrolled is None else f"{unrolled:.2f}",
                "-" if ratio is None else f"{ratio:.2f}",
                "n/a" if r.get("peak_mib") is None else f"{r['peak_mib']:.1f}",
            ])
    table = [TABLE_HEADER] + [c for c in lines if isinstance(c, list)]
    widths = [max(len(r[i]) for r in table) for i in range(len(TABLE_HEADER))]

    def fmt(cells):
        return "  ".join(c.ljust(wd) if i < 3 else c.rjust(wd)
                         for i, (c, wd) in enumerate(zip(cells, widths))).rstrip()

    text = [fmt(TABLE_HEADER), "  ".join("-" * wd for wd in widths)]
    text += ["" if c is None else c if isinstance(c, str) else fmt(c) for c in lines]
    m = result["machine"]
    peers = ", ".join(f"{k} {v}" if v else f"{k} not installed" for k, v in
                      result["peers"].items())
    text += [
        "",
        "time/step: median time of one training step (forward + backward + SGD update).",
        "ratio: time / fastgrad's time, same workload and dtype, same run (> 1: fastgrad faster).",
        "peak MiB: peak RSS growth of the cell's own fresh process while building and running",
        "  the step, over its RSS after imports, kernel compilation and creating the inputs.",
        (f"Machine: {m['cpu']}, {m['usable_cores']} of {m['cores']} cores, {m['platform']}; "
         f"Python {m['python']}, NumPy {m['numpy']}, Numba {m['numba']}; {peers}."),
        f"fastgrad's BLAS: {m.get('blas', 'scipy')} (the NumPy and Numba steps use NumPy's and "
        "SciPy's own).",
    ]
    if _busy(m):
        text.append(f"WARNING: the machine was busy (load average {m.get('load_average')} at the "
                    f"start, {m.get('load_average_at_end')} at the end, on {m['usable_cores']} "
                    "cores): timings are unreliable, multi-threaded PyTorch's most.")
    for warning in result.get("warnings", []):
        text.append("WARNING: " + warning)
    return "\n".join(text)


def _md_cell(row, value):
    """A Markdown table cell: "–" when not measured, "failed", or ``value(row)``."""
    if row is None:
        return "–"
    return "failed" if row.get("error") else value(row)


def markdown(result):
    """The README's layout: per kind, one row per (workload, dtype), one column per
    implementation (MLP: fastgrad's µs then ratios; RNN: µs per unrolled step), then peak MiB."""
    ratio = lambda r: f"{r['ratio_to_fastgrad']:.2f}"
    unrolled = lambda r: f"{r['us_per_unrolled_step']:.2f}"
    peak = lambda r: "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}"
    out = []
    for kind in ("mlp", "rnn"):
        rows = [r for r in result["rows"] if r.get("kind") == kind]
        if not rows:
            continue
        impls = sorted({r["impl"] for r in rows}, key=IMPL_ORDER.index)
        titles = [IMPL_TITLES[i] for i in impls]
        if kind == "mlp":
            head = ["fastgrad µs"] + titles[1:]  # fastgrad sorts first
            out.append("One training step: fastgrad's median µs, then each implementation's "
                       "time / fastgrad's (> 1: fastgrad is faster).\n")
        else:
            head = titles
            out.append("BPTT training step, µs per unrolled step.\n")
        out += ["| workload | dtype | " + " | ".join(head) + " |",
                "|---|---|" + "---:|" * len(head)]
        mem = ["| workload | dtype | " + " | ".join(titles) + " |",
               "|---|---|" + "---:|" * len(titles)]
        for (wl, dt), group in _groups(rows).items():
            by = {r["impl"]: r for r in group}
            start = f"| {wl} | {dt.replace('float', 'f')} | "
            if kind == "mlp":
                vals = [_md_cell(by.get("fastgrad"), lambda r: f"{r['median_us']:.1f}")]
                vals += [_md_cell(by.get(i), ratio) for i in impls[1:]]
            else:
                vals = [_md_cell(by.get(i), unrolled) for i in impls]
            out.append(start + " | ".join(vals) + " |")
            mem.append(start + " | ".join(_md_cell(by.get(i), peak) for i in impls) + " |")
        out += ["", "Peak memory (MiB of RSS growth, see docs/benchmarks.md):", ""] + mem + [""]
    m = result["machine"]
    peers = ", ".join(f"{k} {v}" for k, v in result["peers"].items() if v) or "no peers"
    out.append(f"Machine: {m['cpu']} ({m['usable_cores']} cores), {m['platform']}, Python "
               f"{m['python']}, NumPy {m['numpy']}, Numba {m['numba']}, {peers}; "
               f"fastgrad's BLAS: {m.get('blas', 'scipy')}.")
    return "\n".join(out) + "\n"


def plot(result, path):
    """A grouped bar chart of the ratios per (workload, dtype); False when matplotlib is missing."""
    try:
        import matplotlib.ticker
        from matplotlib.figure import Figure  # no pyplot: no global backend state
    except ImportError:
        return False
    kinds = [k for k in ("mlp", "rnn") if any(r.get("kind") == k for r in result["rows"])]
    fig = Figure(figsize=(11, 4.2 * len(kinds)))
    axes = fig.subplots(len(kinds), 1, squeeze=False)
    for ax, kind in zip(axes[:, 0], kinds):
        rows = [r for r in result["rows"] if r.get("kind") == kind and not r.get("error")]
        groups = _groups(rows)
        impls = [i for i in sorted({r["impl"] for r in rows}, key=IMPL_ORDER.index)
                 if i != "fastgrad"]
        width = 0.8 / max(len(impls), 1)
        for j, impl in enumerate(impls):
            xs, hs = [], []
            for g, group in enumerate(groups.values()):
                r = next((r for r in group if r["impl"] == impl), None)
                if r is not None and r["ratio_to_fastgrad"] is not None:
                    xs.append(g - 0.4 + width * (j + 0.5))
                    hs.append(r["ratio_to_fastgrad"])
            # bars grow from 1 (fastgrad's time): up where fastgrad is faster, down where not
            bars = ax.bar(xs, [h - 1 for h in hs], width, bottom=1.0, label=IMPL_TITLES[impl])
            ax.bar_label(bars, labels=[f"{h:.2g}" for h in hs], fontsize=6, padding=1)
        ax.axhline(1.0, color="black", linewidth=1)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{wl}\n{dt}" for wl, dt in groups], fontsize=7)
        ax.set_ylabel("time / fastgrad's time (log)")
        ax.set_title(("MLP" if kind == "mlp" else "RNN (BPTT)") + " training step: above 1, "
                     "fastgrad is faster", fontsize=10)
        if impls:
            ax.legend(fontsize=8, ncol=min(len(impls), 6))
        else:
            ax.text(0.5, 0.5, "no reference measured", transform=ax.transAxes, ha="center")
    fig.suptitle(f"fastgrad bench on {result['machine']['cpu']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def write_text(path, text):
    """Write ``text`` to ``path`` atomically (fastgrad.io.atomic_write), creating its folder."""
    from ..io import atomic_write

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(str(path), lambda f: f.write(text.encode()))


