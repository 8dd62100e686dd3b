"""Trust in compiled steps and fg.fit: threads, the one input rule, labels changed while a step
runs, Ctrl-C during fit, and bad arguments refused by name (issue 22, items 2, 5, 8, 14, 18)."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastgrad as fg
from fastgrad.tensor import input_array, input_dtype_problem


def tiny_classifier(seed=0, dtype=np.float64, lr=0.1):
    model = fg.nn.MLP([4, 8, 3], activation="tanh", seed=seed, dtype=dtype)
    opt = fg.optim.SGD(model.parameters(), lr=lr)
    step = fg.compile(lambda x, y: fg.cross_entropy(model(x), y), optimizer=opt)
    return model, opt, step


def digits_like(n=96, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype(dtype)
    return X, (np.abs(X).argmax(axis=1) % 3).astype(np.int64)


# ----------------------------------------------------------------------------- item 2: threads
def test_threads_calling_one_training_step_get_exactly_the_losses_of_a_serial_run():
    """Each call of a compiled step is one whole step, also from several threads at once (the
    step holds its optimizer's lock around loading the inputs, the native call and ``opt.t``):
    on one fixed batch the k-th step's loss does not depend on which thread runs it, so the
    threads' losses, sorted, are the serial run's, and the parameters end where its do."""
    X, Y = digits_like(32)
    _, serial_opt, serial_step = tiny_classifier()
    want = sorted(serial_step(X, Y) for _ in range(1 + 4 * 150))
    _, opt, step = tiny_classifier()
    got = [step(X, Y)]  # the first call traces; the threads then take the per-step path
    start = threading.Barrier(4)

    def worker():
        start.wait()
        losses = [step(X, Y) for _ in range(150)]
        got.extend(losses)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == want
    assert opt.t == serial_opt.t
    np.testing.assert_array_equal(opt.flat, serial_opt.flat)


def test_threads_calling_one_value_and_grad_function_get_the_serial_results():
    """A compiled function without an optimizer (loss and gradients) called from several
    threads on different batches returns, for every call, exactly what a serial call returns."""
    rng = np.random.default_rng(5)
    w = fg.nn.Parameter(rng.normal(size=(64, 48)) / 8)
    v = fg.nn.Parameter(rng.normal(size=(48, 3)) / 8)
    loss_and_grad = fg.compile(lambda x, y: fg.cross_entropy(fg.tanh(x @ w) @ v, y),
                               params=[w, v])
    batches = [(rng.normal(size=(256, 64)), rng.integers(0, 3, 256)) for _ in range(8)]
    want = [loss_and_grad(x, y) for x, y in batches]
    failures, start = [], threading.Barrier(4)

    def worker(k):
        start.wait()
        for _ in range(15):
            for i in range(k % 2, len(batches), 2):
                loss, grads = loss_and_grad(*batches[i])
                if loss != want[i][0] or not all(
                        np.array_equal(g, h) for g, h in zip(grads, want[i][1])):
                    failures.append(i)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


@settings(max_examples=8, deadline=None, derandomize=True)
@given(optimizer=st.sampled_from(["SGD", "SGD momentum", "Adam"]), threads=st.integers(2, 4),
       steps=st.integers(1, 40), dtype=st.sampled_from([np.float32, np.float64]),
       clip=st.sampled_from([None, 0.5]))
def test_fuzz_threads_give_the_serial_steps(optimizer, threads, steps, dtype, clip):
    """Fuzzed: any optimizer, thread count, steps per thread, dtype and clipping; the threads'
    sorted losses and the final parameters and optimizer state equal a serial run's."""
    X, Y = digits_like(24, dtype=dtype)

    def make():
        model = fg.nn.MLP([4, 8, 3], activation="tanh", seed=1, dtype=dtype)
        opt = (fg.optim.Adam(model.parameters(), lr=0.01) if optimizer == "Adam" else
               fg.optim.SGD(model.parameters(), lr=0.1,
                            momentum=0.9 if "momentum" in optimizer else 0.0))
        return opt, fg.compile(lambda x, y: fg.cross_entropy(model(x), y), optimizer=opt,
                               clip_grad_norm=clip)
    serial_opt, serial_step = make()
    want = sorted(serial_step(X, Y) for _ in range(1 + threads * steps))
    opt, step = make()
    got = [step(X, Y)]
    start = threading.Barrier(threads)

    def worker():
        start.wait()
        got.extend(step(X, Y) for _ in range(steps))

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert sorted(got) == want and opt.t == serial_opt.t
    np.testing.assert_array_equal(opt.buffers, serial_opt.buffers)


# ----------------------------------------------------------------------------- item 5: inputs
@pytest.mark.parametrize("bad", [np.array([[1 + 2j] * 4] * 2), np.array([["1"] * 4] * 2),
                                 np.array([[1.0] * 4] * 2, dtype=object)],
                         ids=["complex", "string", "object"])
def test_complex_string_and_object_inputs_are_refused_by_eager_ops_and_compiled_steps(bad):
    """Complex inputs would lose their imaginary part, strings and objects would be parsed:
    the eager path, a compiled step, a compiled value-and-grad function and fg.fit refuse them
    with the same message, naming the dtype, and nothing is traced or updated."""
    model, opt, step = tiny_classifier()
    y = np.array([0, 1])
    before = opt.flat.copy()
    message = rf"unsupported dtype {bad.dtype}"
    with pytest.raises(fg.FastgradError, match=message):
        model(bad)
    with pytest.raises(fg.FastgradError, match=message):
        step(bad, y)
    with pytest.raises(fg.FastgradError, match=message):
        fg.compile(lambda x, y: fg.cross_entropy(model(x), y))(bad, y)
    with pytest.raises(fg.FastgradError, match=message):
        fg.fit(step, bad, y, batch_size=1, progress=False)
    assert step.programs == {} and opt.t == 0
    np.testing.assert_array_equal(opt.flat, before)


def test_a_float_input_of_another_dtype_is_refused_alike_in_eager_ops_and_compiled_steps():
    """One rule (fastgrad.tensor.input_dtype_problem) for a float input whose dtype is not
    the computation's (float16, or float64 data for a float32 model): refused with the cast
    to make, in an eager op, a compiled step and fg.fit alike (PyTorch's Linear refuses
    float64 input for float32 weights too)."""
    model, opt, step = tiny_classifier(dtype=np.float32)
    X, Y = digits_like(8)
    for x in (X, X.astype(np.float16)):
        fix = r"astype\(np.float32\)"
        with pytest.raises(fg.FastgradError, match=fix):
            model(x)
        with pytest.raises(fg.FastgradError, match=rf"input 0 .*{x.dtype}.*{fix}"):
            step(x, Y)
        with pytest.raises(fg.FastgradError, match=fix):
            fg.fit(step, x, Y, batch_size=4, progress=False)
    assert step.programs == {} and opt.t == 0
    loss = step(X.astype(np.float32), Y)
    assert np.isfinite(loss) and opt.t == 1


def test_lists_and_integer_labels_follow_the_same_rule_in_both_paths():
    """Python lists become arrays as fg.tensor makes them (floats in the default dtype), then
    the rule above applies, in an eager op and in a compiled step alike; integer labels of any
    integer dtype are widened to int64 in both, after the range check."""
    X, Y = digits_like(8)
    model, _, step = tiny_classifier()
    want = fg.cross_entropy(model(X), Y).item()
    assert fg.cross_entropy(model(X.tolist()), Y.astype(np.int32)).item() == want
    assert step(X.tolist(), Y.astype(np.int32)) == want
    model32, _, step32 = tiny_classifier(dtype=np.float32)
    with pytest.raises(fg.FastgradError, match="float32 and float64"):
        model32(X.tolist())
    with pytest.raises(fg.FastgradError, match=r"input 0 .*float64 for a float32 computation"):
        step32(X.tolist(), Y)
    fg.set_default_dtype("float32")
    try:
        want32 = fg.cross_entropy(model32(X.tolist()), Y.astype(np.uint8)).item()
        assert step32(X.tolist(), Y.astype(np.uint8)) == want32
    finally:
        fg.set_default_dtype("float64")
    assert input_dtype_problem(np.dtype(np.int32), np.dtype(np.float32)) is None
    assert input_dtype_problem(np.dtype(np.bool_), np.dtype(np.float64)) is None
    assert input_dtype_problem(np.dtype(np.float64), np.dtype(np.float32)) is not None


_DTYPES = [np.float16, np.float32, np.float64, np.complex64, np.complex128, np.int8, np.int32,
           np.uint8, np.uint64, np.bool_, object, "U3", "S3", "datetime64[s]", "m8[s]",
           [("a", "f8")]]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(x_dtype=st.sampled_from(_DTYPES), model_dtype=st.sampled_from([np.float32, np.float64]),
       as_list=st.booleans())
def test_fuzz_eager_ops_and_compiled_steps_accept_and_refuse_the_same_inputs(x_dtype,
                                                                             model_dtype,
                                                                             as_list):
    """Fuzzed over dtypes (and lists): an eager forward pass and a compiled value-and-grad
    function of the same model either both refuse the input with FastgradError or both accept
    it and give the same loss; what ``input_dtype_problem`` refuses is refused (an integer
    input that the function uses in float arithmetic is cast, in both)."""
    model = fg.nn.MLP([4, 3], seed=0, dtype=model_dtype)
    x = np.arange(8).reshape(2, 4).astype(x_dtype)
    if as_list:
        x = x.tolist()
    y = np.array([0, 2])
    loss_and_grad = fg.compile(lambda a, b: fg.cross_entropy(model(a), b),
                               params=model.parameters())

    def outcome(run):
        try:
            return run()
        except fg.FastgradError:
            return "refused"
    eager = outcome(lambda: fg.cross_entropy(model(x), y).item())
    compiled = outcome(lambda: loss_and_grad(x, y)[0])
    ruled = input_dtype_problem(input_array(x).dtype, np.dtype(model_dtype))
    assert eager == compiled
    if ruled is not None:  # accepted dtypes may still be refused by a shape rule
        assert compiled == "refused"


# ----------------------------------------------------------------------------- item 8: labels
_LABEL_RACE = textwrap.dedent("""
    import sys, threading
    import numpy as np
    import fastgrad as fg

    sys.setswitchinterval(1e-5)  # let the writer run between and during steps
    model = fg.nn.MLP([4, 8, 3], seed=0)
    opt = fg.optim.SGD(model.parameters(), lr=0.0)  # lr 0: every good step has one loss
    step = fg.compile(lambda x, y: fg.cross_entropy(model(x), y), optimizer=opt)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4096, 4))
    labels = np.ones(4096, np.int64)
    want = step(x, labels.copy())
    X, Y = np.repeat(x[:64], 40, axis=0), np.ones(64 * 40, np.int64)
    fit_want = fg.fit(step, X, Y.copy(), epochs=2, batch_size=64, shuffle=False,
                      progress=False).loss
    stop = False

    def writer():  # a loader refilling the buffers, out of range for a while
        while not stop:
            labels[:] = 10**9
            Y[:] = 10**9
            for _ in range(20):
                pass
            labels[:] = 1
            Y[:] = 1
            for _ in range(20):
                pass

    thread = threading.Thread(target=writer)
    thread.start()
    good = refused = 0
    try:
        for _ in range(3000):
            try:
                loss = step(x, labels)
            except fg.FastgradError as e:
                assert "outside [0, 3)" in str(e), e
                refused += 1
            else:
                assert loss == want, (loss, want)
                good += 1
        for _ in range(20):
            try:
                got = fg.fit(step, X, Y, epochs=2, batch_size=64, shuffle=False,
                             progress=False).loss
            except fg.FastgradError as e:
                assert "outside [0, 3)" in str(e), e
                refused += 1
            else:
                assert got == fit_want, (got, fit_want)
                good += 1
    finally:
        stop = True
        thread.join()
    print("good", good, "refused", refused)
""")


def test_labels_changed_by_another_thread_while_steps_run_never_reach_a_kernel_unchecked():
    """A loader thread that keeps writing an out-of-range label into the buffers a compiled
    step and fg.fit read: every step either computes with in-range labels (the loss of the
    unchanged labels) or raises FastgradError naming the range, and the process never crashes.
    The step copies the labels into its own slot and checks the copy; fit checks a private
    copy of Y. Run in a subprocess so that a segfault fails this test instead of pytest."""
    env = dict(os.environ)
    run = subprocess.run([sys.executable, "-c", _LABEL_RACE], env=env, capture_output=True,
                         text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("good ")


# ----------------------------------------------------------------------------- item 14: Ctrl-C
class _InterruptAt:
    """A scheduler stand-in whose step() (called once per epoch by fit) raises Ctrl-C."""

    def __init__(self, epoch):
        self.epoch, self.calls = epoch, 0

    def step(self):
        self.calls += 1
        if self.calls == self.epoch:
            raise KeyboardInterrupt


def _reference_fit(epochs, X, Y, batch_size):
    model, opt, step = tiny_classifier()
    fg.fit(step, X, Y, epochs=epochs, batch_size=batch_size, seed=3, progress=False)
    return opt


def test_ctrl_c_from_a_per_epoch_hook_leaves_the_history_reachable_and_the_state_consistent():
    """KeyboardInterrupt inside fit is re-raised with the History of the completed epochs as
    ``exc.history`` and as ``step.history`` (as Keras keeps ``model.history``); parameters and
    ``opt.t`` are those of an uninterrupted fit of those epochs."""
    X, Y = digits_like(100)
    model, opt, step = tiny_classifier()
    with pytest.raises(KeyboardInterrupt) as caught:
        fg.fit(step, X, Y, epochs=5, batch_size=16, seed=3, progress=False,
               scheduler=_InterruptAt(2))
    history = caught.value.history
    assert history is step.history and len(history.loss) == 2 and len(history.accuracy) == 2
    ref = _reference_fit(2, X, Y, 16)
    assert opt.t == ref.t == 2 * 7
    np.testing.assert_array_equal(opt.flat, ref.flat)


def _reference_steps(steps, X, Y, batch_size, seed=3):
    """The parameters after ``steps`` batches taken as fit takes them (its shuffles, in order),
    each by one call of a fresh compiled step."""
    model, opt, step = tiny_classifier()
    rng, n, taken = np.random.default_rng(seed), len(X), 0
    while taken < steps:
        perm = rng.permutation(n)
        for k in range(0, n - n % batch_size, batch_size):
            if taken == steps:
                break
            step(X[perm[k : k + batch_size]], Y[perm[k : k + batch_size]])
            taken += 1
    return opt


def test_ctrl_c_while_an_epoch_runs_natively_stops_after_the_running_batch_consistently():
    """A SIGINT that arrives while an epoch's native call runs stops that epoch after its
    running batch (the kernel reads a stop flag before
    each batch), then fit raises KeyboardInterrupt with the History of what was done (a
    stopped epoch's entry covers its completed batches): ``opt.t`` counts exactly the batches
    taken and the parameters equal those batches taken one call at a time."""
    X, Y = digits_like(200_000)  # 20,000 batches an epoch: the signal comes early in the first
    model, opt, step = tiny_classifier()
    start = opt.flat.copy()
    done = threading.Event()

    def interrupt_once_training_moves():
        while not done.is_set():
            if not np.array_equal(opt.flat, start):
                os.kill(os.getpid(), signal.SIGINT)  # a real signal, as Ctrl-C sends
                return
    watcher = threading.Thread(target=interrupt_once_training_moves)
    watcher.start()
    try:
        with pytest.raises(KeyboardInterrupt) as caught:
            fg.fit(step, X, Y, epochs=50, batch_size=10, seed=3, progress=False)
    finally:
        done.set()
        watcher.join()
    history = caught.value.history
    assert history is step.history and len(history.loss) == 1
    assert 1 <= opt.t < 20_000, "stopped inside the first epoch, not at its end"
    np.testing.assert_array_equal(opt.flat, _reference_steps(opt.t, X, Y, 10).flat)


# ----------------------------------------------------------------------------- item 18: arguments
@pytest.mark.parametrize("kwargs, name", [
    (dict(batch_size=5.0), "batch_size"), (dict(batch_size=True), "batch_size"),
    (dict(batch_size="8"), "batch_size"), (dict(batch_size=0), "batch_size"),
    (dict(batch_size=1000), "batch_size"), (dict(epochs=2.5), "epochs"),
    (dict(epochs=-1), "epochs"), (dict(epochs="3"), "epochs"), (dict(seed="a"), "seed"),
    (dict(seed=1.5), "seed"), (dict(scheduler=object()), "scheduler"),
])
def test_bad_fit_arguments_raise_fastgrad_errors_naming_them(kwargs, name):
    """Every bad fit argument raises FastgradError naming the argument and the fix, before
    anything trains."""
    X, Y = digits_like(20)
    model, opt, step = tiny_classifier()
    with pytest.raises(fg.FastgradError, match=rf"fit: {name} .*Fix:"):
        fg.fit(step, X, Y, **{"progress": False, **kwargs})
    assert opt.t == 0


@pytest.mark.parametrize("X, Y, what", [
    (np.float64(1.0), np.array([0]), "X"), (np.ones((4, 4)), np.int64(1), "Y"),
    (np.ones((4, 4)), np.array([0, 1]), "rows"), (np.ones((0, 4)), np.zeros(0, int), "rows"),
    (np.ones((4, 4)), np.array([0.5, 1, 2, 0]), "integers"),
])
def test_bad_fit_data_raises_fastgrad_errors(X, Y, what):
    """0-d data, mismatched or empty rows, float labels for a classifier: FastgradError."""
    model, opt, step = tiny_classifier()
    with pytest.raises(fg.FastgradError, match=what):
        fg.fit(step, X, Y, batch_size=2, progress=False)


@pytest.mark.parametrize("kwargs, name", [
    (dict(fn=3), "fn"), (dict(optimizer="sgd"), "optimizer"), (dict(params=[3.0]), "params"),
    (dict(params=5), "params"), (dict(clip_grad_norm=-1.0), "clip_grad_norm"),
    (dict(clip_grad_norm="a"), "clip_grad_norm"), (dict(clip_grad_norm=float("nan")),
                                                    "clip_grad_norm"),
    (dict(clip_grad_value=float("inf")), "clip_grad_value"),
    (dict(clip_grad_value=[1.0]), "clip_grad_value"),
])
def test_bad_compile_arguments_raise_fastgrad_errors_naming_them(kwargs, name):
    """fg.compile refuses a bad argument at once, naming it and the fix (not a raw TypeError
    from float() or from the first call)."""
    w = fg.nn.Parameter(np.ones(3))
    args = {"fn": lambda x: (x * w).sum(), **kwargs}
    with pytest.raises(fg.FastgradError, match=rf"compile: {name} .*Fix:"):
        fg.compile(**args)


def test_a_call_with_the_wrong_number_of_inputs_is_refused_by_name():
    """A compiled step called with more or fewer inputs than its function takes raises
    FastgradError (still a TypeError) naming the function's signature, before tracing."""
    model, opt, step = tiny_classifier()
    X, Y = digits_like(4)
    for args in ((X,), (X, Y, Y), ()):
        with pytest.raises(fg.FastgradError, match=r"compile: the compiled function \(x, y\) "
                           rf"cannot take {len(args)} input"):
            step(*args)
    assert step.programs == {} and opt.t == 0


def test_fit_needs_a_compiled_step_with_an_optimizer():
    w = fg.nn.Parameter(np.ones(4))
    with pytest.raises(fg.FastgradError, match="fit: step"):
        fg.fit(fg.compile(lambda x, y: ((x @ w - y) ** 2).sum()), np.ones((4, 4)), np.ones(4),
               progress=False)


@pytest.mark.parametrize("kwargs", [dict(shuffle="yes"), dict(shuffle=None),
                                    dict(drop_last="no"), dict(drop_last=2)])
def test_fit_flags_must_be_booleans(kwargs):
    """``shuffle="yes"`` was read as truthy; a flag is True or False (or 0/1), as elsewhere."""
    X, Y = digits_like(32)
    _, _, step = tiny_classifier()
    name = next(iter(kwargs))
    with pytest.raises(fg.FastgradError, match=f"fit: {name} must be True or False"):
        fg.fit(step, X, Y, epochs=1, batch_size=8, progress=False, **kwargs)


def test_integer_features_train_alike_in_eager_ops_a_compiled_step_and_fit():
    """One rule for integer inputs in float positions: cast to the model's dtype, in every
    path (before, a compiled step refused uint8 pixels that eager ops and fit took)."""
    X = np.random.default_rng(0).integers(0, 255, (16, 4)).astype(np.uint8)
    Y = (np.arange(16) % 3).astype(np.int64)
    losses = []
    for path in ("eager", "step", "fit"):
        model, opt, step = tiny_classifier()
        if path == "eager":
            for k in range(0, 16, 8):
                opt.options["lr"] = 0.1
                for p in model.parameters():
                    p.grad = None
                loss = fg.cross_entropy(model(X[k:k + 8]), Y[k:k + 8])
                loss.backward()
                opt.step()
        elif path == "step":
            for k in range(0, 16, 8):
                step(X[k:k + 8], Y[k:k + 8])
        else:
            fg.fit(step, X, Y, epochs=1, batch_size=8, shuffle=False, progress=False)
        losses.append(opt.flat.copy())
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(losses[1], losses[2], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("enabled", ["yes", None, 2])
def test_detect_anomaly_takes_a_boolean(enabled):
    with pytest.raises(fg.FastgradError, match="detect_anomaly: enabled must be True or False"):
        with fg.detect_anomaly(enabled):
            pass


def test_another_exception_during_a_fit_epoch_stops_it_consistently():
    """An exception from another signal handler (here SIGALRM) while an epoch runs on fit's
    worker thread stops that epoch after its running batch before fit re-raises: no thread
    trains on after fit returned, and opt.t counts exactly the batches taken."""
    X, Y = digits_like(200_000)
    model, opt, step = tiny_classifier()

    def alarm(signum, frame):
        raise TimeoutError("alarm")
    start, done = opt.flat.copy(), threading.Event()

    def alarm_once_training_moves():
        while not done.is_set():
            if not np.array_equal(opt.flat, start):
                os.kill(os.getpid(), signal.SIGALRM)
                return
    previous = signal.signal(signal.SIGALRM, alarm)
    watcher = threading.Thread(target=alarm_once_training_moves)
    watcher.start()
    try:
        with pytest.raises(TimeoutError):
            fg.fit(step, X, Y, epochs=50, batch_size=10, seed=3, progress=False)
    finally:
        done.set()
        watcher.join()
        signal.signal(signal.SIGALRM, previous)
    for t in threading.enumerate():  # done, or about to end: not training on
        if t.name == "fastgrad-fit-epoch":
            t.join(5)
            assert not t.is_alive()
    after = opt.flat.copy()
    assert 1 <= opt.t < 20_000, "stopped inside the first epoch (the alarm comes early in it)"
    time.sleep(0.2)  # a worker left training would move the parameters meanwhile
    np.testing.assert_array_equal(opt.flat, after)
    np.testing.assert_array_equal(after, _reference_steps(opt.t, X, Y, 10).flat)


def test_an_integer_input_used_as_labels_and_as_floats_gets_an_error_that_says_so():
    model, opt, step = tiny_classifier()
    both = fg.compile(lambda x, y: fg.cross_entropy(model(x), y) + (y * 1.0).sum() * 0,
                      optimizer=opt)
    X, Y = digits_like(8)
    with pytest.raises(fg.FastgradError, match=r"integer input\(s\) \[1\] are used in float"):
        both(X, Y)
