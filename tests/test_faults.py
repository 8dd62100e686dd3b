"""Defined behaviour at the edges: out-of-range indices, empty tensors and zero-size axes,
NaN/Inf inputs, shapes too large for memory, anomaly detection, an unusable kernel cache
directory, and threads recording at once.

Each test states the behaviour it pins; docs/robustness.md lists them with the fuzzing results.
"""

import importlib
import os
import re
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import scipy.special

import fastgrad as fg
from fastgrad import FastgradError
from fastgrad.ops import BINARY, TABLE, UNARY
from fastgrad.reference import Reference
from fastgrad.tape import Tape
from fastgrad.tensor import apply, placeholder

from fastgrad import memory  # the memory guard (fg.set_memory_limit)


def raises(match):
    return pytest.raises(FastgradError, match=match)


@pytest.fixture
def memory_limit():
    """Set fg.set_memory_limit for one test; restore the previous limit after."""
    old = memory.memory_limit()
    yield fg.set_memory_limit
    fg.set_memory_limit(old)


# ----------------------------------------------------------------------------- indices
def test_out_of_range_indices_are_refused_at_record_time_naming_op_range_and_shapes():
    x = fg.tensor(np.arange(12.0).reshape(3, 4), requires_grad=True)
    with raises(r"gather: index 3 is out of range \[-3, 3\) for operand shapes \(3, 4\), "
                r"\(2,\)\. Fix: check"):
        fg.take(x, np.array([0, 3]))
    with raises(r"gather: index -5 is out of range \[-4, 4\)"):
        fg.take(x, np.array([-5]), axis=1)
    with raises(r"cross_entropy: index -1 is out of range \[0, 4\)"):
        fg.cross_entropy(x, np.array([0, -1, 2]))
    with raises(r"getitem: index -4 is out of bounds for axis 0 with size 3"):
        x[-4]
    with raises("gather: operand 1 must hold integers"):
        fg.take(x, np.array([0.0, 1.0]))


def test_unsigned_indices_do_not_wrap_around_to_negative_ones():
    """2**64 - 1 as uint64 would be -1 as int64: a valid index (the last row) if cast first."""
    x = fg.tensor(np.arange(6.0).reshape(3, 2))
    with raises(r"gather: index 18446744073709551615 is out of range \[-3, 3\)"):
        fg.take(x, np.array([2**64 - 1], np.uint64))
    assert fg.take(x, np.array([2], np.uint64)).numpy().tolist() == [[4.0, 5.0]]


def test_negative_indices_count_from_the_end_as_in_numpy():
    a = np.arange(12.0).reshape(3, 4)
    x = fg.tensor(a, requires_grad=True)
    idx = np.array([-1, 0, -3, -1])
    y = fg.take(x, idx, axis=0)
    np.testing.assert_array_equal(y.numpy(), np.take(a, idx, axis=0))
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [[2.0] * 4, [0.0] * 4, [2.0] * 4])


def test_out_of_range_labels_of_a_compiled_step_are_refused_before_the_kernel_runs():
    w = fg.nn.Parameter(np.zeros((3, 4)))  # 3 inputs, 4 classes
    step = fg.compile(lambda x, y: fg.cross_entropy(x @ w, y))
    x = np.ones((2, 3))
    assert np.isfinite(step(x, np.array([0, 3]))[0])
    with raises(r"compile: input 1 holds indices outside \[0, 4\)"):
        step(x, np.array([0, 4]))
    with raises(r"compile: input 1 holds indices outside \[0, 4\)"):
        step(x, np.array([-1, 0]))


# ----------------------------------------------------------------------------- empty tensors
EMPTY_CASES = {
    # name: (fastgrad function, NumPy function, input shapes)
    "unary on (0,)": (lambda x: fg.tanh(x), np.tanh, [(0,)]),
    "unary on (2, 0)": (lambda x: fg.exp(x) * 2, lambda x: np.exp(x) * 2, [(2, 0)]),
    "broadcast (0, 3) + (3,)": (lambda a, b: a + b, np.add, [(0, 3), (3,)]),
    "broadcast (0, 1) * (1, 4)": (lambda a, b: a * b, np.multiply, [(0, 1), (1, 4)]),
    "sum of (0,)": (lambda x: x.sum(), np.sum, [(0,)]),
    "sum over an empty axis": (lambda x: x.sum(axis=1), lambda x: x.sum(axis=1), [(2, 0)]),
    "sum along a non-empty axis of (2, 0)": (lambda x: x.sum(axis=0),
                                            lambda x: x.sum(axis=0), [(2, 0)]),
    "max along the non-empty axis of (0, 3)": (lambda x: x.amax(axis=1),
                                              lambda x: x.max(axis=1), [(0, 3)]),
    "softmax over an empty axis": (lambda x: x.softmax(axis=-1), lambda x: x, [(2, 0)]),
    "softmax of (0, 3) rows": (lambda x: x.softmax(), lambda x: x, [(0, 3)]),
    "matmul with k = 0 is zeros": (lambda a, b: a @ b, np.matmul, [(2, 0), (0, 3)]),
    "matmul with m = 0": (lambda a, b: a @ b, np.matmul, [(0, 4), (4, 3)]),
    "reshape (0, 3) -> (3, 0)": (lambda x: x.reshape(3, 0), lambda x: x.reshape(3, 0), [(0, 3)]),
    "transpose of (0, 3)": (lambda x: x.T, lambda x: x.T, [(0, 3)]),
    "slice to nothing": (lambda x: x[2:1], lambda x: x[2:1], [(4, 2)]),
    "gather with no indices": (lambda x: fg.take(x, np.zeros(0, np.int64)),
                               lambda x: np.take(x, np.zeros(0, np.int64), axis=0), [(3, 2)]),
    "gather nothing from an empty axis": (lambda x: fg.take(x, np.zeros(0, np.int64), axis=1),
                                          lambda x: np.take(x, np.zeros(0, np.int64), axis=1),
                                          [(3, 0)]),
    "concat with an empty piece": (lambda a, b: fg.concatenate([a, b], axis=1),
                                   lambda a, b: np.concatenate([a, b], axis=1),
                                   [(2, 0), (2, 3)]),
    "cross-entropy of no rows": (lambda x: fg.cross_entropy(x, np.zeros(0, np.int64), "none"),
                                 lambda x: np.zeros(0), [(0, 3)]),
    "where on empty": (lambda a, b: fg.where(a > 0, a, b), lambda a, b: np.where(a > 0, a, b),
                       [(0, 2), (0, 2)]),
}


@pytest.mark.parametrize("name", list(EMPTY_CASES))
def test_empty_tensors_and_zero_size_axes_follow_numpy_forward_and_backward(name):
    """Empty results have NumPy's shape and values; backward gives gradients of the inputs'
    shapes (zeros where nothing flowed)."""
    fn, np_fn, shapes = EMPTY_CASES[name]
    arrays = [np.random.default_rng(0).standard_normal(s) for s in shapes]
    ts = [fg.tensor(a, requires_grad=True) for a in arrays]
    y = fn(*ts)
    want = np_fn(*arrays)
    assert y.shape == np.shape(want)
    np.testing.assert_allclose(y.numpy(), want, atol=1e-12)
    y.backward(np.ones(y.shape))
    for t, a in zip(ts, arrays):
        assert t.grad is not None and t.grad.shape == a.shape
    if y.size == 0:
        for t in ts:
            assert not t.grad.any()


def test_empty_reductions_without_an_identity_are_refused_as_in_numpy():
    with raises(r"max: cannot take the max over an empty axis of shape \(0,\)"):
        fg.tensor(np.zeros(0)).max()
    with raises(r"max: cannot take the max over an empty axis of shape \(2, 0\)"):
        fg.tensor(np.zeros((2, 0))).max(axis=1)
    with raises(r"cross_entropy: logits have zero classes"):
        fg.cross_entropy(fg.tensor(np.zeros((2, 0))), np.zeros(2, np.int64))
    with raises(r"gather: index 0 is out of range \[0, 0\)"):
        fg.take(fg.tensor(np.zeros((3, 0))), np.array([0]), axis=1)


def test_mean_of_an_empty_tensor_is_nan_as_in_numpy():
    assert np.isnan(fg.tensor(np.zeros(0)).mean().item())
    with pytest.warns(RuntimeWarning):
        assert np.isnan(np.zeros(0).mean())


def test_every_op_with_a_zero_size_operand_records_or_refuses_by_name():
    """Table-wide: each op's first sample with one axis of its first operand set to 0 either
    matches the reference interpreter or raises FastgradError naming the op."""
    seen = 0
    for op, d in TABLE.items():
        for shapes, attrs, domain in [s for s in d.samples if s[0][0]][:1]:
            shapes = [tuple(s) for s in shapes]
            shapes[0] = (0,) + shapes[0][1:]
            tape = Tape(np.float64)
            args = []
            for pos, s in enumerate(shapes):
                if pos in d.int_inputs:
                    args.append(np.zeros(s, np.int64))
                else:
                    args.append(placeholder(tape, np.ones(s)))
            try:
                y = apply(op, *args, **attrs)
            except FastgradError as e:
                assert str(e).startswith(d.name + ":"), e
                continue
            seen += 1
            if y.size == 0:  # nothing to compare (the reference's max-shift cannot run on it)
                assert y.numpy().shape == y.shape
                continue
            ref = Reference(tape)
            ref.forward()
            np.testing.assert_array_equal(y.numpy(), ref.node(y.node), err_msg=d.name)
    assert seen >= 10


# ----------------------------------------------------------------------------- NaN / Inf
SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 2.5])


def _same_specials(got, want, rtol):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert np.array_equal(np.isnan(got), np.isnan(want)), (got, want)
    inf = np.isinf(want)
    assert np.array_equal(got[inf], want[inf]) and not np.isinf(got[~inf]).any(), (got, want)
    fin = np.isfinite(want)
    np.testing.assert_allclose(got[fin], want[fin], rtol=rtol, atol=rtol)


ELEMENTWISE = [d.op for d in TABLE.values() if d.op // 100 in (UNARY, BINARY)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("op", ELEMENTWISE, ids=lambda o: o.name.lower())
def test_nan_and_inf_inputs_propagate_through_every_elementwise_op_as_in_numpy(op, dtype):
    """IEEE semantics, as the op table's NumPy reference: which outputs are NaN and which are
    +-inf is the same for every pair of special values."""
    d = TABLE[op]
    x = SPECIAL.astype(dtype)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    with np.errstate(all="ignore"):
        if op // 100 == UNARY:
            attrs = dict(d.samples[0][1])
            got = apply(op, fg.tensor(x), **attrs).numpy()
            want = d.np_forward(x, dtype(attrs.get("c0", 0.0)), dtype(attrs.get("c1", 0.0)))
        else:
            a, b = np.meshgrid(x, x)
            got = apply(op, fg.tensor(a), fg.tensor(b)).numpy()
            want = d.np_forward(a, b)
    _same_specials(got, want, rtol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_nan_and_inf_in_reductions_are_defined(dtype):
    """sum and max propagate NaN and infinities as NumPy; softmax, log-softmax and
    cross-entropy over a row holding +inf or NaN give NaN for that row (the reference
    interpreter's definition: max-shifted log-sum-exp gives inf - inf), and only that row."""
    rows = np.array([[np.nan, 1, 2], [np.inf, 1, 2], [-np.inf, 1, 2], [0.5, 1, 2]], dtype)
    t = fg.tensor(rows)
    _same_specials(t.sum(axis=1).numpy(), rows.sum(axis=1), 1e-6)
    _same_specials(t.amax(axis=1).numpy(), rows.max(axis=1), 0)
    with np.errstate(all="ignore"):
        sm, lsm = t.softmax().numpy(), t.log_softmax().numpy()
        ce = fg.cross_entropy(t, np.array([1, 1, 1, 1]), "none").numpy()
    assert np.isnan(sm[:2]).all() and np.isnan(lsm[:2]).all() and np.isnan(ce[:2]).all()
    np.testing.assert_allclose(sm[2], [0, *scipy.special.softmax([1.0, 2.0])], rtol=1e-6)
    assert lsm[2, 0] == -np.inf and ce[2] == pytest.approx(np.log1p(np.e), rel=1e-6)
    np.testing.assert_allclose(sm[3], scipy.special.softmax(rows[3].astype(np.float64)),
                               rtol=1e-6)


def test_nan_gradients_flow_back_only_where_they_come_from():
    x = fg.tensor([4.0, -1.0, 9.0], requires_grad=True)
    with np.errstate(all="ignore"):
        fg.sqrt(x).sum().backward()
    assert x.grad[0] == 0.25 and np.isnan(x.grad[1]) and x.grad[2] == pytest.approx(1 / 6)


# ----------------------------------------------------------------------------- huge shapes
def test_a_result_larger_than_memory_is_refused_before_allocation():
    """Without any user limit: the machine's available memory is the limit."""
    one = fg.tensor(1.0)
    with raises(r"strided: needs \d+.\d+ GiB of buffers but only .* GiB are available\. "
                r"Fix: a result of shape \(1073741824, 1073741824\) does not fit"):
        fg.broadcast_to(one, (2**30, 2**30))
    with raises(r"add: needs \d+.\d+ GiB"):
        fg.tensor(np.ones((2**20, 1))) + fg.tensor(np.ones((1, 2**20)))
    with raises(r"matmul: needs .* GiB.*broadcast to 1099511627776 products"):
        fg.tensor(np.ones((2**20, 1, 1, 1))) @ fg.tensor(np.ones((1, 2**20, 1, 1)))
    with raises(r"zeros: needs .* GiB.*shape \(1099511627776, 1024\)"):
        fg.zeros(2**40, 1024)


def test_the_memory_limit_applies_to_recording_and_backward(memory_limit):
    x = fg.tensor(np.ones(1000), requires_grad=True)
    y = (x * 2).sum()  # 16 kB of values
    memory_limit(4096)
    with raises(r"mul_scalar: needs 0.00 GiB of buffers but only 0.00 GiB are allowed"):
        x * 3
    with raises(r"backward: needs .* GiB .* allowed. Fix: the gradient buffer"):
        y.backward()
    memory_limit(None)
    y.backward()
    assert x.grad.tolist() == [2.0] * 1000


def test_compiled_programs_are_checked_before_their_buffers_are_allocated(memory_limit):
    """The guard covers fg.compile: a program whose gradient buffers do not fit is a clear
    error naming the size and suggesting a smaller batch, before any allocation."""
    w = fg.nn.Parameter(np.ones((64, 32)))

    def loss(x):
        return ((x @ w) ** 2).mean()

    x = np.ones((256, 64))
    probe = fg.compile(loss)
    prog, _ = probe.program(x)
    copy = sum(getattr(g, "a", np.zeros(0)).nbytes for g in vars(prog.tape).values())
    program = copy + prog.ints.nbytes + prog.bytes.nbytes + prog.floats.nbytes
    memory_limit(program - 1)  # the trace fits, the program's buffers together do not
    with raises(r"compile: needs .* GiB of buffers but only .* GiB are allowed\. Fix: the "
                r"program traced for inputs \['\(256, 64\)'\] .* smaller batch"):
        fg.compile(loss)(x)
    memory_limit(None)
    assert np.isfinite(fg.compile(loss)(x)[0])


# ----------------------------------------------------------------------------- anomaly mode
def test_anomaly_forward_reports_the_first_op_its_row_and_its_inputs_statistics():
    x = fg.tensor([1.0, 0.0, 4.0], requires_grad=True)
    with fg.detect_anomaly():
        z = fg.log(x * 1.0)  # row 0: mul (finite), row 1: log -> -inf (the first bad op)
        w = z * 0.0  # row 2 would give nan too, but must not be the one reported
        with pytest.raises(fg.AnomalyError) as err:
            w.sum().item()
    msg = str(err.value)
    assert msg.startswith("forward: row 1 (log) produced -inf in %2 (3,)")
    assert "input %1: shape (3,), min 0 max 4, nan 0, inf 0" in msg


def test_anomaly_backward_reports_the_op_its_row_and_input_and_gradient_statistics():
    x = fg.tensor([4.0, 0.0], requires_grad=True)
    with fg.detect_anomaly():
        y = fg.sqrt(x).sum()  # forward finite (sqrt 0 = 0), backward 0.5 / 0 = inf
        y.item()
        with pytest.raises(fg.AnomalyError) as err:
            y.backward()
    msg = str(err.value)
    assert msg.startswith("backward: row 0 (sqrt) produced a NaN/Inf gradient")
    assert "input %0: shape (2,), min 0 max 4, nan 0, inf 0" in msg
    assert "grad of %0: shape (2,), min 0.25 max 0.25, nan 0, inf 1" in msg
    assert "incoming grad of %1" in msg


def test_anomaly_mode_also_checks_compiled_steps():
    w = fg.nn.Parameter(np.array([1.0, -1.0]))
    step = fg.compile(lambda x: fg.log(x * w).sum())
    assert np.isnan(step(np.array([1.0, 1.0]))[0])  # off: the NaN is returned
    with fg.detect_anomaly(), pytest.raises(fg.AnomalyError, match=r"forward: row \d+ \(log\)"):
        step(np.array([1.0, 1.0]))


def test_an_anomaly_at_a_row_reading_the_compiled_input_reports_that_input():
    # the compiled step reads its input in place from the caller's array: the report still
    # shows the values the failing row read
    w = fg.nn.Parameter(np.array([1.0, 2.0]))
    step = fg.compile(lambda x: (fg.log(x) * w).sum())
    with fg.detect_anomaly(), pytest.raises(fg.AnomalyError) as err:
        step(np.array([3.0, -0.5]))
    assert re.search(r"forward: row \d+ \(log\)", str(err.value))
    assert "shape (2,), min -0.5 max 3, nan 0, inf 0" in str(err.value)


def test_anomaly_mode_is_off_by_default_and_then_the_kernels_skip_the_check(monkeypatch):
    """'Free when off': the replay kernels are called with check=False, so they never look at
    the values (one branch per row); nothing is raised for NaN results."""
    flags = []
    tape = importlib.import_module("fastgrad.runtime.tape")  # where eager replays call them
    fwd, bwd = tape.replay_forward, tape.replay_backward
    monkeypatch.setattr(tape, "replay_forward", lambda *a: flags.append(a[-1]) or fwd(*a))
    # replay_backward(..., check, value_alpha): its check is the second last argument
    monkeypatch.setattr(tape, "replay_backward", lambda *a: flags.append(a[-2]) or bwd(*a))
    x = fg.tensor([1.0, -1.0], requires_grad=True)
    with np.errstate(all="ignore"):
        y = fg.sqrt(x).sum()
        assert np.isnan(y.item())
        y.backward()
    assert flags == [False, False] and all(f is False for f in flags)
    with fg.detect_anomaly(), pytest.raises(fg.AnomalyError):
        fg.sqrt(x).sum().item()
    assert flags[-1] is True


# ----------------------------------------------------------------------------- cache directory
def _unusable_dir(tmp_path):
    """A read-only directory; for root (who may write anyway) a path below a regular file."""
    ro = tmp_path / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        (ro / "probe").write_text("")
    except OSError:
        return ro
    (ro / "probe").unlink()
    ro.chmod(0o755)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    return blocker / "cache"


def test_cache_directory_choice_falls_back_cleanly(tmp_path, monkeypatch):
    jit = importlib.import_module("fastgrad.kernels._jit")
    bad = _unusable_dir(tmp_path)
    for var in ("FASTGRAD_CACHE_DIR", "NUMBA_CACHE_DIR", "XDG_CACHE_HOME",
                "FASTGRAD_DISABLE_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FASTGRAD_CACHE_DIR", str(tmp_path / "missing" / "nested"))
    where, enabled = jit._choose_cache_dir()  # a missing directory is created
    assert enabled and where.parent == tmp_path / "missing" / "nested" and where.is_dir()
    monkeypatch.setenv("FASTGRAD_CACHE_DIR", str(bad))
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
    where, enabled = jit._choose_cache_dir()  # an unusable one is skipped
    assert enabled and where.parent == tmp_path / "numba"
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(bad))
    monkeypatch.setenv("XDG_CACHE_HOME", str(bad))
    monkeypatch.setattr("tempfile.tempdir", str(bad))
    assert jit._choose_cache_dir() == (None, False)  # nowhere writable: compile in memory


def test_an_unusable_cache_directory_falls_back_in_a_fresh_process(tmp_path):
    """FASTGRAD_CACHE_DIR read-only: a fresh interpreter imports fastgrad and runs a backward
    without a traceback or a warning, caching in the next candidate (NUMBA_CACHE_DIR). The
    candidate links to this session's cache so nothing is compiled again (a session without
    a cache leaves it empty: the child then compiles into it)."""
    jit = importlib.import_module("fastgrad.kernels._jit")
    fallback = tmp_path / "numba"
    fallback.mkdir()
    if jit.CACHE_ENABLED:
        (fallback / ("fastgrad-" + jit.CACHE_DIR.name)).symlink_to(jit.CACHE_DIR)
    env = {k: v for k, v in os.environ.items() if k != "FASTGRAD_DISABLE_CACHE"}
    env.update(FASTGRAD_CACHE_DIR=str(_unusable_dir(tmp_path)), NUMBA_CACHE_DIR=str(fallback))
    code = textwrap.dedent("""
        import fastgrad as fg, numpy as np
        from fastgrad.kernels import _jit
        x = fg.tensor(np.array([1.0, 2.0]), requires_grad=True)
        (x * x).sum().backward()
        print(x.grad.tolist(), _jit.CACHE_ENABLED, _jit.CACHE_DIR.parent.name)
    """)
    run = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code], env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["[2.0,", "4.0]", "True", "numba"]
    assert "Traceback" not in run.stderr and "Warning" not in run.stderr


# ----------------------------------------------------------------------------- threads
def test_threads_record_on_their_own_tapes_and_modes_stay_per_thread():
    """Two threads record at once, interleaved step by step: each result uses its own tape,
    and no_grad / detect_anomaly entered in one thread do not leak into the other."""
    barrier = threading.Barrier(2)
    out = {}

    def worker(k):
        x = fg.tensor(np.full(8, float(k)), requires_grad=True)
        ctx = fg.no_grad() if k == 1 else fg.detect_anomaly()
        with ctx:
            barrier.wait()
            y = x * x
            barrier.wait()
            z = (y * k).sum()
            barrier.wait()
            out[k] = (z, fg.is_grad_enabled(), importlib.import_module(
                "fastgrad.anomaly").anomaly_enabled())
        if k == 2:
            z.backward()
            out["grad"] = x.grad.copy()

    threads = [threading.Thread(target=worker, args=(k,)) for k in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (z1, grad1, anom1), (z2, grad2, anom2) = out[1], out[2]
    assert (grad1, anom1) == (False, False) and (grad2, anom2) == (True, True)
    assert not z1.requires_grad and z2.requires_grad
    assert z2.tape is not None and z1.tape is None  # no_grad folds to a constant
    assert z1.item() == 8.0 and z2.item() == 8 * 4 * 2
    np.testing.assert_array_equal(out["grad"], np.full(8, 2 * 2 * 2.0))
