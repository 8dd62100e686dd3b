"""Leaves are read at their current values, compiled functions share parameters, and threads
that record onto one tape never corrupt it (issue 22, items 1, 2 and 7).

A leaf's values are copied into a tape when an op reads it. Every later use must see the leaf's
current values (after an optimizer step, a write into its array, or a change to a NumPy array
shared through ``fg.from_numpy``), as in PyTorch; ``backward`` refuses to run through a row that
saved a value the leaf no longer holds, with PyTorch's wording. Any number of compiled
functions (with and without an optimizer) and eager code may use the same parameters in any
order. Threads sharing a recorded tensor take turns on its tape.
"""

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastgrad as fg
import fastgrad.functional as F
from fastgrad.errors import FastgradError
from fastgrad.io import validate_tape

INPLACE = "modified by an inplace operation"
FAST = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def carried(values):
    """A non-leaf tensor (on a tape that outlives one loss), and its leaf."""
    base = fg.tensor(np.asarray(values, float), requires_grad=True)
    return base, base * 1.0


# ----------------------------------------------------------------------------- item 1: stale copies
def test_a_leaf_used_again_after_an_optimizer_step_is_read_at_its_new_values():
    """The issue's first example: w is 2 after the step, so base * w is 2, not the old 3."""
    w = fg.nn.Parameter([3.0])
    base_leaf, base = carried([1.0])
    opt = fg.optim.SGD([w], lr=1)
    (base * w).sum().backward()
    opt.step()
    assert w.numpy()[0] == 2.0
    second = (base * w).sum()
    assert second.item() == 2.0
    base_leaf.grad, w.grad = None, None
    second.backward()  # the first loss's row read the old w, but this sweep does not need it
    assert base_leaf.grad[0] == 2.0 and w.grad[0] == 1.0


@pytest.mark.parametrize("computed", ["neither", "first", "second", "both"])
def test_an_op_joining_two_graphs_computes_each_row_once_whatever_had_run(computed, monkeypatch):
    """Joining two graphs keeps rows not yet computed waiting (they run with the rest, at the
    first read), runs nothing twice, and gives the values and gradients of one graph."""
    import fastgrad.runtime.tape as tape_module

    ran = []
    replay = tape_module.replay_forward

    def counting(arrays, values, ivalues, params, start, stop, check):
        ran.append(stop - start)
        return replay(arrays, values, ivalues, params, start, stop, check)

    monkeypatch.setattr(tape_module, "replay_forward", counting)
    a = fg.tensor([1.0, 2.0], requires_grad=True)
    b = fg.tensor([10.0, 20.0], requires_grad=True)
    u, v = a * 2.0, b * 3.0
    if computed in ("first", "both"):
        u.numpy()
    if computed in ("second", "both"):
        v.numpy()
    both = u * v
    if computed == "neither":
        assert both.tape.n_done == 0  # nothing ran on the way
    assert both.numpy().tolist() == [60.0, 240.0]
    assert both.tape.n_done == both.tape.n_rows == sum(ran) == 3  # u, v, u * v: once each
    both.sum().backward()
    assert a.grad.tolist() == [60.0, 120.0] and b.grad.tolist() == [6.0, 12.0]


def test_a_state_carried_across_steps_reads_the_new_weight_and_backward_refuses_the_old_one():
    """h = h * w without detach: the forward uses each step's w; a backward through the row
    that saved the first w (changed since) raises PyTorch's in-place error, never a value."""
    w = fg.nn.Parameter([0.5])
    opt = fg.optim.SGD([w], lr=0.25)
    _, h = carried([1.0])
    h = h * w
    h.sum().backward()
    opt.step()  # w: 0.5 - 0.25 * 1 = 0.25
    h = h * w
    assert h.item() == 0.5 * 0.25
    with pytest.raises(FastgradError, match=INPLACE) as err:
        h.sum().backward()
    assert "shape (1,)" in str(err.value) and "mul" in str(err.value)


def test_a_numpy_array_shared_through_from_numpy_is_read_at_its_current_values():
    """The issue's third example: an op after ``a[:] = ...`` sees the new values."""
    a = np.array([1.0, 2.0])
    x = fg.from_numpy(a)
    _, y = carried([1.0, 1.0])
    first = y * x
    a[:] = [10.0, 20.0]
    assert np.array_equal((y * x).numpy(), [10.0, 20.0])
    assert np.array_equal(first.numpy(), [1.0, 2.0])  # recorded before the change, as eager


def test_backward_refuses_a_leaf_changed_after_an_op_saved_it():
    """Changed through ``.numpy()`` (no version counter sees that) between mul and backward."""
    w = fg.tensor([3.0, 4.0], requires_grad=True)
    loss = (w * w).sum()
    w.numpy()[0] = 5.0
    with pytest.raises(FastgradError, match=INPLACE):
        loss.backward()
    assert w.grad is None


def test_backward_refuses_a_shared_numpy_constant_changed_after_an_op_saved_it():
    """A constant (no grad) that a mul saved for its other operand's gradient."""
    a = np.array([1.0, 2.0])
    y = fg.tensor([1.0, 1.0], requires_grad=True)
    loss = (y * fg.from_numpy(a)).sum()
    a[1] = 7.0
    with pytest.raises(FastgradError, match=INPLACE):
        loss.backward()


def test_backward_through_ops_that_save_no_value_is_exact_after_a_change():
    """Add and sum do not read their operands' values backward: as in PyTorch, no error, and
    the gradient is exact."""
    w = fg.tensor([3.0, 4.0], requires_grad=True)
    base = fg.tensor([1.0, 1.0], requires_grad=True)
    loss = (base + w).sum()
    w.numpy()[:] = [-1.0, 8.0]
    loss.backward()
    assert np.array_equal(w.grad, [1.0, 1.0]) and np.array_equal(base.grad, [1.0, 1.0])


def test_a_leaf_changed_and_changed_back_is_read_as_it_is():
    """The check compares values, not a counter: restoring them restores the copy's validity,
    and a NaN equals itself."""
    w = fg.tensor([np.nan, 2.0], requires_grad=True)
    loss = (w * w).sum()
    w.numpy()[1] = 3.0
    w.numpy()[1] = 2.0
    loss.backward()
    assert w.grad[1] == 4.0


def test_minus_zero_counts_as_a_change():
    """0.0 and -0.0 differ in their bits (and 1 / w): the copy is not reused."""
    w = fg.tensor([0.0], requires_grad=True)
    _, base = carried([1.0])
    (base * w).numpy()
    w.numpy()[0] = -0.0
    assert np.signbit((base / w).numpy()[0])


def test_a_scan_reuses_a_changed_weight_at_its_new_values_and_backward_refuses_the_old_loop():
    """A leaf captured in a loop body: the second loop on the same tape reads the new w; a
    backward through the first loop (whose body saved the old w) raises."""
    w = fg.tensor(0.5, requires_grad=True)
    _, h0 = carried(1.0)
    xs = fg.tensor(np.ones(3))
    first = fg.scan(lambda h, x: h * w + x, h0, xs)
    assert first.item() == 1.875
    w.numpy()[...] = 1.0
    second = fg.scan(lambda h, x: h * w + x, h0, xs)
    assert second.item() == 4.0
    with pytest.raises(FastgradError, match=INPLACE):
        first.backward()
    w.grad = None
    second.backward()  # dh3/dw with w = 1: h2 + h1 + h0 = 3 + 2 + 1
    assert float(w.grad) == 6.0


def test_integer_indices_are_read_at_their_current_values():
    """Indices are copied (and range-checked) at each use, never cached."""
    idx = np.array([0, 1])
    _, table = carried([1.0, 2.0, 3.0])
    first = table[idx]
    idx[:] = [2, 2]
    assert np.array_equal(table[idx].numpy(), [3.0, 3.0])
    assert np.array_equal(first.numpy(), [1.0, 2.0])


@FAST
@given(st.lists(st.tuples(st.sampled_from(["add", "mul", "write"]), st.integers(0, 2),
                          st.integers(-3, 3)), min_size=1, max_size=12))
def test_fuzz_inplace_changes_between_uses_never_give_stale_values(program):
    """A random mix of ``acc = acc + leaf``, ``acc = acc * leaf`` and in-place writes into a
    leaf (through its array): every forward value equals NumPy's at the leaves' current values,
    and backward either equals the reference gradient or (exactly when a mul saved a value its
    leaf no longer holds) raises the in-place error."""
    leaves = [fg.tensor(np.full(2, float(i + 2)), requires_grad=True) for i in range(3)]
    start = fg.tensor(np.ones(2), requires_grad=True)
    acc, ref = start * 1.0, np.ones(2)
    trace = []  # (op, leaf index, the leaf's values when read, acc before)
    for op, i, value in program:
        if op == "write":
            leaves[i].numpy()[0] = float(value)
            continue
        current = leaves[i].numpy().copy()
        trace.append((op, i, current, ref.copy()))
        acc = acc + leaves[i] if op == "add" else acc * leaves[i]
        ref = ref + current if op == "add" else ref * current
        assert np.array_equal(acc.numpy(), ref)
    stale = any(op == "mul" and not np.array_equal(read, leaves[i].numpy())
                for op, i, read, _ in trace)
    if stale:
        with pytest.raises(FastgradError, match=INPLACE):
            acc.sum().backward()
        return
    acc.sum().backward()
    grads, g = [np.zeros(2) for _ in leaves], np.ones(2)
    for op, i, read, before in reversed(trace):
        if op == "add":
            grads[i] += g
        else:
            grads[i] += g * before
            g = g * read
    assert np.array_equal(start.grad, g)
    for leaf, want in zip(leaves, grads):
        assert np.array_equal(leaf.grad if leaf.grad is not None else np.zeros(2), want)


# ----------------------------------------------------------------------------- item 7: compile
LOSSES = {
    "F.linear(x, W)": lambda W: lambda x: F.linear(x, W).sum(),
    "x @ W.T": lambda W: lambda x: (x @ W.T).sum(),
    "W * 2": lambda W: lambda x: (W * 2).sum(),
    "fg.tensor(x) @ W.T": lambda W: lambda x: (fg.tensor(x) @ W.T).sum(),
}


def eager_value_and_grad(loss_of, W, x):
    W.grad = None
    loss = loss_of(W)(fg.tensor(x))
    loss.backward()
    return loss.item(), W.grad.copy()


@pytest.mark.parametrize("first", list(LOSSES))
@pytest.mark.parametrize("second", list(LOSSES))
def test_two_functions_compiled_over_the_same_tensor_both_work(first, second):
    """Every pair the issue names (and each alone: first == second), in both orders, gives
    eager's loss and gradient, and follows a new input on the next call."""
    W = fg.tensor(np.arange(12.0).reshape(4, 3), requires_grad=True)
    steps = [(name, fg.compile(LOSSES[name](W), params=[W])) for name in (first, second)]
    for x in (np.ones((2, 3)), np.arange(6.0).reshape(2, 3)):
        for name, step in steps:
            loss, (g,) = step(x)
            want_loss, want_g = eager_value_and_grad(LOSSES[name], W, x)
            assert loss == want_loss and np.array_equal(g, want_g), name


def test_fg_tensor_and_detach_inside_a_compiled_function_follow_each_call():
    """fg.tensor(x) and h.detach() of traced values are recorded, not frozen at the first
    call; no gradient flows through the detached value."""
    W = fg.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)

    def loss_of(x):
        h = fg.tensor(x) @ W.T
        return (h.detach() * h).sum()

    step = fg.compile(loss_of, params=[W])
    for x in (np.ones((1, 3)), np.array([[1.0, -2.0, 0.5]])):
        loss, (g,) = step(x)
        h = x @ W.numpy().T
        assert np.isclose(loss, (h * h).sum())
        assert np.allclose(g, h.T @ x)  # d/dW sum(c * (x W^T)) with c = h held constant


def test_a_train_step_a_value_and_grad_function_and_eager_code_share_parameters_in_any_order():
    """An SGD step, a compiled value-and-grad function (no optimizer) and eager ops over one
    Linear layer, interleaved: each reads the parameters as they are now, as plain NumPy
    arithmetic says."""
    layer = fg.nn.Linear(3, 2)
    opt = fg.optim.SGD(layer.parameters(), lr=0.125)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3))

    def loss_of(xb):
        return (layer(xb) ** 2).mean()

    train = fg.compile(loss_of, optimizer=opt)
    evaluate = fg.compile(loss_of, params=layer.parameters())
    _, kept = carried(np.ones((4, 2)))  # an eager tape that lives across the steps

    def reference():
        W, b = (p.numpy() for p in layer.parameters())
        return ((x @ W.T + b) ** 2).mean()

    for order in ("train eval eager", "eager train eval", "eval eager train", "train train"):
        for what in order.split():
            if what == "train":
                want = reference()
                assert np.isclose(train(x), want)
            elif what == "eval":
                loss, grads = evaluate(x)
                assert np.isclose(loss, reference())
                assert all(g.shape == p.shape for g, p in zip(grads, layer.parameters()))
            else:
                got = ((layer(fg.tensor(x)) * kept) ** 2).mean().item()
                assert np.isclose(got, reference())


def test_a_compiled_step_never_reads_a_parameter_copied_before_a_change():
    """A parameter read eagerly on a tape the compiled function then captures: the program
    reads the parameter's live values, not the eager copy."""
    w = fg.nn.Parameter([2.0])
    _, h = carried([3.0])
    captured = h * w  # copies w = 2 into h's tape
    step = fg.compile(lambda x: (captured * x).sum(), params=[w])
    w.numpy()[0] = 5.0
    loss, (g,) = step(np.array([1.0]))
    assert loss == 15.0 and g[0] == 3.0


# ----------------------------------------------------------------------------- item 2: threads
def record_in_threads(n_threads, n_losses, use_scan, serial=False):
    """Workers that share one recorded tensor ``h`` each record ``n_losses`` losses onto its
    tape (merging a tape of their own, optionally through fg.scan) and run backward, in
    ``n_threads`` threads or one after the other (``serial``); returns (the shared leaf's
    gradient, each worker's leaf's gradient, each worker's losses, h's tape)."""
    base = fg.tensor(np.ones(3), requires_grad=True)
    h = base * 1.0
    weights = [fg.tensor(np.full(3, float(i + 1)), requires_grad=True) for i in range(n_threads)]
    losses = [[] for _ in range(n_threads)]
    errors = []
    barrier = threading.Barrier(1 if serial else n_threads)

    def work(i):
        try:
            barrier.wait()
            for _ in range(n_losses):
                u = weights[i] * 1.0  # a tape of this worker's own, merged into h's
                y = h * u + h
                if use_scan:
                    y = fg.scan(lambda c, x: c + x, y, fg.tensor(np.ones((2, 3))))
                loss = y.sum()
                loss.backward()
                losses[i].append(loss.item())
        except Exception as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    if serial:
        for i in range(n_threads):
            work(i)
    else:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    return base.grad, [w.grad for w in weights], losses, h.tape


@settings(max_examples=6, deadline=None, derandomize=True)
@given(st.integers(2, 4), st.integers(1, 6), st.booleans())
def test_threads_recording_onto_one_tape_never_corrupt_it(n_threads, n_losses, use_scan):
    """Each thread's losses and every gradient equal a one-thread run of the same work (the
    values are small integers: sums in any order are exact), and the shared tape passes the
    loader's validation (no overlapping nodes, every row whole)."""
    base_grad, grads, losses, tape = record_in_threads(n_threads, n_losses, use_scan)
    validate_tape(tape)
    want_base, want_grads, want_losses, _ = record_in_threads(n_threads, n_losses, use_scan,
                                                              serial=True)
    assert losses == want_losses
    assert np.array_equal(base_grad, want_base)
    for got, want in zip(grads, want_grads):
        assert np.array_equal(got, want)
    extra = 6.0 if use_scan else 0.0  # the loop adds two ones to each of three entries
    assert want_losses == [[3.0 * (i + 2.0) + extra] * n_losses for i in range(n_threads)]


def test_a_compiled_function_reads_captured_constants_and_no_grad_parameters_at_each_call():
    """A NumPy array shared through fg.from_numpy and a parameter read under no_grad (a target
    network's weight) are reloaded at each call, never their trace-time values."""
    scale = np.array([2.0])
    target = fg.nn.Parameter([10.0])
    w = fg.nn.Parameter([1.0])
    shared = fg.from_numpy(scale)

    def loss_of(x):
        with fg.no_grad():
            t = target * 1.0
        return ((x * w * shared) - t).sum()

    step = fg.compile(loss_of, params=[w])
    assert step(np.array([1.0]))[0] == 2.0 - 10.0
    scale[0], target.numpy()[0] = 3.0, 4.0
    loss, (g,) = step(np.array([1.0]))
    assert loss == 3.0 - 4.0 and g[0] == 3.0


def test_a_parameter_detached_or_copied_inside_a_compiled_step_follows_its_updates():
    """``w.detach()`` and ``fg.tensor(w)`` inside a traced training step read the parameter's
    current values at each call (PyTorch copies at each call), and no gradient flows through
    them: loss = sum(w * stop(w)) + sum(fg.tensor(w)) has gradient stop(w) = w."""
    w = fg.nn.Parameter([1.0, 2.0])
    opt = fg.optim.SGD([w], lr=0.5)
    step = fg.compile(lambda x: (w * w.detach() * x).sum() + fg.tensor(w).sum(), optimizer=opt)
    for _ in range(3):
        before = w.numpy().copy()
        assert step(np.ones(2)) == (before * before).sum() + before.sum()
        assert np.array_equal(w.numpy(), before - 0.5 * before)


def test_a_traced_value_cannot_become_a_new_leaf_inside_a_compiled_function():
    """fg.tensor(x, requires_grad=True) (or a dtype change) of a traced input would freeze
    the first call's values: refused with the fix, not silently frozen."""
    W = fg.tensor(np.ones((2, 3)), requires_grad=True)
    for make in (lambda x: fg.tensor(x, requires_grad=True),
                 lambda x: fg.tensor(x, dtype=np.float32)):
        step = fg.compile(lambda x, make=make: (make(x) @ W.T).sum(), params=[W])
        with pytest.raises(FastgradError, match="first call's values"):
            step(np.ones((1, 3)))


def test_a_changed_factor_is_refused_only_where_the_other_factor_needs_its_value():
    """As in PyTorch, a product saves each factor only for the other's gradient: w changed
    after ``c * w`` (c a constant) leaves w's gradient (c) exact, so backward runs; when c
    requires grad too, c's gradient would read the old w, so backward refuses."""
    w = fg.nn.Parameter(np.ones(3))
    loss = (fg.tensor(np.full(3, 2.0)) * w).sum()
    w.numpy()[:] = 7.0
    loss.backward()
    np.testing.assert_array_equal(w.grad, [2.0, 2.0, 2.0])

    W = fg.nn.Parameter(np.ones((2, 3)))
    loss = (np.ones((4, 3)) @ W.T).sum()  # a constant x: W's value is never read
    W.numpy()[:] = 5.0
    loss.backward()
    np.testing.assert_array_equal(W.grad, np.full((2, 3), 4.0))

    c, w = fg.tensor(np.full(3, 2.0), requires_grad=True), fg.nn.Parameter(np.ones(3))
    loss = (c * w).sum()
    w.numpy()[:] = 7.0
    with pytest.raises(fg.FastgradError, match="modified by an inplace operation"):
        loss.backward()


def test_an_index_array_a_compiled_function_captured_is_read_and_checked_at_each_call():
    """Labels captured from ``fg.from_numpy(lab)`` inside a compiled function follow ``lab``
    (as eager ops do), and an out-of-range value written there later is refused, never read
    by a kernel."""
    lab = np.array([0, 1])
    y = fg.from_numpy(lab)
    W = fg.tensor(np.arange(12.0).reshape(4, 3) / 10, requires_grad=True)
    f = fg.compile(lambda x: fg.cross_entropy(x @ W.T, y), params=[W])
    x = np.ones((2, 3))
    assert f(x)[0] == pytest.approx(fg.cross_entropy(fg.tensor(x) @ W.T, y).item())
    lab[:] = [3, 2]
    assert f(x)[0] == pytest.approx(fg.cross_entropy(fg.tensor(x) @ W.T, y).item())
    lab[:] = [7, 2]
    with pytest.raises(fg.FastgradError, match="index 7 is out of range"):
        f(x)


@pytest.mark.parametrize("fn", [fg.exp, fg.tanh, fg.sigmoid, fg.sqrt])
def test_ops_whose_gradient_reads_their_output_stay_exact_after_the_leaf_changes(fn):
    """exp' = exp, tanh' = 1 - tanh^2, ...: the VJP reads the op's output, which the change
    of the leaf does not reach, so backward runs (as in PyTorch) and is exact."""
    w = fg.nn.Parameter(np.array([0.5, 2.0]))
    y = fn(w)
    expected = fg.tensor(np.array([0.5, 2.0]), requires_grad=True)
    fn(expected).sum().backward()
    w.numpy()[:] = 9.0
    y.sum().backward()
    np.testing.assert_allclose(w.grad, expected.grad, rtol=1e-15)
