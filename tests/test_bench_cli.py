"""``fastgrad bench``: the quick run end to end (every cell in its own process), what it prints
and writes, and the pieces it is made of (workload selection, the peak-memory probe, the
command's options). No timing is asserted: only that the numbers exist and are consistent."""

import contextlib
import io
import itertools
import json
import pathlib
import runpy
import subprocess
import sys

import numpy as np
import pytest

from fastgrad.benchmarks import runner
from fastgrad.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
QUICK = ["quick-mlp-8-16-4-tanh-b8", "quick-rnn-h64-T50-b2", "quick-lstm-h16-T20-b2",
         "quick-gru-h16-T20-b2"]


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    code, stdout, stderr = run_cli(["bench", "--quick", "--out", str(out)])
    result = json.loads((out / "bench.json").read_text())
    return dict(code=code, stdout=stdout, stderr=stderr, out=out, result=result)


def expected_impls(workload):
    peers = runner.peer_versions()
    for cell, layer in (("lstm", "torch.nn.LSTM"), ("gru", "torch.nn.GRU")):
        if workload.startswith(f"quick-{cell}-"):  # against PyTorch's layer only
            return {"fastgrad"} | ({layer} if peers["torch"] else set())
    impls = {"fastgrad", "fastgrad-plain", "numpy", "numba"}
    impls |= {"fastgrad-eager"} if workload.startswith("quick-mlp") else set()
    if workload.startswith("quick-mlp") and runner._blas_provider() != "scipy":
        impls |= {"fastgrad-scipy"}  # beside MKL's run, the default install's
    if peers["torch"]:
        impls |= {"torch"} | ({"torch.nn.RNN"} if "-rnn-" in workload else set())
    if peers["jax"]:
        impls |= {"jax"}
    return impls


def test_quick_run_succeeds_and_writes_json_markdown_and_png(quick):
    assert quick["code"] == 0, quick["stdout"] + quick["stderr"]
    out = quick["out"]
    assert (out / "bench.json").is_file() and (out / "bench.md").is_file()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not (out / "bench.png").exists()
        assert "matplotlib is not installed" in quick["stdout"]
    else:
        assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one progress line per cell on stderr, the table alone on stdout
    progress = [ln for ln in quick["stderr"].splitlines() if ln.startswith("[")]
    assert len(progress) == len(quick["result"]["rows"])


def test_every_quick_workload_runs_every_available_implementation(quick):
    rows = quick["result"]["rows"]
    assert sorted({r["workload"] for r in rows}) == sorted(QUICK)
    for w in QUICK:
        assert {r["impl"] for r in rows if r["workload"] == w} == expected_impls(w)
    assert all(r["dtype"] == "float64" and r["error"] is None for r in rows)


def test_table_has_the_columns_and_one_line_per_cell(quick):
    lines = quick["stdout"].splitlines()
    header = lines[0]
    for column in ["workload", "dtype", "implementation", "time/step", "us/unrolled step",
                   "ratio", "peak MiB"]:
        assert column in header
    for r in quick["result"]["rows"]:
        line = [ln for ln in lines if ln.split()[:3] == [r["workload"], r["dtype"], r["impl"]]]
        assert len(line) == 1, r
        cells = line[0].split()
        assert cells[-2] == f"{r['ratio_to_fastgrad']:.2f}"
        assert cells[-1] == f"{r['peak_mib']:.1f}"
        unrolled = cells[-3]
        assert unrolled == ("-" if r["kind"] == "mlp" else f"{r['us_per_unrolled_step']:.2f}")
    assert "ratio: time / fastgrad's time" in quick["stdout"]
    assert "peak MiB: peak RSS growth" in quick["stdout"]


def test_json_rows_are_consistent(quick):
    result = quick["result"]
    for r in result["rows"]:
        base = next(b for b in result["rows"]
                    if (b["workload"], b["dtype"], b["impl"]) == (r["workload"], r["dtype"],
                                                                  "fastgrad"))
        assert r["seconds"] > 0 and r["median_us"] == pytest.approx(r["seconds"] * 1e6)
        assert r["ratio_to_fastgrad"] == pytest.approx(r["seconds"] / base["seconds"])
        if r["kind"] == "rnn":
            T = int(r["workload"].split("-T")[1].split("-")[0])
            assert r["us_per_unrolled_step"] == pytest.approx(r["median_us"] / T)
        else:
            assert r["us_per_unrolled_step"] is None
        if sys.platform.startswith("linux"):
            assert r["peak_mib"] >= 0 and r["rss_before_mib"] > 0
    assert {"platform", "cpu", "cores", "python", "numpy", "numba"} <= set(result["machine"])
    assert set(result["peers"]) == {"torch", "jax"}
    for r in result["rows"]:  # every documented field is in every row
        assert set(result["columns"]) <= set(r)


def test_every_implementation_computes_the_same_loss(quick):
    """Same weights, same data: the first step's loss agrees with fastgrad's everywhere."""
    rows = quick["result"]["rows"]
    for w in QUICK:
        losses = {r["impl"]: r["loss"] for r in rows if r["workload"] == w}
        for impl, loss in losses.items():
            assert loss == pytest.approx(losses["fastgrad"], rel=1e-9), impl
    assert quick["result"]["warnings"] == []


def test_markdown_has_the_readme_layout(quick):
    md = (quick["out"] / "bench.md").read_text()
    impls = sorted(expected_impls(QUICK[0]), key=runner.IMPL_ORDER.index)
    head = ["fastgrad µs"] + [runner.IMPL_TITLES[i] for i in impls[1:]]
    assert head[:3] in (["fastgrad µs", "NumPy", "Numba (hand-written)"],  # SciPy's BLAS
                        ["fastgrad µs", "fastgrad, SciPy's BLAS", "NumPy"])  # beside MKL's
    assert "| workload | dtype | " + " | ".join(head) + " |\n" in md
    assert "| quick-rnn-h64-T50-b2 | f64 |" in md
    assert "Peak memory" in md and "Machine:" in md


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("resettable", [True, False], ids=["reset-allowed", "reset-refused"])
def test_peak_rss_counts_an_allocation_inside_the_block_and_not_an_earlier_peak(resettable,
                                                                                monkeypatch):
    """Where the kernel lets the peak mark be reset, the block's own peak is measured; where
    it refuses (forced here by making the reset fail), a block that stays under an earlier
    peak reports no figure rather than a wrong one."""
    if not resettable:
        monkeypatch.setattr(runner, "_reset_peak", lambda: False)
    big = np.ones(2**24)  # 128 MiB, touched, then freed: an earlier peak
    del big
    with runner.PeakRSS() as m:
        a = np.ones(2**22)  # 32 MiB inside the block
    if m.reset:
        assert 30 <= m.mib < 100
        with runner.PeakRSS() as m:
            a.sum()
        assert m.mib < 16
    else:  # refused (forced here, or by this kernel)
        assert m.mib is None  # under the earlier peak: unknown, not 0 and not the old peak


def test_workload_selection():
    def names(ws):
        return [w.name for w in ws]

    default = names(runner.select_workloads())
    assert "mlp-784-128-10-relu-b64" in default and "rnn-h64-T10000-b16" in default
    assert not any("long" in n or "quick" in n for n in default)
    assert names(runner.select_workloads(quick=True)) == QUICK
    assert names(runner.select_workloads(["rnn-*"])) == [
        "rnn-h64-T1000-b1", "rnn-h64-T10000-b1", "rnn-h64-T1000-b16", "rnn-h64-T10000-b16"]
    assert names(runner.select_workloads(["long-*"])) == [
        "long-rnn-h64-T1000000-b1", "long-rnn-h64-T10000000-b1"]
    assert names(runner.select_workloads(["quick-mlp*"], quick=True)) == QUICK[:1]
    with pytest.raises(SystemExit, match="no workload matches 'nope'"):
        runner.select_workloads(["nope"])


def canned_result(error=None):
    row = dict(workload="quick-rnn-h64-T50-b2", kind="rnn", dtype="float64", seconds=1e-3,
               median_us=1e3, us_per_unrolled_step=20.0, peak_mib=1.5, rss_before_mib=100.0,
               input_mib=0.01, loss=0.5, error=None)
    rows = [dict(row, impl="fastgrad"), dict(row, impl="numpy", seconds=3e-3, median_us=3e3,
                                              us_per_unrolled_step=60.0, error=error)]
    runner._add_ratios(rows)
    return dict(machine=runner.machine_info(), peers={"torch": None, "jax": None},
                settings={}, columns=runner.COLUMNS, rows=rows, warnings=[], seconds=0.0)


def test_json_option_and_missing_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "run", lambda *a, **k: canned_result())
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "matplotlib.ticker", None)
    path = tmp_path / "elsewhere" / "r.json"
    code, stdout, _ = run_cli(["bench", "--quick", "--out", str(tmp_path / "o"), "--json",
                               str(path)])
    assert code == 0
    assert json.loads(path.read_text())["rows"][1]["ratio_to_fastgrad"] == pytest.approx(3.0)
    assert not (tmp_path / "o" / "bench.json").exists()
    assert not (tmp_path / "o" / "bench.png").exists()
    assert "matplotlib is not installed" in stdout


def test_a_failed_cell_is_shown_and_fails_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "run", lambda *a, **k: canned_result(error="ImportError: x"))
    code, stdout, _ = run_cli(["bench", "--quick", "--out", str(tmp_path)])
    assert code == 1
    assert "quick-rnn-h64-T50-b2  float64  numpy  failed: ImportError: x" in stdout


def test_bench_folder_uses_the_installed_package(monkeypatch, capsys):
    """The pytest-benchmark suites collect and the compare scripts run (listing only)."""
    collect = subprocess.run([sys.executable, "-m", "pytest", "bench", "--collect-only", "-q",
                              "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True,
                             text=True, check=False)
    assert collect.returncode == 0, collect.stdout + collect.stderr
    assert "test_bench_rnn.py::test_bptt_step" in collect.stdout
    for script in ["compare.py", "compare_rnn.py", "rnn_long.py"]:
        path = str(ROOT / "bench" / script)
        monkeypatch.setattr(sys, "argv", [path, "--list"])
        with pytest.raises(SystemExit) as done:
            runpy.run_path(path, run_name="__main__")
        assert done.value.code == 0
        assert "long-rnn-h64-T1000000-b1" in capsys.readouterr().out


def test_processes_run_every_cell_in_rounds_and_keep_each_cells_fastest(monkeypatch):
    """--processes N: all cells once, then all again backwards (a slow spell of the machine falls
    on every implementation alike, and no cell always follows the same one); each row is its
    cell's fastest process, listing all of them."""
    calls = []
    times = {("fastgrad", 0): 3.0, ("fastgrad", 1): 2.0, ("numpy", 0): 5.0, ("numpy", 1): 7.0}
    # (impl, its k-th process) -> seconds

    def fake_cell(w, dtype, impl, repeat=None, min_time=None):
        k = sum(c == impl for c in calls)
        calls.append(impl)
        return dict(workload=w.name, dtype=dtype, impl=impl, seconds=times[impl, k], loss=0.5,
                    error=None)

    monkeypatch.setattr(runner, "run_cell", fake_cell)
    w = runner.select_workloads(["quick-mlp-8-16-4-tanh-b8"])
    result = runner.run(w, ["float64"], ["numpy"], processes=2)
    assert calls == ["fastgrad", "numpy", "numpy", "fastgrad"]
    rows = {r["impl"]: r for r in result["rows"]}
    assert rows["fastgrad"]["seconds"] == 2.0 and rows["fastgrad"]["process_seconds"] == [3.0, 2.0]
    assert rows["numpy"]["seconds"] == 5.0 and rows["numpy"]["ratio_to_fastgrad"] == 2.5
    assert result["settings"]["processes"] == 2
    with pytest.raises(SystemExit, match="at least 1"):
        run_cli(["bench", "--quick", "--processes", "0"])


# ----------------------------------------------------------------------------- --paired


def test_paired_rounds_alternate_and_the_ratio_is_the_median_of_per_round_ratios():
    """Both sides run in every round, in alternating order, timed on the clock given (here a
    fake one that each call advances by its cost)."""
    from fastgrad.benchmarks import paired

    now, order = [0.0], []

    def side(name, cost):
        def fn(x):
            order.append(name)
            now[0] += cost
        return fn

    fast, ref = side("fast", 2e-6), side("ref", 3e-6)
    clock = lambda: now[0]  # noqa: E731
    nf = paired.calls_per_half(fast, (None,), 1e-3, clock)
    assert nf == 500  # 1 ms of 2 µs calls
    order.clear()
    ft, rt = paired.paired_times(fast, ref, (None,), rounds=4, min_time=2e-3, clock=clock)
    assert len(ft) == len(rt) == 4
    runs = [(name, len(list(calls))) for name, calls in itertools.groupby(order)]
    # calibration (fast, ref), then 1 ms halves (500 and 333 calls): fast-ref, ref-fast,
    # fast-ref, ref-fast
    assert [n for n, _ in runs[:2]] == ["fast", "ref"]
    assert runs[2:] == [("fast", 500), ("ref", 666), ("fast", 1000), ("ref", 666),
                        ("fast", 500)]
    s = paired.ratio_summary(ft, rt)
    assert s["ratio"] == pytest.approx(1.5) and s["ratio_q1"] == pytest.approx(1.5)
    assert s["fastgrad_us"] == pytest.approx(2.0) and s["ref_us"] == pytest.approx(3.0)
    # a round whose two halves met different machine speeds is an outlier among the rounds:
    # the median and quartiles of the per-round ratios stay put
    s = paired.ratio_summary([1.0, 1.0, 1.0, 1.0, 2.0], [1.5, 1.5, 1.5, 1.5, 1.5])
    assert s["ratio"] == 1.5 and s["ratio_q1"] == 1.5 and s["rounds"] == 5


def test_paired_command_keeps_the_median_process_and_fails_on_an_error(tmp_path, monkeypatch):
    from fastgrad.benchmarks import paired

    ratios = iter([1.1, 0.9, 1.0])
    calls = []

    def fake_pair(name, dtype, impl, rounds, min_time):
        calls.append((name, dtype, impl, rounds))
        r = next(ratios)
        return dict(workload=name, dtype=dtype, impl=impl, error=None, ratio=r, ratio_q1=r - 0.01,
                    ratio_q3=r + 0.01, fastgrad_us=10.0, ref_us=10.0 * r, rounds=rounds)

    monkeypatch.setattr(paired, "run_pair", fake_pair)
    code, stdout, stderr = run_cli(["bench", "--paired", "--workload", QUICK[0], "--dtype",
                                    "float64", "--processes", "3", "--out", str(tmp_path)])
    assert code == 0, stdout + stderr
    assert calls == [(QUICK[0], "float64", "numba", paired.DEFAULT_ROUNDS)] * 3  # default: numba
    (row,) = json.loads((tmp_path / "paired.json").read_text())["rows"]
    assert row["ratio"] == 1.0 and row["process_ratios"] == [0.9, 1.0, 1.1]
    assert "1.000  0.990-1.010  0.900 1.000 1.100" in stdout
    monkeypatch.setattr(paired, "run_pair", lambda *a: dict(
        workload=QUICK[0], dtype="float64", impl="numba", error="ImportError: numba"))
    code, stdout, _ = run_cli(["bench", "--paired", "--workload", QUICK[0], "--dtype", "float64",
                               "--out", str(tmp_path)])
    assert code == 1 and "failed: ImportError: numba" in stdout
    # one failed process of three: the others' median is kept, and the command fails
    ratios = iter([1.2, 1.4])
    runs = iter([fake_pair(QUICK[0], "float64", "numba", 21, 0.1) for _ in range(2)])
    monkeypatch.setattr(paired, "run_pair", lambda *a: next(runs, dict(
        workload=QUICK[0], dtype="float64", impl="numba", error="killed")))
    code, stdout, _ = run_cli(["bench", "--paired", "--workload", QUICK[0], "--dtype", "float64",
                               "--processes", "3", "--out", str(tmp_path)])
    assert code == 1 and "1 process(es) failed" in stdout
    (row,) = json.loads((tmp_path / "paired.json").read_text())["rows"]
    assert row["process_ratios"] == [1.2, 1.4] and row["ratio"] == 1.2
    assert row["failed_processes"] == 1
    with pytest.raises(SystemExit, match="no .workload, reference. pair"):
        run_cli(["bench", "--paired", "--workload", QUICK[0], "--impl", "fastgrad"])
    with pytest.raises(SystemExit, match="at least 1"):
        run_cli(["bench", "--paired", "--workload", QUICK[0], "--repeat", "0"])


def test_a_paired_measurement_runs_in_a_fresh_process():
    from fastgrad.benchmarks import paired

    row = paired.run_pair(QUICK[0], "float64", "numpy", rounds=3, min_time=0.01)
    assert row["error"] is None, row
    assert row["rounds"] == 3 and row["ratio_q1"] <= row["ratio"] <= row["ratio_q3"]
    assert row["fastgrad_us"] > 0 and row["ref_us"] > 0


def test_beside_mkl_the_default_installs_step_runs_with_scipys_blas(monkeypatch):
    """With MKL as fastgrad's BLAS, a 'fastgrad-scipy' cell joins the MLP workloads, run in a
    process with FASTGRAD_BLAS=scipy; with SciPy's BLAS it would repeat 'fastgrad' and is left
    out. Every other cell inherits the environment."""
    envs = {}

    def fake_child(args, row, env=None):
        envs[row["impl"]] = env
        return dict(row, seconds=1.0, loss=0.5, error=None)

    monkeypatch.setattr(runner, "run_child", fake_child)
    w = runner.select_workloads(["quick-mlp-8-16-4-tanh-b8"])
    monkeypatch.setattr(runner, "_blas_provider", lambda: "mkl 2026.2")
    runner.run(w, ["float64"], ["numpy", "fastgrad-scipy"])
    assert set(envs) == {"fastgrad", "numpy", "fastgrad-scipy"}
    assert envs["fastgrad-scipy"]["FASTGRAD_BLAS"] == "scipy"
    assert envs["fastgrad"] is None and envs["numpy"] is None
    envs.clear()
    monkeypatch.setattr(runner, "_blas_provider", lambda: "scipy")
    runner.run(w, ["float64"], ["numpy", "fastgrad-scipy"])
    assert set(envs) == {"fastgrad", "numpy"}


def test_a_fastgrad_scipy_cell_refuses_to_run_with_another_blas(monkeypatch):
    from fastgrad.benchmarks import workloads
    from fastgrad.kernels import blas

    monkeypatch.setattr(blas, "PROVIDER", "mkl 2026.2")
    w = runner.select_workloads(["quick-mlp-8-16-4-tanh-b8"])[0]
    with pytest.raises(RuntimeError, match="FASTGRAD_BLAS=scipy"):
        workloads.make_fastgrad_scipy_blas(w, np.float64)


def test_paired_processes_run_fastgrad_with_scipys_blas_like_the_references(monkeypatch):
    """Two BLAS thread pools in one process fight over the cores: a pair shares SciPy's."""
    from fastgrad.benchmarks import paired

    seen = []
    monkeypatch.setattr(paired, "run_child", lambda args, row, env=None: seen.append(env) or row)
    paired.run_pair(QUICK[0], "float64", "numba", 3, 0.01)
    assert seen[0]["FASTGRAD_BLAS"] == "scipy"
