"""Spec: kernels are compiled per op, on demand, and reached through the dispatch table.

The replay, step, fit and scan loops call each row's op kernel through its address
(kernels/call.py, kernels/dispatch.py): an op compiles when a tape first uses it, a slot never
filled refuses to run, a kernel of the wrong types cannot be called, two threads at first use
fill a slot once, and a second process loads the kernels from the cache.
"""

import json
import os
import subprocess
import sys
import threading
import textwrap

import numba
import numpy as np
import pytest
from numba.core.errors import TypingError

import fastgrad as fg
from fastgrad.kernels import call, dispatch
from fastgrad.ops import TABLE, Op


def run_fresh(code, cache):
    """Run ``code`` in a new process on the kernel cache ``cache``; return its last line as
    JSON."""
    env = dict(os.environ, FASTGRAD_CACHE_DIR=str(cache))
    env.pop("NUMBA_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


FIRST_EXAMPLE = """
    import json
    import fastgrad as fg
    from fastgrad import kernel_cache
    from fastgrad.kernels import dispatch
    from fastgrad.ops import Op

    x = fg.tensor(2.0, requires_grad=True)
    y = fg.tensor(-3.0, requires_grad=True)
    z = fg.tensor(4.0, requires_grad=True)
    f = (x + y) * z
    f.backward()
    table = dispatch.table("float64")
    # the compile report: this process's compilations and its compile workers' (workers.py)
    compiled = [c.kernel for c in kernel_cache.REPORTER.compiled if not c.failed]
    print(json.dumps({"grads": [float(x.grad), float(y.grad), float(z.grad)],
                      "ops": sorted(Op(c).name for c in table.kernels),
                      "compiled": compiled}))
"""


def test_a_tape_compiles_the_kernels_of_its_own_ops_only_and_a_second_process_loads_them(
        tmp_path):
    cold, log = run_fresh(FIRST_EXAMPLE, tmp_path)
    assert cold["grads"] == [4.0, 4.0, -1.0]
    assert cold["ops"] == ["ADD", "MUL"]  # not the other ops of the table
    # one pair of kernels runs the four arithmetic ops (dispatch.KERNEL_OF)
    assert {"arithmetic_forward", "arithmetic_vjp"} <= set(cold["compiled"])
    assert not any(name.startswith(("tanh", "matmul", "scan")) for name in cold["compiled"])
    assert "compiling kernels for float64" in log
    warm, log = run_fresh(FIRST_EXAMPLE, tmp_path)
    assert warm["grads"] == [4.0, 4.0, -1.0] and warm["ops"] == ["ADD", "MUL"]
    assert warm["compiled"] == [] and "compiling" not in log  # all from the cache


def test_every_op_with_rows_has_kernels_in_both_dtypes_but_scan_begin_and_reshape():
    assert set(dispatch.CODES) == {int(op) for op in TABLE} - {int(Op.SCAN_BEGIN), int(Op.RESHAPE)}
    x = fg.tensor(np.arange(6.0), requires_grad=True)  # a reshape aliases: nothing to run
    (x.reshape(2, 3) * np.arange(3.0)).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 2.0] * 2
    assert int(Op.RESHAPE) not in dispatch.table(np.float64).kernels
    for dtype in (np.float32, np.float64):
        table = dispatch.table(dtype)
        table.ensure([Op.TANH, Op.ADD])
        assert table.ready[[Op.TANH, Op.ADD]].all()
        fwd, vjp = table.kernels[int(Op.TANH)]
        assert table.addresses[Op.TANH] != table.addresses[call.SLOTS + Op.TANH] != 0
        assert fwd.py_func.__name__ == "tanh_forward" and vjp.py_func.__name__ == "tanh_vjp"
    assert dispatch.table(np.float32).addresses[Op.TANH] != dispatch.table(
        np.float64).addresses[Op.TANH]


def test_a_slot_never_filled_raises_instead_of_skipping_the_row():
    x = fg.tensor(np.array([0.5, -1.0]), requires_grad=True)
    y = x.tanh()
    table = dispatch.table(np.float64)
    saved = table.addresses[Op.TANH]
    table.addresses[Op.TANH] = 0  # as a slot never filled
    try:
        with pytest.raises(RuntimeError, match="the kernel of a row was not loaded"):
            y.numpy()
    finally:
        table.addresses[Op.TANH] = saved
    np.testing.assert_allclose(y.numpy(), np.tanh([0.5, -1.0]))


def test_a_row_call_takes_numbers_only_and_a_kernel_refuses_a_sweep_of_the_other_dtype():
    """A row kernel takes the address of its sweep's context (call.py): anything else does not
    compile, and a float32 kernel given a float64 sweep raises instead of misreading it."""
    @numba.njit
    def bad_call(addr, arrays):
        return call.call_forward(addr, arrays, 0, False)

    x = fg.tensor(np.ones(3), requires_grad=True)
    tape = (x * 2.0).tape
    arrays = tape.arrays()
    with pytest.raises(TypingError, match="the row kernels take numbers"):
        bad_call(arrays[12][Op.MUL_SCALAR], arrays)

    @numba.njit
    def run_row(addr, tape, values):
        ctx = call.context(tape, values, tape[9], values, values, values, tape[10], values, 0.0)
        return call.call_forward(addr, ctx, 0, False)

    table32 = dispatch.table(np.float32)
    table32.ensure([Op.MUL_SCALAR])
    with pytest.raises(RuntimeError, match="a sweep of another dtype"):
        run_row(table32.addresses[Op.MUL_SCALAR], arrays, tape.values.a)


def test_two_threads_using_a_new_op_at_once_fill_its_slot_once_and_both_get_its_result():
    table = dispatch.table(np.float32)
    code = int(Op.SOFTPLUS)
    results, errors = {}, []
    barrier = threading.Barrier(2)

    def use(i):
        try:
            barrier.wait()
            x = fg.tensor(np.linspace(-2, 2, 5, dtype=np.float32) + i, requires_grad=True)
            x.softplus().sum().backward()
            results[i] = x.grad.copy()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=use, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    kernels = table.kernels[code]
    table.ensure([code])
    assert table.kernels[code] is kernels  # filled once
    for i in range(2):
        x = np.linspace(-2, 2, 5).astype(np.float32) + i
        np.testing.assert_allclose(results[i], 1 / (1 + np.exp(-x)), rtol=1e-6)


def test_an_unknown_code_is_an_internal_error_not_a_silent_slot():
    with pytest.raises(ValueError, match="no op has code 99"):
        dispatch.table(np.float64).ensure([99])


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 8, 16])
def test_a_sweep_context_outlives_every_row_even_rows_that_allocate(rows):
    """Cross-entropy allocates inside its kernel; the rows after it in the same sweep must still
    find the context (a loop that kept only its address once read memory reused by that
    allocation, and segfaulted at 4 rows)."""
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, 10))
    labels = np.arange(rows) % 10
    logits = fg.tensor(x.astype(np.float32), requires_grad=True)
    loss = fg.nn.functional.cross_entropy(logits * 1.0, labels).tanh()
    shifted = x - x.max(axis=1, keepdims=True)
    per_row = np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(rows), labels]
    np.testing.assert_allclose(float(loss), np.tanh(per_row.mean()), rtol=1e-5)
    loss.backward()
    assert np.isfinite(logits.grad).all()


def _scan_program(kind):
    """An eager tape with one scan, and its loss: a fused single cell (fg.nn.RNN), a cell of
    plain ops, or the fused cell under binomial checkpoints."""
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((12, 2, 3))
    if kind == "plain":
        w = fg.tensor(rng.standard_normal((4, 4)) * 0.3, requires_grad=True)
        u = fg.tensor(rng.standard_normal((3, 4)) * 0.3, requires_grad=True)

        h = fg.scan(lambda h, x: (h @ w + x @ u).tanh(), fg.tensor(np.zeros((2, 4))),
                    fg.tensor(xs))
        return h.sum()
    rnn = fg.nn.RNN(3, 4, seed=0, checkpoint=fg.Binomial(slots=3) if kind == "binomial" else None)
    _, h = rnn(fg.tensor(xs))
    return h.sum()


@pytest.mark.parametrize("kind, expected", [
    ("cell", {call.SCAN_CELL}), ("plain", {call.SCAN_STEPS}),
    ("binomial", {call.SCAN_BINOMIAL})])
def test_a_scan_compiles_only_the_strategy_it_runs_and_runs_with_only_that_one(kind, expected):
    loss = _scan_program(kind)
    tape = loss.tape
    arrays = tape.arrays(dispatch_rows=False)
    strategies = {call.SCAN_CELL, call.SCAN_STEPS, call.SCAN_BINOMIAL}
    exact = dispatch.codes_used(tape.ops.a, tape.ip_ptr.a, tape.iparams.a, 0, tape.n_rows,
                                arrays, tape.node_need.view) & strategies
    assert exact == expected
    unknown = dispatch.codes_used(tape.ops.a, tape.ip_ptr.a, tape.iparams.a, 0, tape.n_rows)
    assert expected <= unknown & strategies  # without the tape's needs: every possible one
    # the prediction is enough: with every other strategy's slots empty, both sweeps run
    table = dispatch.table(tape.dtype)
    table.ensure(strategies)
    others = [s for s in strategies - expected for s in (s, call.SLOTS + s)]
    saved = table.addresses[others].copy()
    table.addresses[others] = 0
    try:
        loss.backward()
    finally:
        table.addresses[others] = saved
    assert np.isfinite(loss.item())


def test_the_arithmetic_ops_run_on_one_pair_of_kernels_each_row_by_its_own_op():
    """ADD's kernels run SUB, MUL and DIV rows too, branching on the row's op
    (dispatch.KERNEL_OF): one tape mixing all four, broadcasting, gets each op's values and
    gradients."""
    rng = np.random.default_rng(1)
    a = fg.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    b = fg.tensor(rng.uniform(1.0, 2.0, 4), requires_grad=True)
    y = ((a + b) * b - a) / b
    y.sum().backward()
    table = dispatch.table(np.float64)
    ops = [Op.ADD, Op.SUB, Op.MUL, Op.DIV]
    assert all(table.kernels[int(op)] is table.kernels[int(Op.ADD)] for op in ops)
    A, B = a.numpy(), b.numpy()
    np.testing.assert_allclose(y.numpy(), ((A + B) * B - A) / B, rtol=1e-15)
    np.testing.assert_allclose(a.grad, np.broadcast_to(1.0 - 1.0 / B, A.shape), rtol=1e-14)
    np.testing.assert_allclose(b.grad, (1.0 + A / B**2).sum(axis=0), rtol=1e-14)


def test_a_linear_row_runs_on_the_linear_act_kernels_compiled_once_for_both():
    """A LINEAR row is a LINEAR_ACT row without the activation: one pair of kernels, filled
    into both slots, computes both (dispatch.KERNEL_OF)."""
    rng = np.random.default_rng(0)
    x = fg.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    w = fg.tensor(rng.standard_normal((5, 4)), requires_grad=True)
    b = fg.tensor(rng.standard_normal(5), requires_grad=True)
    fg.nn.functional.linear(x, w, b).sum().backward()
    table = dispatch.table(np.float64)
    assert table.ready[[Op.LINEAR, Op.LINEAR_ACT]].all()
    assert table.kernels[int(Op.LINEAR)] is table.kernels[int(Op.LINEAR_ACT)]
    assert table.addresses[Op.LINEAR] == table.addresses[Op.LINEAR_ACT] != 0
    np.testing.assert_allclose(w.grad, np.ones((5, 3)) @ x.numpy())
    np.testing.assert_allclose(b.grad, np.full(5, 3.0))
    np.testing.assert_allclose(x.grad, np.ones((3, 5)) @ w.numpy())


def test_a_kernel_that_only_kernels_call_refuses_a_call_from_python_rather_than_crash():
    """Helpers and row kernels are compiled without Numba's Python wrapper (kernels/_jit.py):
    called from Python, Numba would jump through the wrapper that is not there. It raises,
    naming the kernel; its Python function stays callable, and entries keep their wrapper."""
    from fastgrad.kernels import scan

    with pytest.raises(TypeError, match="_x_offset is called from Python"):
        scan._x_offset((), np.zeros(3, np.int64))
    assert scan.binomial_advance(10, 3) == scan.binomial_advance.py_func(10, 3)  # an entry


def test_a_kernel_and_an_entry_over_one_function_never_share_a_cache_entry(tmp_path):
    """Numba's cache key does not say whether a function was compiled with its Python wrapper:
    fastgrad's does, so an entry never loads a kernel's wrapperless code from the cache (a
    Python call would jump through the missing wrapper: a crash)."""
    module = tmp_path / "twin.py"
    module.write_text(textwrap.dedent("""
        import json, sys
        from fastgrad.kernels._jit import jit, jit_entry

        def add_one(x):
            return x + 1.0

        kernel, entry = jit(add_one), jit_entry(add_one)

        @jit_entry
        def caller(x):
            return kernel(x)

        print(json.dumps(caller(1.0) if sys.argv[1] == "kernel" else entry(1.0)))
    """))
    env = dict(os.environ, FASTGRAD_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(tmp_path))
    env.pop("NUMBA_CACHE_DIR", None)
    for which in ("kernel", "entry"):  # the kernel's code is cached first
        out = subprocess.run([sys.executable, str(module), which], env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0 and json.loads(out.stdout) == 2.0, out.stderr


def test_a_kernel_called_with_a_constant_and_with_a_variable_compiles_once():
    """Calls between kernels are typed by their arguments' plain types: a literal 0 or True
    does not compile a second copy of the callee (_jit._one_specialisation_per_type)."""
    from fastgrad.kernels._jit import jit, jit_entry

    def scale(a, k, flag):
        return a * k if flag else a

    callee = jit(scale)

    def twice(a, k, flag):
        return callee(a, 0, True) + callee(a, k, flag)

    caller = jit_entry(twice)  # Python calls it
    assert caller(2.0, 3, False) == 2.0
    assert len(callee.signatures) == 1


LINKED_HELPERS = """
    import json
    import numpy as np
    import fastgrad as fg
    from fastgrad.kernels import linalg
    from fastgrad.reference import Reference

    def machine_code(dispatcher):
        (cres,) = dispatcher.overloads.values()
        return {"has": cres.library._has_machine_code,
                "cached": cres.library._loaded_link_only}

    rng = np.random.default_rng(3)
    w = fg.tensor(rng.standard_normal((4, 4)) * 0.5, requires_grad=True)
    xs = fg.tensor(rng.standard_normal((6, 2, 4)), requires_grad=True)
    h0 = fg.tensor(rng.standard_normal((2, 4)) * 0.3, requires_grad=True)
    if STAGE == "layer":  # a fused layer: the LINEAR_ACT row kernels and their helpers
        loss = (fg.nn.functional.linear(xs[0], w, h0[0]).tanh() ** 2).sum()
    else:  # the single-cell scan loops, which link the same helpers
        hs, h = fg.scan(lambda h, x: (h @ w.T + x).tanh(), h0, xs, checkpoint=3,
                        stack=True, fuse=True)
        loss = (hs * hs).sum() + (h * h).sum()
    loss.backward()
    ref = Reference(loss.tape)
    ref.forward()
    grads = ref.backward(loss.node, np.ones(()))
    error = 0.0
    for leaf in (w, xs, h0):
        for t, v in loss.tape.tensors.leaves:
            if t is leaf:
                error = max(error, float(np.abs(ref.node(v, grads) - leaf.grad).max()))
    table = fg.kernels.dispatch.table(np.float64)
    (row_kernel, _) = table.kernels[int(fg.ops.Op.LINEAR_ACT)]
    report = {"error": error, "helper": machine_code(linalg.linear_act_vjp),
              "row_kernel": machine_code(row_kernel)}
    # asked for its address (nothing in fastgrad does), a helper emits its code then
    (cres,) = linalg.linear_act_vjp.overloads.values()
    report["address"] = cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name) != 0
    print(json.dumps(report))
"""


def test_a_helper_gets_no_machine_code_and_a_later_process_links_it_from_the_cache(tmp_path):
    """A helper only kernels call is linked into each caller and never runs on its own: its
    library gets no machine code (kernels/_codegen.py); a row kernel's does. Cached as linkable
    IR alone, the helper loads in a second process and links into the new kernels compiled
    there (the single-cell scan loops), whose gradients are the NumPy reference's."""
    env = dict(os.environ, FASTGRAD_CACHE_DIR=str(tmp_path), FASTGRAD_COMPILE_WORKERS="1")
    env.pop("NUMBA_CACHE_DIR", None)
    results = []
    for stage in ("layer", "scan"):
        code = f"STAGE = {stage!r}\n" + textwrap.dedent(LINKED_HELPERS)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    layer, scan = results
    assert layer["error"] < 1e-12 and scan["error"] < 1e-12
    # the first process compiled the helper without machine code and the row kernel with it
    assert layer["helper"] == {"has": False, "cached": False}
    assert layer["row_kernel"]["has"]
    # the second loaded both from the cache: the helper as linkable IR, linked into the loops
    assert scan["helper"] == {"has": False, "cached": True}
    assert scan["row_kernel"]["has"]
    assert layer["address"] and scan["address"]


def test_a_helper_that_prints_or_raises_a_runtime_value_runs_as_in_numba(tmp_path):
    """A helper without machine code of its own still gets its environment (which Numba's
    ``print`` and a raise with runtime values read) in the code of the kernel that links it,
    and Numba code beside fastgrad's compiles as it would without it (_codegen.py)."""
    module = tmp_path / "noisy.py"
    module.write_text(textwrap.dedent("""
        import numba
        from fastgrad.kernels._jit import jit, jit_entry

        def check(x):
            print("checking", x)
            if x < 0.0:
                raise ValueError("negative:", x)
            return x + 1.0

        helper = jit(check)

        @jit_entry
        def caller(x):
            return helper(x)

        @numba.njit
        def theirs(x):
            return x * 2.0

        print(caller(1.5), theirs(2.0))
        try:
            caller(-2.0)
        except ValueError as exc:
            print("raised", exc.args)
    """))
    env = dict(os.environ, FASTGRAD_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(tmp_path))
    env.pop("NUMBA_CACHE_DIR", None)
    for _ in range(2):  # compiled, then loaded from the cache
        out = subprocess.run([sys.executable, str(module)], env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split("\n")[:4] == ["checking 1.5", "2.5 4.0", "checking -2.0",
                                              "raised ('negative:', -2.0)"], out.stdout
