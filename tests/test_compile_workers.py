"""Spec: kernels missing from the cache compile on several cores (kernels/workers.py).

Forked children compile a share of the missing kernels into the kernel cache while this process
compiles its own; what they compiled appears in this process's compile report; a child that
fails costs time, never a result; FASTGRAD_COMPILE_WORKERS=1 compiles in one process.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from fastgrad.kernels import dispatch, workers

FIRST_EXAMPLE = """
    import json, os
    import fastgrad as fg
    from fastgrad import kernel_cache
    from fastgrad.kernels import dispatch, workers
    {setup}
    x = fg.tensor(2.0, requires_grad=True)
    y = fg.tensor(-3.0, requires_grad=True)
    z = fg.tensor(4.0, requires_grad=True)
    f = (x + y) * z
    f.backward()
    print(json.dumps({{"grads": [float(x.grad), float(y.grad), float(z.grad)],
                      "compiled": [c.kernel for c in kernel_cache.REPORTER.compiled
                                   if not c.failed],
                      "children": globals().get("children")}}))
"""


def run_fresh(cache, workers_env, setup=""):
    env = dict(os.environ, FASTGRAD_CACHE_DIR=str(cache), FASTGRAD_COMPILE_WORKERS=workers_env)
    env.pop("NUMBA_CACHE_DIR", None)
    code = textwrap.dedent(FIRST_EXAMPLE).format(setup=textwrap.dedent(setup).strip())
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


ROW_KERNELS = {"arithmetic_forward", "arithmetic_vjp"}  # ADD's kernels run MUL rows too


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers fork: Linux only")
def test_two_processes_compile_the_first_example_and_the_report_lists_every_kernel(tmp_path):
    setup = """
        children = []
        real_fork = workers._fork
        def counting_fork(share):
            children.append([getattr(t, "__name__", str(t)) for t, _ in share])
            return real_fork(share)
        workers._fork = counting_fork
    """
    cold, log = run_fresh(tmp_path, "2", setup)
    assert cold["grads"] == [4.0, 4.0, -1.0]
    assert len(cold["children"]) == 1 and cold["children"][0]  # one child, with a share
    # every row kernel and both replay loops, compiled here or in the child, are reported
    assert ROW_KERNELS | {"replay_forward", "replay_backward"} <= set(cold["compiled"])
    assert log.count("compiling kernels for float64") == 1  # the child adds no second line
    warm, log = run_fresh(tmp_path, "2")
    assert warm["grads"] == [4.0, 4.0, -1.0]
    assert warm["compiled"] == [] and "compiling" not in log  # everything is in the cache


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers fork: Linux only")
def test_a_child_that_dies_leaves_its_share_to_this_process(tmp_path):
    setup = """
        class Dying(workers.Reporting):
            def in_child(self):
                os._exit(3)  # before compiling anything, and sending no report
        workers.REPORTING = Dying()
    """
    cold, _ = run_fresh(tmp_path, "2", setup)
    assert cold["grads"] == [4.0, 4.0, -1.0]
    # with its child gone, this process compiled (and reports) every kernel itself
    assert ROW_KERNELS | {"replay_forward", "replay_backward"} <= set(cold["compiled"])


def test_one_worker_compiles_in_this_process(tmp_path):
    setup = """
        def no_fork(share):
            raise AssertionError("forked with FASTGRAD_COMPILE_WORKERS=1")
        workers._fork = no_fork
    """
    cold, _ = run_fresh(tmp_path, "1", setup)
    assert cold["grads"] == [4.0, 4.0, -1.0]
    assert ROW_KERNELS <= set(cold["compiled"])


def test_the_number_of_workers_comes_from_the_environment_or_the_cpus(monkeypatch):
    monkeypatch.setenv("FASTGRAD_COMPILE_WORKERS", "3")
    assert workers.workers() == 3
    monkeypatch.setenv("FASTGRAD_COMPILE_WORKERS", "0")
    assert workers.workers() == 1
    monkeypatch.setenv("FASTGRAD_COMPILE_WORKERS", "many")
    assert workers.workers() == 1
    monkeypatch.delenv("FASTGRAD_COMPILE_WORKERS")
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert workers.workers() == 3  # the CPUs this process may run on
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: set(range(64)),
                        raising=False)
    assert workers.workers() == workers.MAX_WORKERS  # at most this many


def test_shares_keep_groups_whole_balance_the_weights_and_give_this_process_the_entries():
    class Entry(workers.Dispatcher):  # only its type matters to _balanced
        def __init__(self):
            pass

        def __repr__(self):
            return "entry"

    entry = Entry()
    units = [("linear_act_forward", "s", "matmul", 3.0), ("linear_act_vjp", "s", "matmul", 3.0),
             ("arithmetic_forward", "s", "binary", 1.0), ("arithmetic_vjp", "s", "binary", 1.0),
             ("tanh_forward", "s", "unary", 1.0), (entry, "t", entry, 5.0)]
    shares = workers._balanced(units, 2)
    assert len(shares) == 2
    names = [{t if isinstance(t, str) else "entry" for t, _ in s} for s in shares]
    assert "entry" in names[0]
    # each group lies in one share
    for group in ({"linear_act_forward", "linear_act_vjp"},
                  {"arithmetic_forward", "arithmetic_vjp"}):
        assert any(group <= n for n in names)
    # longest-processing-time: 6 (matmul) | 5 (entry), + 2 (binary) on the lighter: 6 | 7,
    # + 1 (unary) on the lighter: 7 | 7
    assert names[0] == {"entry", "arithmetic_forward", "arithmetic_vjp"}
    assert names[1] == {"linear_act_forward", "linear_act_vjp", "tanh_forward"}
    (whole,) = workers._balanced(units, 1)
    assert sorted(id(t) for t, _ in whole) == sorted(id(t) for t, _, _, _ in units)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers fork: Linux only")
def test_a_fork_that_fails_leaves_the_work_to_this_process(tmp_path):
    setup = """
        def refused(share):
            raise OSError(12, "Cannot allocate memory")
        workers._fork = refused
    """
    cold, _ = run_fresh(tmp_path, "2", setup)
    assert cold["grads"] == [4.0, 4.0, -1.0]
    assert ROW_KERNELS | {"replay_forward", "replay_backward"} <= set(cold["compiled"])


def test_a_familys_forward_and_vjp_kernels_and_the_loops_that_call_them_are_one_group():
    """Kernels that link the same helpers compile in one process (the helpers once): an op
    family's forward and VJP kernels, and the single-cell scan loops with the matmul family,
    whose fused-layer helpers they call; each other scan strategy is its own group."""
    from fastgrad.kernels.call import SCAN_BINOMIAL, SCAN_CELL, SCAN_STEPS
    from fastgrad.ops import Op

    family = dispatch._family
    assert family(Op.ADD) == family(Op.SUB) == family(Op.MAXIMUM) != family(Op.TANH)
    assert family(SCAN_CELL) == family(Op.LINEAR_ACT) == family(Op.MATMUL)
    assert len({family(Op.SCAN), family(SCAN_STEPS), family(SCAN_BINOMIAL),
                family(Op.LINEAR_ACT), family(Op.ADD), family(Op.TANH)}) == 6
