"""The large matrix products never run on more BLAS threads than the cores other processes leave
free (runtime/blas_threads.py, kernels/blas.py); a training step beside a busy process slows by
the CPU share it loses, not by a thread pool waiting for a descheduled thread."""

import json
import sys

import numpy as np
import pytest

import fastgrad as fg
from fastgrad import blas_threads
from fastgrad.kernels import blas


@pytest.fixture
def machine(monkeypatch):
    """A fake 2-CPU machine whose runnable-thread count the test sets; the clock is the
    test's too."""
    load = {"system": 1, "own": 1}
    monkeypatch.setattr(blas_threads, "cpus", lambda: 2)
    monkeypatch.setattr(blas_threads, "_running_system", lambda: load["system"])
    monkeypatch.setattr(blas_threads, "_running_own", lambda: load["own"])
    for name in blas_threads._ENV_CAPS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(blas_threads._state, "others", [])
    monkeypatch.setitem(blas_threads._state, "user", None)
    blas_threads.NEXT_SAMPLE[0] = 0.0
    clock = [1000.0]

    def sample():
        clock[0] += blas_threads.REFRESH_SECONDS
        return blas_threads.refresh(now=clock[0])

    yield load, sample
    blas_threads._state["others"] = []
    blas_threads.NEXT_SAMPLE[0] = 0.0
    blas.set_threads(blas_threads.cpus())


def test_a_busy_neighbour_that_lasts_takes_a_thread_and_gives_it_back_when_it_stops(machine):
    load, sample = machine
    assert sample() == 2  # idle: a thread per CPU
    load["system"] = 2  # one more runnable thread, not ours
    assert sample() == 2 and sample() == 2  # not yet seen to last
    assert sample() == 1 and fg.get_blas_threads() == 1
    load["system"] = 1
    assert [sample() for _ in range(blas_threads.SAMPLES)][-1] == 2


def test_a_short_lived_process_does_not_take_a_thread(machine):
    load, sample = machine
    for busy_now in [0, 1, 0, 0, 1, 0, 1, 0]:
        load["system"] = 1 + busy_now
        assert sample() == 2


def test_our_own_running_threads_are_not_neighbours(machine):
    load, sample = machine
    load["system"], load["own"] = 3, 3  # the caller and a BLAS pool spinning
    assert [sample() for _ in range(4)][-1] == 2


def test_a_cap_from_the_environment_or_the_user_wins(machine, monkeypatch):
    load, sample = machine
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert sample() == 1
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    assert sample() == 2
    fg.set_blas_threads(1)
    assert fg.get_blas_threads() == 1 and sample() == 1
    fg.set_blas_threads(None)
    assert sample() == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_a_thread_count_that_is_not_a_positive_int_is_refused_by_name(bad):
    with pytest.raises(fg.FastgradError, match="set_blas_threads: n must be an int >= 1"):
        fg.set_blas_threads(bad)


def test_choose_never_goes_below_one_or_above_the_free_cores():
    assert blas_threads.choose(2, 0) == 2
    assert blas_threads.choose(2, 1) == 1
    assert blas_threads.choose(2, 7) == 1
    assert blas_threads.choose(16, 4, cap=8) == 8
    assert blas_threads.choose(16, 12, cap=8) == 4


def test_a_large_product_gives_the_same_values_on_one_thread_as_on_every_cpu():
    """A product above OPENBLAS_ONE_THREAD_MAX_WORK goes through the thread-local setter:
    its values and gradients do not depend on the thread count (BLAS splits rows and columns,
    not the sum)."""
    rng = np.random.default_rng(0)
    x0, w0 = rng.standard_normal((96, 200)), rng.standard_normal((80, 200))
    assert 96 * 200 * 80 > blas.OPENBLAS_ONE_THREAD_MAX_WORK
    results = []
    try:
        for n in (1, blas_threads.cpus()):
            fg.set_blas_threads(n)
            x, w = fg.tensor(x0, requires_grad=True), fg.tensor(w0, requires_grad=True)
            y = (x @ w.T).tanh()
            y.sum().backward()
            results.append((y.numpy().copy(), x.grad.copy(), w.grad.copy()))
    finally:
        fg.set_blas_threads(None)
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(results[0][0], np.tanh(x0 @ w0.T), rtol=1e-12)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SciPy's OpenBLAS wheels")
def test_scipys_openblas_takes_a_thread_count_per_call():
    assert blas.PROVIDER != "scipy" or blas.THREADS_SETTABLE


def test_bench_contended_reports_both_settings(tmp_path, capsys):
    from fastgrad.cli import main

    assert main(["bench", "--contended", "--quick", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "| auto |" in printed and "| all CPUs |" in printed
    saved = json.loads((tmp_path / "contended.json").read_text())
    assert set(saved["result"]) == {"auto", "all CPUs"}
    assert all(len(cell["ratio"]) == 1 and cell["ratio"][0] > 0
               for cell in saved["result"].values())
