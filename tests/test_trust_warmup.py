"""A first call that compiles kernels says so, once; a warm start says nothing; a Ctrl-C during
compilation keeps the kernels already compiled; ``fastgrad warmup`` fills a cache that later
processes use (issue 23, items 3 and 4; docs/kernel-cache.md).

Every test runs fresh interpreters on a fresh cache directory (``FASTGRAD_CACHE_DIR`` in a tmp
dir), so "cold" means cold. The workload is the smallest real one, an eager optimizer step
(two small kernels, about a second to compile), except in the test marked ``slow``: the warmup
of the eager family (its entry kernels and the ops of a tiny program).
"""

import ast
import importlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from fastgrad import kernel_cache, warmup

jit = importlib.import_module("fastgrad.kernels._jit")

# An eager optimizer step: compiles optimizer_update and the sgd_plain it calls, per dtype
OPT_STEP = textwrap.dedent("""
    import sys
    import numpy as np
    import fastgrad as fg

    for dtype in sys.argv[1].split(","):
        p = fg.tensor(np.ones(3, dtype), requires_grad=True)
        opt = fg.optim.SGD([p], lr=0.5, momentum=0.9)
        p.grad = np.ones(3, dtype)
        opt.step()
        print(dtype, p.numpy().tolist())
""")


def child_env(cache):
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTGRAD_DISABLE_CACHE", "NUMBA_CACHE_DIR")}
    env["FASTGRAD_CACHE_DIR"] = str(cache)
    return env


def run(args, cache, timeout=900, **env):
    child = subprocess.run([sys.executable, *args], env=dict(child_env(cache), **env),
                           capture_output=True, text=True, timeout=timeout, check=False)
    assert child.returncode == 0, child.stderr[-3000:]
    return child


# Progress lines depend on how long a compilation takes on a loaded machine: off in the tests
# that check the exact output (the progress test turns them on with a short period)
NO_PROGRESS = "import fastgrad.kernel_cache\nfastgrad.kernel_cache.PROGRESS_SECONDS = 1e6\n"
DEBUG = "import logging\nlogging.getLogger('fastgrad').setLevel(logging.DEBUG)\n"


def run_code(code, cache, *args, prelude="", **env):
    return run(["-c", NO_PROGRESS + prelude + code, *args], cache, **env)


def compile_line(cache, dtype):
    where = kernel_cache.shorten_home(cache / jit._source_digest())
    return f"fastgrad: compiling kernels for {dtype} (once; cached in {where})"


# ----------------------------------------------------------------------------- the compile line
def test_a_cold_first_call_logs_one_compile_line_per_dtype_and_a_warm_start_prints_nothing(
        tmp_path):
    """Cold: exactly one line on stderr per dtype, naming the dtype and the cache directory.
    Warm (a second process on the same cache): no output at all on stderr, same results."""
    cache = tmp_path / "cache"
    cold = run_code(OPT_STEP, cache, "float64,float32")
    assert cold.stderr.splitlines() == [compile_line(cache, "float64"),
                                        compile_line(cache, "float32")]
    warm = run_code(OPT_STEP, cache, "float64,float32")
    assert warm.stderr == ""
    assert warm.stdout == cold.stdout


@pytest.mark.parametrize("configure, shown", [
    ("logging.basicConfig(level=logging.INFO, format='LOG %(name)s %(message)s')", True),
    ("logging.basicConfig(level=logging.WARNING, format='LOG %(name)s %(message)s')", False),
    ("logging.getLogger('fastgrad').setLevel(logging.WARNING)", False),
], ids=["configured-info", "configured-warning", "fastgrad-silenced"])
def test_configured_logging_decides_and_nothing_is_printed_twice(tmp_path, configure, shown):
    """With logging configured, the user's handlers and levels alone decide: the compile line
    comes once through their handler at INFO, not at all at WARNING or when the "fastgrad"
    logger is set to WARNING, and never also as fastgrad's own bare stderr line."""
    cache = tmp_path / "cache"
    child = run_code(OPT_STEP, cache, "float64", prelude=f"import logging\n{configure}\n")
    expected = ["LOG fastgrad " + compile_line(cache, "float64")] if shown else []
    assert child.stderr.splitlines() == expected


def test_caching_off_says_the_kernels_last_one_process(tmp_path):
    """FASTGRAD_DISABLE_CACHE: the compile line says the kernels are compiled once per process,
    and a second process compiles (and says so) again."""
    for _ in range(2):
        child = run_code(OPT_STEP, tmp_path / "cache", "float64", FASTGRAD_DISABLE_CACHE="1")
        assert child.stderr.splitlines() == [
            "fastgrad: compiling kernels for float64 (once per process: "
            "FASTGRAD_DISABLE_CACHE is set)"]


THREADS = textwrap.dedent("""
    import threading
    import numpy as np
    import fastgrad as fg

    results, barrier = {}, threading.Barrier(4)

    def first_step(k, dtype):
        p = fg.tensor(np.ones(3, dtype), requires_grad=True)
        opt = fg.optim.SGD([p], lr=0.5, momentum=0.9)
        p.grad = np.ones(3, dtype)
        barrier.wait()
        opt.step()
        results[k] = (dtype, tuple(p.numpy().tolist()))

    threads = [threading.Thread(target=first_step, args=(k, d))
               for k, d in enumerate(["float64", "float32"] * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(sorted(set(results.values())))
    print([t.name for t in threading.enumerate() if t.name.startswith("fastgrad")])
""")


def test_threads_compiling_at_once_get_one_line_per_dtype_and_right_results(tmp_path):
    """Four threads make their first optimizer step at the same moment, two per dtype: one
    compile line per dtype, the results of a serial run, and no progress thread left."""
    cache = tmp_path / "cache"
    child = run_code(THREADS, cache)
    assert sorted(child.stderr.splitlines()) == sorted([compile_line(cache, "float64"),
                                                        compile_line(cache, "float32")])
    serial = run_code(OPT_STEP, tmp_path / "serial", "float64,float32")
    expected = sorted((dtype, tuple(ast.literal_eval(values)))
                      for dtype, values in (ln.split(" ", 1) for ln in serial.stdout.splitlines()))
    got, threads = child.stdout.splitlines()
    assert ast.literal_eval(got) == expected and threads == "[]"


def test_the_home_directory_is_shown_as_a_tilde(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert kernel_cache.shorten_home(tmp_path / "home" / ".cache" / "fastgrad" / "ab12") == \
        os.path.join("~", ".cache", "fastgrad", "ab12")
    assert kernel_cache.shorten_home(tmp_path / "homework") == str(tmp_path / "homework")


PROGRESS = textwrap.dedent("""
    import sys, threading, time
    import fastgrad.kernel_cache as kc
    kc.PROGRESS_SECONDS = 0.05  # the compile takes about a second: many progress lines
    exec(compile(sys.argv[2], "opt_step", "exec"))
    print("-- compiled --", file=sys.stderr, flush=True)
    print([t.name for t in threading.enumerate() if t.name.startswith("fastgrad")])
    time.sleep(0.5)  # ten progress periods: a thread still running would print meanwhile
""")


def test_a_long_compile_prints_progress_lines_from_a_thread_that_stops_when_it_ends(tmp_path):
    """A compilation longer than PROGRESS_SECONDS prints "still compiling (N s; kernel dtype)"
    lines, then "compiled kernel dtype in N s"; the progress thread is gone when the call
    returns and prints nothing afterwards."""
    child = run(["-c", PROGRESS, "float64", OPT_STEP], tmp_path / "cache")
    lines = child.stderr.splitlines()
    assert lines[0] == compile_line(tmp_path / "cache", "float64")
    progress = lines[1:-2]
    assert progress and all(ln.startswith("fastgrad: still compiling (") and
                            ln.endswith(" s; optimizer_update float64)") for ln in progress)
    assert lines[-2].startswith("fastgrad: compiled optimizer_update float64 in ")
    assert lines[-1] == "-- compiled --"  # nothing after the call returned
    assert child.stdout.splitlines()[-1] == "[]"  # no fastgrad thread left


# ----------------------------------------------------------------------------- Ctrl-C
INTERRUPTED = textwrap.dedent("""
    import logging, signal, sys
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C raises, whatever the parent
    logging.getLogger("fastgrad").setLevel(logging.DEBUG)  # one line per kernel compiled
    exec(compile(sys.argv[2], "opt_step", "exec"))
    import numpy as np
    import fastgrad as fg
    x = fg.tensor(np.array([2.0]), requires_grad=True)
    ((x + x) * x).sum().backward()  # the eager replay kernels: a minute more of compiling
""")


def compiled_kernels(stderr):
    """The kernels a child compiled, from its DEBUG lines."""
    return [ln for ln in stderr.splitlines()
            if ln.startswith("fastgrad: kernel ") and " compiled in " in ln]


def test_ctrl_c_during_a_cold_compile_keeps_the_kernels_compiled_before_it(tmp_path):
    """SIGINT to a cold process once a first kernel is in the cache: the process stops with
    KeyboardInterrupt, and the next process on that cache compiles fewer kernels than a cold
    one (those saved before the interrupt load from the cache), with the same results."""
    cold_reference = run_code(OPT_STEP, tmp_path / "reference", "float64,float32",
                              prelude=DEBUG)
    n_cold = len(compiled_kernels(cold_reference.stderr))
    assert n_cold >= 4  # optimizer_update and sgd_plain, per dtype

    cache = tmp_path / "cache"
    child = subprocess.Popen([sys.executable, "-c", NO_PROGRESS + INTERRUPTED, "float64,float32",
                              OPT_STEP],
                             env=child_env(cache), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        # a data file (.nbc) is written after its index entry: its presence means one kernel
        # is completely in the cache
        while not any(cache.rglob("*.nbc")) and child.poll() is None:
            assert time.monotonic() < deadline, "no kernel reached the cache"
            time.sleep(0.01)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=600)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode != 0 and "KeyboardInterrupt" in err, (out, err[-3000:])
    where = kernel_cache.shorten_home(cache / jit._source_digest())
    assert any(ln.startswith("fastgrad: compilation of ") and ln.endswith(
        f" interrupted; the kernels compiled before it ({ln.split('(')[-1].split(')')[0]}) "
        f"stay cached in {where}") for ln in err.splitlines()), err[-3000:]

    again = run_code(OPT_STEP, cache, "float64,float32", prelude=DEBUG)
    assert len(compiled_kernels(again.stderr)) < n_cold
    assert again.stdout == cold_reference.stdout
    assert "could not be" not in again.stderr  # no damaged-cache warning


# ----------------------------------------------------------------------------- fastgrad warmup
def test_warmup_refuses_unknown_names_and_a_cache_that_keeps_nothing(tmp_path):
    """Unknown --ops names and a disabled cache exit 2 with a message naming the fix, before
    compiling anything."""
    cli = [sys.executable, "-m", "fastgrad.cli", "warmup", "--dtype", "float64"]
    bad = subprocess.run(cli + ["--ops", "eager,matmull"], env=child_env(tmp_path / "cache"),
                         capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode == 2
    assert "unknown op family or op 'matmull'" in bad.stderr
    assert "eager, step, fit, scan, all-ops, neg" in bad.stderr and "matmul," in bad.stderr
    off = subprocess.run(cli, env=dict(child_env(tmp_path / "cache"), FASTGRAD_DISABLE_CACHE="1"),
                         capture_output=True, text=True, timeout=300, check=False)
    assert off.returncode == 2 and "FASTGRAD_CACHE_DIR" in off.stderr
    assert not list((tmp_path / "cache").rglob("*.nbi"))


def test_warmup_help_says_what_ops_names_today():
    helped = subprocess.run([sys.executable, "-m", "fastgrad.cli", "warmup", "--help"],
                            capture_output=True, text=True, timeout=300, check=True)
    for family in warmup.FAMILIES:
        assert f"  {family} " in helped.stdout
    assert "--ops also takes op names" in " ".join(helped.stdout.split())


def test_warmup_of_named_ops_compiles_their_kernels_alone(tmp_path):
    """``--ops tanh,matmul`` compiles those two ops' forward and VJP kernels (and the table's
    stubs), nothing else; a second run finds them cached."""
    cache = tmp_path / "cache"
    warm = ["-m", "fastgrad.cli", "warmup", "--dtype", "float32", "--ops", "tanh,matmul"]
    first = run(warm, cache)
    lines = first.stdout.splitlines()
    assert lines[1].split()[:2] == ["float32", "tanh"]
    assert "compiled ops tanh (" in lines[1]
    assert "compiled ops matmul (2 kernels)" in lines[2]
    again = run(warm, cache)
    assert all("already cached" in line for line in again.stdout.splitlines()[1:3])


def test_warmup_names_a_kernel_shared_by_several_ops_as_ops_not_as_an_entry():
    """SUB, MUL and DIV rows run on ADD's kernels (``arithmetic_*``), the single-cell loops on
    ``scan_cell_*``: a warmup line lists them with the ops, the entries by name."""
    summary = warmup._compiled_summary(["arithmetic_forward", "arithmetic_vjp",
                                        "scan_cell_forward", "train_step"])
    assert summary == "compiled train_step; ops arithmetic, scan_cell (3 kernels)"


README_EXAMPLE = textwrap.dedent("""
    import numpy as np
    import fastgrad as fg
    x = fg.tensor(2.0, requires_grad=True)
    y = fg.tensor(-3.0, requires_grad=True)
    z = fg.tensor(4.0, requires_grad=True)
    ((x + y) * z).backward()
    print([float(x.grad), float(y.grad), float(z.grad)])
""")


@pytest.mark.slow
def test_warmup_fills_a_cache_that_the_next_process_uses_without_compiling(tmp_path):
    """``fastgrad warmup --dtype float64 --ops eager`` on an empty cache prints the cache
    directory, what it compiled and the time, and exits 0; then the README's first example
    runs in a new process without a compile line, and a second warmup finds everything
    cached. (The slowest test of this file: it compiles the eager replay kernels.)"""
    cache = tmp_path / "cache"
    warm = ["-m", "fastgrad.cli", "warmup", "--dtype", "float64", "--ops", "eager"]
    first = run(warm, cache)
    where = kernel_cache.shorten_home(cache / jit._source_digest())
    lines = first.stdout.splitlines()
    assert lines[0] == f"fastgrad warmup: kernel cache {where}"
    assert lines[1].split()[:2] == ["float64", "eager"]
    assert "compiled" in lines[1] and "replay_forward" in lines[1]
    assert "replay_backward" in lines[1] and "optimizer_update" in lines[1]
    assert lines[-1].startswith("fastgrad warmup: ") and " kernels compiled, 0 of 1 " in lines[-1]
    assert compile_line(cache, "float64") in first.stderr

    example = run_code(README_EXAMPLE, cache)
    assert example.stderr == "" and example.stdout.strip() == "[4.0, 4.0, -1.0]"
    again = run(warm, cache)
    assert "already cached" in again.stdout.splitlines()[1] and again.stderr == ""
