"""Every public call either works or raises FastgradError naming the argument and the fix, and
every allocation that scales with user input passes the one memory guard, counted as allocated.

Issue 22, items 17 (memory guard gaps) and 18 (raw exceptions from public calls). The memory
tests measure real peaks with tracemalloc (NumPy reports its buffers to it), never RSS or time.
"""

import copy
import importlib
import pickle
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastgrad as fg
from fastgrad import FastgradError

from fastgrad import memory  # the memory guard (fg.set_memory_limit)
nn_module = importlib.import_module("fastgrad.nn")
MiB = 1 << 20


@pytest.fixture
def memory_limit():
    """Set fg.set_memory_limit for one test; restore the previous limit after."""
    old = memory.memory_limit()
    yield fg.set_memory_limit
    fg.set_memory_limit(old)


def refused(op):
    """pytest.raises for a FastgradError whose message starts with ``op:`` and has a fix."""
    return pytest.raises(FastgradError, match=rf"^{op}: .*\. Fix: ")


def peak_bytes(fn):
    """(result, bytes allocated at the peak while ``fn()`` ran, above what was held before)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        out = fn()
        return out, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


# ============================================================================ item 17: memory
@pytest.mark.parametrize("bad", [0, -1, 1.5, 1e9, float("inf"), float("nan"), "1GB", True, [1]])
def test_set_memory_limit_takes_only_a_positive_int_or_none(bad, memory_limit):
    """0, -1, 1.5, inf, nan and "1GB" were taken silently or raised raw errors; a float, even
    an integral one like 1e9, is refused too (PyTorch's byte counts are ints): int(1e9)."""
    memory_limit(1 << 30)
    with refused("set_memory_limit"):
        fg.set_memory_limit(bad)
    assert memory.memory_limit() == 1 << 30  # unchanged by the refused call
    fg.set_memory_limit(np.int64(1 << 20))
    assert memory.memory_limit() == 1 << 20 and type(memory.memory_limit()) is int
    fg.set_memory_limit(None)
    assert memory.memory_limit() is None


def test_a_tape_never_holds_more_than_the_limit_while_its_arena_grows(memory_limit):
    """The arena grows by doubling, and while it grows the old buffer is still held: the guard
    counts the capacity allocated plus everything the tape holds, not the size asked for.
    Before, a limit of L let the arena's capacity reach about 2 L (peak about 3 L)."""
    limit = 8 * MiB
    x = fg.tensor(np.ones(1 << 15), requires_grad=True)  # 256 KiB per recorded result
    memory_limit(limit)

    def record_until_refused():
        ys, y = [], x * 1.0
        with refused("mul_scalar"):
            for _ in range(limit // (1 << 18) + 1):
                y = y * 1.0001
                ys.append(y)
        return ys

    ys, peak = peak_bytes(record_until_refused)
    tape = ys[-1].tape
    assert peak <= limit + 64 * 1024, f"peak {peak / MiB:.2f} MiB for a {limit // MiB} MiB limit"
    assert tape.nbytes() <= limit
    assert tape.values.n * 8 >= limit // 4  # the guard does not refuse far below the limit
    memory_limit(None)
    assert ys[-1].sum().item() == pytest.approx((1 << 15) * 1.0001 ** len(ys))


def test_a_copied_or_unpickled_tape_is_guarded_as_a_whole_too(memory_limit):
    y = fg.tensor(np.ones(1 << 10), requires_grad=True) * 2.0
    for tape in (y.tape.copy(), pickle.loads(pickle.dumps(y.tape)), copy.deepcopy(y.tape)):
        memory_limit(tape.nbytes() + (1 << 16) * 8 - 1)  # less than it holds plus the growth
        with refused("grow"):
            tape.add_node((1 << 16,), what="grow")
        memory_limit(None)


@settings(max_examples=40, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(limit_kib=st.integers(64, 4096), n=st.sampled_from([256, 4096, 1 << 15]),
       steps=st.lists(st.tuples(st.sampled_from(["mul", "add", "exp", "wide", "sum", "back"]),
                                st.integers(1, 64)), min_size=1, max_size=12))
def test_fuzz_a_tape_under_any_limit_holds_no_more_than_it(limit_kib, n, steps):
    """Random graphs (elementwise ops, broadcasts k times wider, reductions, backward) under a
    random limit: every op works or is refused by the guard, and the tape never holds more
    than the limit, measured by the tape and by tracemalloc."""
    limit = limit_kib * 1024
    w = fg.tensor(np.ones(2), requires_grad=True)  # the kernels load before anything is measured
    (fg.broadcast_to((w * 1.5 + w).exp(), (2, 2)) * 1.0).sum(axis=0).sum().backward()
    x = fg.tensor(np.linspace(0.0, 1.0, n), requires_grad=True)
    old = memory.memory_limit()
    fg.set_memory_limit(limit)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        try:
            ys = [x * 1.0]
        except FastgradError:  # x's copy alone does not fit
            return
        for op, k in steps:
            y = ys[-1]
            try:
                if op == "mul":
                    ys.append(y * 1.5)
                elif op == "add":
                    ys.append(y + ys[len(ys) // 2])
                elif op == "exp":
                    ys.append((y * 1e-3).exp())
                elif op == "wide" and y.ndim == 1:
                    ys.append(fg.broadcast_to(y, (k, y.shape[0])) * 1.0)
                elif op == "sum" and y.ndim == 2:
                    ys.append(y.sum(axis=0))
                elif op == "back":
                    x.grad = None
                    y.sum().backward()
            except FastgradError as e:
                assert " needs " in str(e) and "allowed" in str(e), str(e)
            assert ys[-1].tape.nbytes() <= limit
        extra = x.size * 8 * 2 + 128 * 1024  # x.grad and its accumulation, Python objects
        peak = tracemalloc.get_traced_memory()[1] - base
        assert peak <= limit + extra, f"peak {peak} for a limit of {limit}"
    finally:
        tracemalloc.stop()
        fg.set_memory_limit(old)


def test_backward_counts_the_tape_and_its_gradient_buffer_together(memory_limit):
    x = fg.tensor(np.ones(1 << 15), requires_grad=True)
    y = (x * 2.0).sum()
    held = y.tape.nbytes()
    memory_limit(held + y.tape.values.a.nbytes - 1)  # the gradients alone would fit
    with refused("backward"):
        y.backward()
    memory_limit(held + y.tape.values.a.nbytes + y.tape.scratch_size() * 8)
    y.backward()
    assert x.grad.tolist() == [2.0] * (1 << 15)


def _program_bytes(prog):
    """Bytes a compiled program holds: its tape's arrays, packed integers, bytes and floats."""
    arrays = [getattr(g, "a", None) for g in vars(prog.tape).values()]
    held = sum(a.nbytes for a in arrays if isinstance(a, np.ndarray))
    return held + prog.ints.nbytes + prog.bytes.nbytes + prog.floats.nbytes


@pytest.mark.parametrize("batch", [32, 128, 256])
def test_a_compiled_program_holds_no_more_than_the_limit(batch, memory_limit):
    """A compiled program's buffers in total (its copy of the tape, the packed arrays, the
    gradient and scratch buffers) are guarded, before the first is allocated. Before, only the
    gradient and scratch buffers were counted: a 40 MiB limit let a program hold 80 MiB."""
    model = fg.nn.MLP([64, 256, 256, 10], seed=0)
    x, y = np.ones((batch, 64)), np.arange(batch) % 10

    def loss(a, b):
        return fg.cross_entropy(model(a), b)

    unlimited = fg.compile(loss)
    unlimited(x, y)
    held = _program_bytes(unlimited.program(x, y)[0])
    memory_limit(held * 3 // 4)  # the trace fits; the program does not
    with pytest.raises(FastgradError, match=r"^compile: needs .* GiB of buffers but only "):
        fg.compile(loss)(x, y)
    # with room for the packing's transient copies, it is made and holds no more than allowed
    memory_limit(held * 3 // 2)
    step = fg.compile(loss)
    assert step(x, y)[0] == unlimited(x, y)[0]
    assert _program_bytes(step.program(x, y)[0]) <= held * 3 // 2


def test_randn_float32_holds_its_result_and_one_chunk_not_three_times_its_size():
    """Drawn in float64 and cast, float32 samples peaked at 3x their size; now at about 1x,
    with the same values as before (float64 draws rounded: a seed gives the same model)."""
    n = 1 << 22  # 16 MiB of float32
    t, peak = peak_bytes(lambda: fg.randn(n, dtype=np.float32, seed=7))
    assert peak <= 1.1 * 4 * n, f"peak {peak / MiB:.1f} MiB for 16 MiB of samples"
    expect = np.random.default_rng(7).standard_normal(n).astype(np.float32)
    assert t.dtype == np.float32 and np.array_equal(t.numpy(), expect)
    assert fg.randn(3, 5, seed=1).numpy().tolist() == \
        np.random.default_rng(1).standard_normal((3, 5)).tolist()


@pytest.mark.parametrize("make, op", [
    (lambda: fg.arange(0, 10**13), "arange"),
    (lambda: fg.arange(0.0, 1e13, 0.5), "arange"),
    (lambda: fg.nn.Linear(2**20, 2**20), "Linear"),
    (lambda: fg.nn.MLP([2**20, 2**20]), "Linear"),
    (lambda: fg.nn.LSTM(2**18, 2**18), "LSTM"),
    (lambda: fg.zeros(2**40, 2**10), "zeros"),
    (lambda: fg.randn(2**40, dtype=np.float32), "randn"),
])
def test_huge_allocations_are_refused_by_the_guard_not_a_raw_memory_error(make, op):
    with pytest.raises(FastgradError, match=rf"^{op}: needs .* GiB of buffers but only "):
        make()


@pytest.mark.parametrize("make, op", [
    (lambda: fg.arange(1 << 18), "arange"),
    (lambda: fg.arange(0.0, 1 << 18), "arange"),
    (lambda: fg.ones(1 << 18), "ones"),
    (lambda: fg.randn(1 << 19, dtype=np.float32), "randn"),
    (lambda: fg.nn.Linear(512, 512), "Linear"),
    (lambda: fg.nn.GRU(256, 256), "GRU"),
    (lambda: fg.optim.Adam([fg.nn.Parameter(np.zeros(1 << 15))]), "Adam"),
])
def test_every_allocation_that_scales_with_input_passes_the_user_limit(make, op, memory_limit):
    """Under a 1 MiB limit, a 2 MiB arange or layer is refused (arange and layers were not
    guarded at all), and the same call works again without the limit."""
    memory_limit(1 * MiB)  # an optimizer's five buffers of 256 KiB do not fit either
    with refused(op):
        make()
    memory_limit(None)
    make()


# ============================================================================ item 18: raw errors
BAD_CALLS = [
    ("zeros", lambda: fg.zeros(2.5)),
    ("zeros", lambda: fg.zeros(-1)),
    ("zeros", lambda: fg.zeros("a")),
    ("zeros", lambda: fg.zeros(None)),
    ("zeros", lambda: fg.zeros((2, 3.0))),
    ("zeros", lambda: fg.zeros(True)),
    ("zeros", lambda: fg.zeros(2, dtype="foo")),
    ("zeros", lambda: fg.zeros(2, dtype=np.complex128)),
    ("zeros", lambda: fg.zeros(2, requires_grad="yes")),
    ("ones", lambda: fg.ones(float("nan"))),
    ("ones", lambda: fg.ones(float("inf"))),
    ("ones", lambda: fg.ones(2, dtype=np.float16)),
    ("randn", lambda: fg.randn(-1)),
    ("randn", lambda: fg.randn(2.0)),
    ("randn", lambda: fg.randn(2, dtype=np.int64)),
    ("randn", lambda: fg.randn(2, seed="x")),
    ("randn", lambda: fg.randn(2, seed=-1)),
    ("randn", lambda: fg.randn(2, seed=1.5)),
    ("arange", lambda: fg.arange()),
    ("arange", lambda: fg.arange(0, 1, 0)),
    ("arange", lambda: fg.arange("a")),
    ("arange", lambda: fg.arange(float("nan"))),
    ("arange", lambda: fg.arange(float("inf"))),
    ("arange", lambda: fg.arange(3, dtype="foo")),
    ("arange", lambda: fg.arange(1, 2, 3, 4)),
    ("tensor", lambda: fg.tensor([1.0, [2.0]])),
    ("tensor", lambda: fg.tensor(1.0, dtype="foo")),
    ("tensor", lambda: fg.tensor("abc")),
    ("from_numpy", lambda: fg.from_numpy([1.0, 2.0])),
    ("from_numpy", lambda: fg.from_numpy(np.array(["a"]))),
    ("set_default_dtype", lambda: fg.set_default_dtype("foo")),
    ("set_default_dtype", lambda: fg.set_default_dtype(np.int64)),
    ("manual_seed", lambda: fg.manual_seed("a")),
    ("manual_seed", lambda: fg.manual_seed(None)),
    ("Linear", lambda: fg.nn.Linear(2.5, 3)),
    ("Linear", lambda: fg.nn.Linear("a", 3)),
    ("Linear", lambda: fg.nn.Linear(None, 3)),
    ("Linear", lambda: fg.nn.Linear(3, 0)),
    ("Linear", lambda: fg.nn.Linear(3, 2, dtype=np.int64)),
    ("Linear", lambda: fg.nn.Linear(3, 2, seed="s")),
    ("init", lambda: fg.nn.Linear(3, 2, init="nope")),
    ("init", lambda: fg.nn.Linear(3, 2, init="normal", std=-1.0)),
    ("init", lambda: fg.nn.Linear(3, 2, init="normal", std="big")),
    ("MLP", lambda: fg.nn.MLP(5)),
    ("MLP", lambda: fg.nn.MLP([2, 3.5])),
    ("MLP", lambda: fg.nn.MLP([2, 3], activation="nope")),
    ("MLP", lambda: fg.nn.MLP([2, 3], activation=["relu"])),
    ("MLP", lambda: fg.nn.MLP([2, 3], out_activation="nope")),
    ("RNN", lambda: fg.nn.RNN(2.5, 3)),
    ("GRU", lambda: fg.nn.GRU(2, -3)),
    ("LSTM", lambda: fg.nn.LSTM(2, 3, dtype="foo")),
]


@pytest.mark.parametrize("op, call", BAD_CALLS, ids=[f"{op}-{i}" for i, (op, _) in
                                                    enumerate(BAD_CALLS)])
def test_creation_functions_and_layers_refuse_bad_sizes_dtypes_and_seeds_by_name(op, call):
    """fg.zeros(2.5), fg.randn(-1), nn.Linear("a", 3), ... raised raw TypeError/ValueError
    (or, for fg.from_numpy of a list of strings, made a string tensor)."""
    with refused(op):
        call()


def test_creation_functions_still_take_what_numpy_takes():
    assert fg.zeros(np.int64(2), 3).shape == (2, 3)
    assert fg.ones([2, 3]).shape == (2, 3) and fg.zeros(np.array([2, 3])).shape == (2, 3)
    assert fg.zeros().shape == () and fg.zeros(0).shape == (0,)
    assert fg.zeros(2, dtype=np.int64).dtype == np.int64
    assert fg.arange(3).numpy().tolist() == [0, 1, 2] and fg.arange(3).dtype == np.int64
    assert fg.arange(1, 0, -0.25).numpy().tolist() == [1.0, 0.75, 0.5, 0.25]
    assert fg.arange(5, 2).shape == (0,)
    assert fg.randn(2, seed=np.random.default_rng(0)).shape == (2,)
    assert fg.nn.Linear(np.int64(3), 2).weight.shape == (2, 3)


@pytest.mark.parametrize("seed", ["a", ["a", "b"], [1.0, None], [1.0 + 2j, 1.0], None, [1.0],
                                  np.ones((2, 1)), {"g": 1}])
def test_backward_refuses_a_seed_that_is_not_real_numbers_of_the_tensors_shape(seed):
    """A string seed raised a raw ValueError; [1.0, None] became [1.0, nan] silently and a
    complex seed lost its imaginary part."""
    x = fg.tensor([1.0, 2.0], requires_grad=True)
    y = x * 3.0
    with refused("backward"):
        y.backward(seed)
    y.backward([1, 2])  # ints are real numbers: cast to the tensor's dtype
    assert x.grad.tolist() == [3.0, 6.0]


def test_backward_takes_a_seed_tensor_from_any_tape_by_its_values():
    """As PyTorch's grad argument: the seed's values count, wherever it was recorded; the seed
    is copied, so seeding a tensor with itself cannot read gradients as values."""
    x = fg.tensor([1.0, 2.0], requires_grad=True)
    other = fg.tensor([5.0, 7.0], requires_grad=True) * 1.0  # another tape
    y = x * x
    y.backward(other)
    assert x.grad.tolist() == [10.0, 28.0]
    x.grad = None
    y.backward(y)  # seed y = x^2: dL/dx = 2 x y
    assert x.grad.tolist() == [2.0, 16.0]
    z = fg.tensor([1.0, 2.0], dtype=np.float32, requires_grad=True) * 2.0
    z.backward(np.ones(2))  # a float64 seed for a float32 tensor is cast, as PyTorch
    with refused("backward"):
        z.backward(np.ones(3, np.float32))


@pytest.mark.parametrize("kwargs", [
    {"length": 2.5}, {"length": 0}, {"length": -1}, {"length": True}, {"length": "3"},
    {"length": float("nan")}, {"length": 3, "stack": "yes"}, {"length": 3, "checkpoint": 2.5},
    {"length": 3, "checkpoint": "log"}, {"length": 3, "checkpoint": True},
])
def test_scan_refuses_bad_length_stack_and_checkpoint_arguments(kwargs):
    """fg.scan(length=2.5) ran 2 steps silently."""
    with refused("scan"):
        fg.scan(lambda h, x: h * 2.0, fg.tensor(1.0), **kwargs)


def test_scan_refuses_a_step_that_is_not_a_function():
    with refused("scan"):
        fg.scan("step", fg.tensor(1.0), length=2)


def test_scan_takes_numpy_integer_lengths_and_checkpoints():
    w = fg.tensor(0.5, requires_grad=True)
    h = fg.scan(lambda h, x: h * w + 1.0, fg.tensor(1.0), length=np.int64(3),
                checkpoint=np.int64(2))
    assert h.item() == pytest.approx(1.875)


class StepFailed(Exception):
    pass


def _failing_step(h, x):
    h2 = h * 2.0 + x
    raise StepFailed("the user's bug")


@pytest.mark.parametrize("failure", ["raises", "wrong shape", "memory"])
def test_a_failed_scan_step_leaves_the_graph_usable_saved_and_differentiated(failure, tmp_path,
                                                                                memory_limit):
    """The step function is called once to record the loop body; when it (or the checks after
    it) fails, the half-recorded loop is taken off the tape: fg.save of the graph failed before.
    The rows the step recorded stay, as plain rows on the initial carry and xs[0]."""
    w = fg.tensor([1.0, 2.0], requires_grad=True)
    h0 = w * 3.0  # a recorded graph the failed scan is on
    xs = fg.tensor(np.ones((4, 2)))
    kept = []

    def wrong_shape(h, x):
        kept.append(h * 2.0 + x)
        return kept[-1].sum()

    def too_big(h, x):
        kept.append(h * 2.0 + x)
        fg.set_memory_limit(h0.tape.nbytes())  # the loop's store does not fit
        return kept[-1]

    step, error = {"raises": (_failing_step, StepFailed),
                   "wrong shape": (wrong_shape, FastgradError),
                   "memory": (too_big, FastgradError)}[failure]
    with pytest.raises(error):
        fg.scan(step, h0, xs, checkpoint=None)
    fg.set_memory_limit(None)
    loss = (h0 * h0).sum()
    fg.save({"tape": loss.tape}, tmp_path / "graph.npz")
    assert fg.load(tmp_path / "graph.npz")["tape"].n_rows == loss.tape.n_rows
    loss.backward()
    assert w.grad.tolist() == [18.0, 36.0]
    if kept:  # a tensor the step recorded is still right: step(h0, xs[0]) as plain rows
        assert kept[0].numpy().tolist() == [7.0, 13.0]
    h_T = fg.scan(lambda h, x: h + x, h0, xs)  # and a loop records on the same graph
    assert h_T.numpy().tolist() == [7.0, 10.0]


def test_an_anomaly_before_a_loop_found_inside_its_step_names_its_row_and_leaves_the_graph():
    """fg.scan computes nothing while it records: a step that reads a value runs the rows
    before the loop then, under fg.detect_anomaly too. A NaN made there is reported at the row
    that made it; the failed loop leaves no marker, and the step's rows read init and xs[0]."""
    w = fg.tensor([1.0, -1.0], requires_grad=True)
    h0 = w.log() * 1.0  # NaN at index 1
    kept = []

    def step(h, x):
        kept.append(h * 2.0 + x)
        kept[-1].numpy()
        return kept[-1]

    with fg.detect_anomaly(), pytest.raises(FastgradError, match=r"row 0 \(log\)"):
        fg.scan(step, h0, fg.tensor(np.ones((3, 2))))
    assert "scan_begin" not in [name for _, name, _, _ in h0.tape.rows()]
    np.testing.assert_array_equal(kept[0].numpy(), [1.0, np.nan])


# ============================================================================ the audit
BAD_VALUES = [2.5, -1, -3.0, 0, "a", None, float("nan"), float("inf"), -float("inf"), True,
              1 + 2j, [], (), [1, "a"], {}, object(), 10**20, -(10**20), np.int64(-2),
              np.float32(1.5), np.array([[1, 2], [3]], dtype=object), b"x", slice(None), ...]


def _x():
    return fg.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)


def _scalar_loss():
    return (_x() * 2.0).sum()


# public calls with one argument slot ``v``: each must give a result or a FastgradError
PUBLIC_CALLS = {
    "zeros": lambda v: fg.zeros(v),
    "zeros(2, v)": lambda v: fg.zeros(2, v),
    "zeros dtype": lambda v: fg.zeros(2, dtype=v),
    "ones": lambda v: fg.ones(v),
    "randn": lambda v: fg.randn(v),
    "randn seed": lambda v: fg.randn(2, seed=v),
    "randn dtype": lambda v: fg.randn(2, dtype=v),
    "arange": lambda v: fg.arange(v),
    "arange stop": lambda v: fg.arange(0, v),
    "arange step": lambda v: fg.arange(0, 5, v),
    "tensor": lambda v: fg.tensor(v),
    "tensor dtype": lambda v: fg.tensor([1.0], dtype=v),
    "tensor requires_grad": lambda v: fg.tensor([1.0], requires_grad=v),
    "as_tensor": lambda v: fg.as_tensor(v),
    "as_tensor dtype": lambda v: fg.as_tensor(np.zeros(2), dtype=v),
    "from_numpy": lambda v: fg.from_numpy(v),
    "set_default_dtype": lambda v: fg.set_default_dtype(v),
    "set_memory_limit": lambda v: fg.set_memory_limit(v),
    "manual_seed": lambda v: fg.manual_seed(v),
    "sum axis": lambda v: _x().sum(axis=v),
    "max axis": lambda v: _x().max(axis=v),
    "mean axis": lambda v: _x().mean(axis=v),
    "sum keepdims": lambda v: _x().sum(axis=0, keepdims=v),
    "reshape": lambda v: _x().reshape(v),
    "transpose": lambda v: _x().transpose(v),
    "clip": lambda v: _x().clip(v),
    "leaky_relu": lambda v: _x().leaky_relu(v),
    "softmax": lambda v: _x().softmax(v),
    "log_softmax": lambda v: fg.log_softmax(_x(), axis=v),
    "getitem": lambda v: _x()[v],
    "add": lambda v: _x() + v,
    "radd": lambda v: v + _x(),
    "mul": lambda v: _x() * v,
    "div": lambda v: _x() / v,
    "pow": lambda v: _x() ** v,
    "rpow": lambda v: v ** _x(),
    "gt": lambda v: _x() > v,
    "maximum": lambda v: _x().maximum(v),
    "broadcast_to": lambda v: _x().broadcast_to(v),
    "astype": lambda v: _x().astype(v),
    "requires_grad_": lambda v: fg.tensor([1.0]).requires_grad_(v),
    "backward": lambda v: _scalar_loss().backward(v),
    "matmul": lambda v: fg.matmul(_x(), v),
    "take": lambda v: fg.take(_x(), v),
    "take axis": lambda v: fg.take(_x(), np.array([0]), axis=v),
    "where": lambda v: fg.where(v, _x(), 0.0),
    "stack": lambda v: fg.stack(v),
    "stack axis": lambda v: fg.stack([_x(), _x()], axis=v),
    "concatenate": lambda v: fg.concatenate(v),
    "concatenate axis": lambda v: fg.concatenate([_x(), _x()], axis=v),
    "relu": lambda v: fg.relu(v),
    "mse_loss": lambda v: fg.mse_loss(_x(), v),
    "mse_loss reduction": lambda v: fg.mse_loss(_x(), _x(), reduction=v),
    "cross_entropy": lambda v: fg.cross_entropy(_x(), v),
    "bce": lambda v: fg.binary_cross_entropy_with_logits(_x(), v),
    "scan length": lambda v: fg.scan(lambda h, x: h * 2.0, fg.tensor(1.0), length=v),
    "scan xs": lambda v: fg.scan(lambda h, x: h + x, fg.tensor(1.0), v),
    "scan init": lambda v: fg.scan(lambda h, x: h * 2.0, v, length=2),
    "scan checkpoint": lambda v: fg.scan(lambda h, x: h * 2.0, fg.tensor(1.0), length=3,
                                         checkpoint=v),
    "scan stack": lambda v: fg.scan(lambda h, x: h * 2.0, fg.tensor(1.0), length=3, stack=v),
    "Binomial": lambda v: fg.Binomial(slots=v),
    "Linear in": lambda v: fg.nn.Linear(v, 2),
    "Linear out": lambda v: fg.nn.Linear(2, v),
    "Linear init": lambda v: fg.nn.Linear(2, 2, init=v),
    "Linear std": lambda v: fg.nn.Linear(2, 2, init="normal", std=v),
    "Linear seed": lambda v: fg.nn.Linear(2, 2, seed=v),
    "Linear dtype": lambda v: fg.nn.Linear(2, 2, dtype=v),
    "Linear call": lambda v: fg.nn.Linear(3, 2, seed=0)(v),
    "MLP sizes": lambda v: fg.nn.MLP(v),
    "MLP size": lambda v: fg.nn.MLP([2, v]),
    "MLP activation": lambda v: fg.nn.MLP([2, 2], activation=v),
    "RNN hidden": lambda v: fg.nn.RNN(2, v),
    "GRU input": lambda v: fg.nn.GRU(v, 2),
    "LSTM seed": lambda v: fg.nn.LSTM(2, 2, seed=v),
    "LeakyReLU": lambda v: fg.nn.LeakyReLU(v)(_x()),
    "init.normal": lambda v: fg.nn.init.normal((2, 2), std=v),
    "init.orthogonal": lambda v: fg.nn.init.orthogonal(v),
    "init.xavier_uniform gain": lambda v: fg.nn.init.xavier_uniform((2, 2), gain=v),
    "Sequential": lambda v: fg.nn.Sequential(v),
    "load_state_dict": lambda v: fg.nn.Linear(2, 2).load_state_dict(v),
    "load_state_dict weight": lambda v: fg.nn.Linear(2, 2).load_state_dict(
        {"weight": v, "bias": np.zeros(2)}),
    "clip_grad_norm_": lambda v: fg.nn.utils.clip_grad_norm_(fg.nn.Linear(2, 2).parameters(), v),
    "clip_grad_value_": lambda v: fg.nn.utils.clip_grad_value_(fg.nn.Linear(2, 2).parameters(),
                                                               v),
    "sum tuple axis": lambda v: _x().sum(axis=(0, v)),
    "clip max": lambda v: _x().clip(0.0, v),
    "where branch": lambda v: fg.where(_x() > 1.0, v, _x()),
    "tanh": lambda v: fg.tanh(v),
    "softmax fn": lambda v: fg.softmax(v),
    "jvp": lambda v: fg.jvp(lambda a: a * 2.0, (fg.tensor([1.0]),), (v,)),
    "detect_anomaly": lambda v: fg.detect_anomaly(v).__enter__(),
    "fg.exp": lambda v: fg.exp(v),
    "fg.sum axis": lambda v: fg.sum(_x(), v),
    "fg.reshape": lambda v: fg.reshape(_x(), v),
    "fg.clip": lambda v: fg.clip(_x(), v, None),
    "fg.minimum": lambda v: fg.minimum(_x(), v),
    "Tape": lambda v: fg.Tape(v),
    "gradcheck fn": lambda v: fg.gradcheck(v, [np.ones(2)]),
    "gradcheck inputs": lambda v: fg.gradcheck(lambda a: (a * a).sum(), v),
    "gradcheck eps": lambda v: fg.gradcheck(lambda a: (a * a).sum(), [np.ones(2)], eps=v),
    "linearize": lambda v: fg.linearize(lambda a: a * 2.0, v),
    "Binomial.schedule": lambda v: fg.Binomial(slots=2).schedule(v),
    "Binomial.extra_steps": lambda v: fg.Binomial(slots=2).extra_steps(v),
    "init.fans": lambda v: fg.nn.init.fans(v),
    "make_weight": lambda v: fg.nn.make_weight(v),
    "Module.train": lambda v: fg.nn.Linear(2, 2).train(v),
    "item": lambda v: fg.tensor(v).item(),
    "len": lambda v: len(fg.tensor(v)),
    "float": lambda v: float(fg.tensor(v)),
    "softplus": lambda v: fg.softplus(v),
    "sigmoid": lambda v: fg.sigmoid(v),
    "transpose(0, v)": lambda v: _x().transpose(0, v),
    "permute": lambda v: _x().permute(v),
    "fg.transpose(x, v, 0)": lambda v: fg.transpose(_x(), v, 0),
    "max dim": lambda v: _x().max(v),
    "min dim keepdim": lambda v: _x().min(1, keepdim=v),
    "max indices": lambda v: _x().max(v)[1],
    "amax": lambda v: _x().amax(v),
    "argmax": lambda v: _x().argmax(v),
    "argmin keepdim": lambda v: _x().argmin(0, keepdim=v),
    "astype": lambda v: _x().astype(v),
    "to": lambda v: _x().to(v),
    "flip": lambda v: _x().flip(v),
    "repeat": lambda v: _x().repeat(v, 1),
    "split": lambda v: _x().split(v),
    "split dim": lambda v: _x().split(1, dim=v),
    "chunk": lambda v: _x().chunk(v),
    "expand": lambda v: _x()[:1].expand(v, 3),
    "squeeze": lambda v: _x().squeeze(v),
    "unsqueeze": lambda v: _x().unsqueeze(v),
    "flatten": lambda v: _x().flatten(v),
    "view": lambda v: _x().view(v),
    "size(v)": lambda v: _x().size(v),
    "sum dim": lambda v: _x().sum(dim=v),
    "sum keepdim": lambda v: _x().sum(0, keepdim=v),
    "cat dim": lambda v: fg.cat([_x(), _x()], dim=v),
    "softmax dim": lambda v: _x().softmax(dim=v),
    "full": lambda v: fg.full((2,), v),
    "full shape": lambda v: fg.full(v, 1.0),
    "eye": lambda v: fg.eye(v),
    "linspace": lambda v: fg.linspace(0, 1, v),
    "linspace start": lambda v: fg.linspace(v, 1, 3),
    "rand": lambda v: fg.rand(v),
    "randint": lambda v: fg.randint(v),
    "randint size": lambda v: fg.randint(3, size=v),
    "zeros_like": lambda v: fg.zeros_like(v),
    "ones_like dtype": lambda v: fg.ones_like(_x(), dtype=v),
    "tensor of tensors": lambda v: fg.tensor([_x()[0, 0], v]),
    "np.exp": lambda v: np.exp(fg.tensor(v)),
    "np.add": lambda v: np.add(v, _x()),
    "np.sum axis": lambda v: np.sum(_x(), axis=v),
    "mask &": lambda v: (_x() > 1) & v,
    "cross_entropy weight": lambda v: fg.cross_entropy(_x(), np.array([0, 2]), weight=v),
    "cross_entropy ignore_index": lambda v: fg.cross_entropy(_x(), np.array([0, 2]),
                                                             ignore_index=v),
    "cross_entropy label_smoothing": lambda v: fg.cross_entropy(_x(), np.array([0, 2]),
                                                                label_smoothing=v),
    "cross_entropy target": lambda v: fg.cross_entropy(_x(), v),
    "nll_loss": lambda v: fg.nll_loss(_x(), v),
    "l1_loss": lambda v: fg.l1_loss(_x(), v),
    "smooth_l1_loss beta": lambda v: fg.smooth_l1_loss(_x(), _x(), beta=v),
    "huber_loss delta": lambda v: fg.huber_loss(_x(), _x(), delta=v),
    "kl_div reduction": lambda v: fg.kl_div(_x(), _x(), reduction=v),
    "bce pos_weight": lambda v: fg.binary_cross_entropy_with_logits(_x(), _x(), pos_weight=v),
    "one_hot": lambda v: fg.one_hot(fg.tensor([0, 1]), v),
    "Embedding padding_idx": lambda v: fg.nn.Embedding(4, 2, padding_idx=v),
    "Embedding call": lambda v: fg.nn.Embedding(4, 2, seed=0)(v),
    "LayerNorm shape": lambda v: fg.nn.LayerNorm(v),
    "LayerNorm eps": lambda v: fg.nn.LayerNorm(3, eps=v)(_x()),
    "Dropout p": lambda v: fg.nn.Dropout(v),
    "Dropout seed": lambda v: fg.nn.Dropout(0.5, seed=v),
    "Flatten": lambda v: fg.nn.Flatten(v)(_x()),
    "gather": lambda v: _x().gather(1, v),
    "index_select": lambda v: _x().index_select(v, np.array([0])),
    "masked_fill": lambda v: _x().masked_fill(_x() > 1, v),
    "getitem mixed": lambda v: _x()[:, v],
    "getitem two arrays": lambda v: _x()[v, v],
    "gelu approximate": lambda v: fg.gelu(_x(), approximate=v),
    "elu alpha": lambda v: fg.elu(_x(), v),
    "softplus beta": lambda v: fg.softplus(_x(), beta=v),
    "var correction": lambda v: _x().var(correction=v),
    "norm p": lambda v: _x().norm(v),
    "logsumexp dim": lambda v: _x().logsumexp(v),
    "cumsum dim": lambda v: _x().cumsum(v),
    "prod dim": lambda v: _x().prod(v),
    "round decimals": lambda v: _x().round(v),
    "conv2d stride": lambda v: fg.nn.functional.conv2d(np.ones((1, 1, 4, 4)),
                                                       fg.tensor(np.ones((1, 1, 2, 2))), stride=v),
    "conv2d padding": lambda v: fg.nn.functional.conv2d(np.ones((1, 1, 4, 4)),
                                                        fg.tensor(np.ones((1, 1, 2, 2))), padding=v),
    "conv2d groups": lambda v: fg.nn.functional.conv2d(np.ones((1, 2, 4, 4)),
                                                       fg.tensor(np.ones((2, 1, 2, 2))), groups=v),
    "conv1d dilation": lambda v: fg.nn.functional.conv1d(np.ones((1, 1, 6)),
                                                         fg.tensor(np.ones((1, 1, 2))), dilation=v),
    "Conv2d kernel": lambda v: fg.nn.Conv2d(1, 2, v),
    "Conv2d call": lambda v: fg.nn.Conv2d(1, 2, 3, seed=0)(v),
    "max_pool2d kernel": lambda v: fg.nn.functional.max_pool2d(np.ones((1, 1, 4, 4)), v),
    "avg_pool2d padding": lambda v: fg.nn.functional.avg_pool2d(np.ones((1, 1, 4, 4)), 3,
                                                                padding=v),
    "truncated_bptt k1": lambda v: fg.truncated_bptt(
        fg.nn.RNN(1, 2, seed=0), np.zeros((1, 2)), np.ones((4, 1, 1)), np.ones((4, 1, 2)), v, 2,
        fg.mse_loss, fg.optim.SGD(fg.nn.RNN(1, 2, seed=0).parameters(), lr=0.1)),
}


@pytest.mark.parametrize("name", sorted(PUBLIC_CALLS))
@settings(max_examples=3 * len(BAD_VALUES), derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(value=st.sampled_from(BAD_VALUES))
def test_public_calls_give_a_result_or_a_fastgrad_error_never_a_raw_exception(name, value):
    """The audit of item 18: floats for sizes, negative sizes, strings, None, nan, inf, ...
    passed to the public API (creation functions, Tensor methods, functional ops, fg.scan,
    fg.jvp, gradcheck, layers, initialisers). A FastgradError must name an op and carry a fix.
    Hypothesis runs out of the finite set of values, so every call meets every value."""
    limit, rng = memory.memory_limit(), nn_module._RNG[0]
    fg.set_memory_limit(256 * MiB)  # a huge size is refused, never allocated
    try:
        with np.errstate(all="ignore"):
            PUBLIC_CALLS[name](value)
    except FastgradError as e:
        assert ": " in str(e) and ". Fix: " in str(e), str(e)
    finally:
        fg.set_default_dtype("float64")
        fg.set_memory_limit(limit)
        nn_module._RNG[0] = rng


def test_a_tensor_copied_from_a_huge_broadcast_view_is_refused_by_the_guard():
    """``fg.tensor`` copies its data: an 8 TiB broadcast view (a few bytes itself) is refused
    by the memory guard, not a raw MemoryError from NumPy."""
    view = np.broadcast_to(np.ones(1), (2**40,))
    with pytest.raises(fg.FastgradError, match="tensor: needs .* GiB"):
        fg.tensor(view)


@pytest.mark.parametrize("dtype", [2.5, "int64", object])
def test_a_tape_of_anything_but_float32_or_float64_is_refused(dtype):
    """NumPy compares a dtype equal to None (its default, float64): the check does not let a
    number that is no dtype through as a tape without one."""
    from fastgrad.runtime.tape import Tape

    with pytest.raises(fg.FastgradError, match="a tape holds float32 or float64 values"):
        Tape(dtype)
