"""Trusted state: optimizer and scheduler state that resumes exactly or is refused by name, and a
kernel cache that survives damage.

- Optimizers: every option, ``t`` and the state buffers given to ``load_state_dict`` (or to the
  constructor, ``opt.options``, ``opt.lr``) are checked as the constructor checks them; a
  refused state changes nothing.
- Schedulers: ``state_dict``/``load_state_dict`` as PyTorch's, ``fg.save``/``fg.load`` store
  them, and a run interrupted, saved, loaded into fresh objects and resumed follows the
  uninterrupted run bit for bit.
- Kernel cache: a damaged index, a truncated, bit-flipped or empty data file, and a directory
  that cannot take files each log one warning naming the directory; the kernel is compiled
  and the program goes on (each fault in a fresh interpreter).
"""

import copy
import errno
import importlib
import math
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastgrad as fg

FAST = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _adam(**options):
    w = fg.nn.Parameter(np.array([1.0, -2.0, 0.5]))
    opt = fg.optim.Adam([w], lr=0.05, **options)
    for _ in range(3):
        opt.zero_grad()
        (w**4).sum().backward()
        opt.step()
    return w, opt


def _same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if key == "state":
            for x, y in zip(a[key], b[key]):
                np.testing.assert_array_equal(x, y)
        else:
            assert a[key] == b[key], key


# ----------------------------------------------------------------------------- optimizer state
def _edit(state, path, value):
    state = copy.deepcopy(state)
    if path[0] == "options" and len(path) > 1:
        state["options"][path[1]] = value
    elif path[0] == "drop":
        del state[path[1]]
    else:
        state[path[0]] = value
    return state


BAD_ADAM_STATES = {
    "t=-1": (("t",), -1, "t"),
    "t=2.5": (("t",), 2.5, "t"),
    "t=True": (("t",), True, "t"),
    "t=2**70": (("t",), 2**70, "t"),
    "lr=None": (("options", "lr"), None, "lr"),
    "lr=-5": (("options", "lr"), -5, "lr"),
    "lr=nan": (("options", "lr"), math.nan, "lr"),
    "lr=inf": (("options", "lr"), math.inf, "lr"),
    "lr='0.1'": (("options", "lr"), "0.1", "lr"),
    "eps=-1": (("options", "eps"), -1.0, "eps"),
    "weight_decay=nan": (("options", "weight_decay"), math.nan, "weight_decay"),
    "betas one element": (("options", "betas"), (0.9,), "betas"),
    "betas=(1, 0.9)": (("options", "betas"), (1.0, 0.9), "betas"),
    "betas=None": (("options", "betas"), None, "betas"),
    "amsgrad='yes'": (("options", "amsgrad"), "yes", "amsgrad"),
    "options None": (("options",), None, "options"),
    "unknown option": (("options", "momentum"), 0.9, "momentum"),
    "partial Adam state (two buffers)": (("state",), "two", "state"),
    "partial Adam state (one buffer)": (("state",), "one", "state"),
    "buffer of the wrong shape": (("state",), "shape", "buffer"),
    "buffer of the wrong dtype": (("state",), "dtype", "buffer"),
    "buffer of strings": (("state",), "strings", "buffer"),
    "state None": (("state",), None, "state"),
    "type of another optimizer": (("type",), "SGD", "SGD"),
    "t missing": (("drop", "t"), None, "'t'"),
    "unknown field": (("momentum_buffer",), 1, "momentum_buffer"),
}


@pytest.mark.parametrize("case", sorted(BAD_ADAM_STATES))
def test_optimizer_load_state_dict_refuses_what_the_constructor_refuses_and_changes_nothing(case):
    """Each bad field of an Adam state (t < 0 or not an integer, lr None/negative/NaN/inf, a
    one-element betas, a partial state, buffers of the wrong shape or dtype, ...) raises a
    FastgradError naming the field; the optimizer keeps its state and still steps."""
    w, opt = _adam()
    path, value, named = BAD_ADAM_STATES[case]
    good = opt.state_dict()
    buffers = good["state"]
    value = {"two": buffers[:2], "one": buffers[:1],
             "shape": [buffers[0], buffers[1], np.zeros(4)],
             "dtype": [b.astype(np.float32) for b in buffers],
             "strings": [buffers[0], buffers[1], np.array(["a", "b", "c"])]}.get(value, value) \
        if isinstance(value, str) and path == ("state",) else value
    before, w_before = opt.state_dict(), w.numpy().copy()
    with pytest.raises(fg.FastgradError, match="Adam.load_state_dict") as err:
        opt.load_state_dict(_edit(good, path, value))
    assert named in str(err.value) and "Fix:" in str(err.value)
    _same_state(opt.state_dict(), before)
    np.testing.assert_array_equal(w.numpy(), w_before)
    opt.zero_grad()
    (w**4).sum().backward()
    opt.step()
    assert np.isfinite(w.numpy()).all()


@pytest.mark.parametrize("opt_class", [fg.optim.SGD, fg.optim.Adam, fg.optim.RMSprop,
                                       fg.optim.Adagrad, fg.optim.AdamW])
@pytest.mark.parametrize("bad", [None, 3, "state", [1, 2]])
def test_load_state_dict_of_something_not_a_state_dict_is_refused_by_name(opt_class, bad):
    """``load_state_dict(None)`` (and other non-dicts) raise FastgradError, not a raw
    AttributeError; so does a Module's."""
    opt = opt_class([fg.nn.Parameter(np.zeros(2))], lr=0.1)
    with pytest.raises(fg.FastgradError, match="load_state_dict: expected the dict"):
        opt.load_state_dict(bad)
    with pytest.raises(fg.FastgradError, match="load_state_dict: expected the dict"):
        fg.nn.Linear(2, 2, seed=0).load_state_dict(bad)


BAD_CONSTRUCTIONS = {
    "Adam betas one element": (fg.optim.Adam, dict(betas=(0.9,)), "betas"),
    "Adam betas a number": (fg.optim.Adam, dict(betas=0.9), "betas"),
    "Adam beta2 = 1": (fg.optim.Adam, dict(betas=(0.9, 1.0)), "betas"),
    "Adam eps < 0": (fg.optim.Adam, dict(eps=-1e-8), "eps"),
    "AdamW lr nan": (fg.optim.AdamW, dict(lr=math.nan), "lr"),
    "SGD lr None": (fg.optim.SGD, dict(lr=None), "lr"),
    "SGD lr a string": (fg.optim.SGD, dict(lr="0.1"), "lr"),
    "SGD momentum < 0": (fg.optim.SGD, dict(momentum=-0.9), "momentum"),
    "SGD weight_decay inf": (fg.optim.SGD, dict(weight_decay=math.inf), "weight_decay"),
    "SGD nesterov a string": (fg.optim.SGD, dict(nesterov="yes"), "nesterov"),
    "SGD dampening nan": (fg.optim.SGD, dict(dampening=math.nan), "dampening"),
    "RMSprop alpha > 1": (fg.optim.RMSprop, dict(alpha=1.5), "alpha"),
    "RMSprop centered None": (fg.optim.RMSprop, dict(centered=None), "centered"),
    "Adagrad lr_decay < 0": (fg.optim.Adagrad, dict(lr_decay=-1.0), "lr_decay"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONSTRUCTIONS))
def test_optimizer_constructor_refuses_bad_options_by_name(case):
    opt_class, options, named = BAD_CONSTRUCTIONS[case]
    with pytest.raises(fg.FastgradError, match=f"{opt_class.__name__}: option {named} must be"):
        opt_class([fg.nn.Parameter(np.zeros(2))], **options)


@pytest.mark.parametrize("params", [None, 5, "w", fg.nn.Parameter(np.zeros(2)),
                                    fg.nn.Linear(2, 2, seed=0)])
def test_optimizer_params_that_are_not_an_iterable_of_parameters_are_refused(params):
    with pytest.raises(fg.FastgradError, match="SGD: params must be an iterable"):
        fg.optim.SGD(params, lr=0.1)


def test_lr_may_be_given_positionally_as_in_pytorch_and_nothing_else():
    """``SGD(params, 0.1)`` raised a raw TypeError; it is PyTorch's usual spelling."""
    assert fg.optim.SGD([fg.nn.Parameter(np.zeros(2))], 0.1).lr == 0.1
    assert fg.optim.Adam([fg.nn.Parameter(np.zeros(2))], 0.01).lr == 0.01
    assert fg.optim.SGD([fg.nn.Parameter(np.zeros(2))], lr=np.array(0.5)).hyper()[0] == 0.5
    with pytest.raises(fg.FastgradError, match="SGD: got 2 positional options"):
        fg.optim.SGD([fg.nn.Parameter(np.zeros(2))], 0.1, 0.9)
    with pytest.raises(fg.FastgradError, match="SGD: got 1 positional options and lr="):
        fg.optim.SGD([fg.nn.Parameter(np.zeros(2))], 0.1, lr=0.2)
    with pytest.raises(fg.FastgradError, match="SGD: option lr must be"):
        fg.optim.SGD([fg.nn.Parameter(np.zeros(2))], None)


def test_a_parameter_passed_twice_is_refused():
    """It would get two slots of ``flat`` and view only the second."""
    w = fg.nn.Parameter(np.zeros(2))
    with pytest.raises(fg.FastgradError, match="more than once"):
        fg.optim.SGD([w, w], lr=0.1)


def test_options_changed_in_place_are_checked_at_the_next_step_eager_and_compiled():
    """``opt.options["lr"] = None`` (as a PyTorch user edits param_groups) is refused at the
    next step by name, before the kernel reads it; so are ``opt.lr = "x"`` and assigning an
    options dict with a missing key."""
    w = fg.nn.Parameter(np.array([1.0, 2.0]))
    opt = fg.optim.SGD([w], lr=0.1, momentum=0.9)
    (w * w).sum().backward()
    opt.options["lr"] = None
    with pytest.raises(fg.FastgradError, match="SGD.step: option lr must be"):
        opt.step()
    opt.options["lr"] = 0.1
    opt.options["momentum"] = math.nan
    step = fg.compile(lambda: (w * w).sum(), optimizer=opt)
    with pytest.raises(fg.FastgradError, match="SGD.step: option momentum must be"):
        step()
    opt.options["momentum"] = 0.9
    step()
    with pytest.raises(fg.FastgradError, match="SGD.lr: lr must be"):
        opt.lr = "x"
    with pytest.raises(fg.FastgradError, match=r"SGD.options: options \['dampening'"):
        opt.options = {k: v for k, v in opt.options.items() if k != "dampening"}
    with pytest.raises(fg.FastgradError, match="SGD.options: expected a dict"):
        opt.options = None
    assert np.isfinite(w.numpy()).all() and opt.lr == 0.1


def test_a_gradient_of_the_wrong_shape_is_refused_not_broadcast():
    """A (1,) .grad on a (3,) parameter would broadcast over its whole slot."""
    w = fg.nn.Parameter(np.zeros(3))
    opt = fg.optim.SGD([w], lr=0.1)
    w.grad = np.array([5.0])
    with pytest.raises(fg.FastgradError, match=r"SGD.step: parameter 0 of shape \(3,\)"):
        opt.step()
    w.grad = np.array(["a", "b", "c"])
    with pytest.raises(fg.FastgradError, match="SGD.step"):
        opt.step()
    np.testing.assert_array_equal(w.numpy(), np.zeros(3))
    assert opt.t == 0


HOSTILE = st.sampled_from([None, -1, 0, 1, 2.5, -5.0, math.nan, math.inf, -math.inf, 1e308,
                           True, "0.1", (), (0.9,), (0.9, 0.999), [0.5, 0.5], (1.0, 0.5),
                           np.float32(0.01), np.int64(3), 2**70, {}, np.zeros(3)])


@FAST
@given(field=st.sampled_from(["lr", "betas", "eps", "weight_decay", "amsgrad", "t"]),
       value=HOSTILE)
def test_fuzz_a_loaded_adam_state_is_accepted_exactly_when_the_constructor_accepts_it(
        field, value):
    """Any value in any field: ``load_state_dict`` refuses it by name, changing nothing,
    exactly when the constructor refuses it (``t``: exactly when it is not an integer in
    [0, 2**62)); accepted, the optimizer steps exactly as one built with that option."""
    w, opt = _adam()
    state = opt.state_dict()
    if field == "t":
        state["t"] = value
        valid = (isinstance(value, (int, np.integer)) and not isinstance(value, bool)
                 and 0 <= value < 2**62)
    else:
        state["options"][field] = value
        try:
            fg.optim.Adam([fg.nn.Parameter(np.zeros(3))], **{field: value})
            valid = True
        except fg.FastgradError:
            valid = False
    before = opt.state_dict()
    try:
        opt.load_state_dict(state)
    except fg.FastgradError as e:
        assert not valid
        assert "Adam.load_state_dict" in str(e) and field in str(e)
        _same_state(opt.state_dict(), before)
        return
    assert valid
    twin_w = fg.nn.Parameter(w.numpy().copy())
    twin = fg.optim.Adam([twin_w], **state["options"])
    twin.t = state["t"]
    for mine, theirs in zip(twin.state, state["state"]):
        mine[...] = theirs
    for o, p in ((opt, w), (twin, twin_w)):
        o.zero_grad()
        (p**4).sum().backward()
        o.step()
    np.testing.assert_array_equal(w.numpy(), twin_w.numpy())


# ----------------------------------------------------------------------------- schedulers
def test_scheduler_state_dict_has_pytorchs_fields_and_loads_into_a_rebuilt_scheduler():
    """A scheduler rebuilt over an optimizer whose lr already decayed takes ``base_lrs`` from
    the loaded state, not from that lr."""
    opt = fg.optim.SGD([fg.nn.Parameter(np.zeros(2))], lr=1.0)
    sched = fg.optim.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(3):
        sched.step()
    state = sched.state_dict()
    assert state == {"type": "StepLR", "last_epoch": 3, "base_lrs": [1.0], "_last_lr": [0.5],
                     "step_size": 2, "gamma": 0.5}
    rebuilt = fg.optim.StepLR(opt, step_size=2, gamma=0.5)  # built at lr 0.5
    assert rebuilt.base_lrs == [0.5]
    rebuilt.load_state_dict(state)
    assert (rebuilt.base_lrs, rebuilt.last_epoch, rebuilt.epoch) == ([1.0], 3, 3)
    assert rebuilt.get_last_lr() == [0.5]
    rebuilt.step()
    assert opt.lr == 0.25 and rebuilt.get_last_lr() == [0.25]
    cos = fg.optim.CosineAnnealingLR(opt, T_max=10, eta_min=0.01)
    assert set(cos.state_dict()) == {"type", "last_epoch", "base_lrs", "_last_lr", "T_max",
                                     "eta_min"}


BAD_SCHEDULER_STATES = {
    "None": (None, "expected the dict"),
    "type of another scheduler": (dict(type="CosineAnnealingLR"), "CosineAnnealingLR"),
    "last_epoch=-1": (dict(last_epoch=-1), "last_epoch"),
    "last_epoch=1.5": (dict(last_epoch=1.5), "last_epoch"),
    "base_lrs=[nan]": (dict(base_lrs=[math.nan]), "base_lrs"),
    "base_lrs=[]": (dict(base_lrs=[]), "base_lrs"),
    "base_lrs=None": (dict(base_lrs=None), "base_lrs"),
    "_last_lr=[-1]": (dict(_last_lr=[-1.0]), "_last_lr"),
    "step_size=0": (dict(step_size=0), "step_size"),
    "step_size=2.5": (dict(step_size=2.5), "step_size"),
    "gamma=inf": (dict(gamma=math.inf), "gamma"),
    "gamma missing": ("drop-gamma", "gamma"),
    "unknown field": (dict(T_max=3), "T_max"),
}


@pytest.mark.parametrize("case", sorted(BAD_SCHEDULER_STATES))
def test_scheduler_load_state_dict_refuses_bad_fields_by_name_and_changes_nothing(case):
    opt = fg.optim.SGD([fg.nn.Parameter(np.zeros(2))], lr=1.0)
    sched = fg.optim.StepLR(opt, step_size=2, gamma=0.5)
    sched.step()
    edit, named = BAD_SCHEDULER_STATES[case]
    if edit is None:
        state = None
    elif edit == "drop-gamma":
        state = {k: v for k, v in sched.state_dict().items() if k != "gamma"}
    else:
        state = {**sched.state_dict(), **edit}
    before = sched.state_dict()
    with pytest.raises(fg.FastgradError, match="StepLR.load_state_dict") as err:
        sched.load_state_dict(state)
    assert named in str(err.value)
    assert sched.state_dict() == before


@pytest.mark.parametrize("build, named", [
    (lambda o: fg.optim.StepLR(o, step_size=0), "step_size"),
    (lambda o: fg.optim.StepLR(o, step_size=2.5), "step_size"),
    (lambda o: fg.optim.StepLR(o, step_size=2, gamma=math.nan), "gamma"),
    (lambda o: fg.optim.StepLR(o, step_size=2, gamma="0.5"), "gamma"),
    (lambda o: fg.optim.CosineAnnealingLR(o, T_max=0), "T_max"),
    (lambda o: fg.optim.CosineAnnealingLR(o, T_max=4, eta_min=-1.0), "eta_min"),
    (lambda o: fg.optim.StepLR(None, step_size=2), "expected an optimizer"),
    (lambda o: fg.optim.CosineAnnealingLR(o.params, T_max=4), "expected an optimizer"),
])
def test_scheduler_constructors_refuse_bad_arguments_by_name(build, named):
    """T_max=0 used to raise a raw ZeroDivisionError at the first step; step_size=2.5 was
    truncated to 2."""
    opt = fg.optim.SGD([fg.nn.Parameter(np.zeros(2))], lr=1.0)
    with pytest.raises(fg.FastgradError, match=named):
        build(opt)


def test_a_schedule_that_overflows_the_learning_rate_is_refused_at_its_step():
    opt = fg.optim.SGD([fg.nn.Parameter(np.zeros(2))], lr=1.0)
    sched = fg.optim.StepLR(opt, step_size=1, gamma=1e300)
    sched.step()
    with pytest.raises(fg.FastgradError, match="lr must be"):
        sched.step()
    assert opt.lr == 1e300 and sched.last_epoch == 1


def test_fg_save_stores_a_scheduler_as_its_state_dict(tmp_path):
    opt = fg.optim.SGD([fg.nn.Parameter(np.zeros(2))], lr=1.0, momentum=0.9)
    sched = fg.optim.CosineAnnealingLR(opt, T_max=5, eta_min=0.1)
    sched.step()
    fg.save({"optimizer": opt, "scheduler": sched}, tmp_path / "ck.npz")
    back = fg.load(tmp_path / "ck.npz")
    assert back["scheduler"] == sched.state_dict()
    again = fg.optim.CosineAnnealingLR(opt, T_max=5)
    again.load_state_dict(back["scheduler"])
    assert again.state_dict() == sched.state_dict()


def _train(opt_name, sched_name, compiled, epochs, tmp_path, interrupt_at=None):
    """Train a small MLP for ``epochs`` epochs of 3 steps with a scheduler stepped per epoch;
    with ``interrupt_at``, save everything after that epoch, rebuild every object from scratch
    (another seed; optimizer state loaded before the scheduler is built, as in the issue)
    and continue. Returns the parameters after every step and the lr of every epoch."""
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(3, 8, 4)), rng.integers(0, 3, size=(3, 8))

    def build(seed, state=None):
        model = fg.nn.MLP([4, 6, 3], seed=seed)
        opt = (fg.optim.SGD(model.parameters(), lr=0.2, momentum=0.9) if opt_name == "sgd"
               else fg.optim.Adam(model.parameters(), lr=0.05))
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
        sched = (fg.optim.StepLR(opt, step_size=2, gamma=0.5) if sched_name == "step"
                 else fg.optim.CosineAnnealingLR(opt, T_max=5, eta_min=0.001))
        if state is not None:
            sched.load_state_dict(state["scheduler"])
        step = fg.compile(lambda x, y: fg.cross_entropy(model(x), y), optimizer=opt)
        return model, opt, sched, step

    model, opt, sched, step = build(seed=1)
    params, lrs = [], []
    for epoch in range(epochs):
        if epoch == interrupt_at:
            path = tmp_path / f"ck-{opt_name}-{sched_name}-{compiled}.npz"
            fg.save({"model": model, "optimizer": opt, "scheduler": sched}, path)
            model, opt, sched, step = build(seed=2, state=fg.load(path))
        for x, y in zip(X, Y):
            if compiled:
                step(x, y)
            else:
                opt.zero_grad()
                fg.cross_entropy(model(fg.tensor(x)), y).backward()
                opt.step()
            params.append(opt.flat.copy())
        lrs.append(opt.lr)
        sched.step()
    return params, lrs


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("sched_name", ["step", "cosine"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_a_resumed_run_with_a_scheduler_follows_the_uninterrupted_run_bit_for_bit(
        opt_name, sched_name, compiled, tmp_path):
    """Interrupted after epoch 3 of 6, saved with fg.save, loaded into fresh objects and
    resumed: parameters after every step and the lr of every epoch are identical."""
    whole, whole_lrs = _train(opt_name, sched_name, compiled, 6, tmp_path)
    resumed, resumed_lrs = _train(opt_name, sched_name, compiled, 6, tmp_path, interrupt_at=3)
    assert resumed_lrs == whole_lrs and len(set(whole_lrs)) > 1
    for a, b in zip(whole, resumed):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- kernel cache
jit = importlib.import_module("fastgrad.kernels._jit")

TINY = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s:%(name)s:%(message)s")
    if len(sys.argv) > 1 and sys.argv[1] == "disk-full":
        import errno
        from numba.core import caching

        def full(self, path):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        caching.IndexDataCacheFile._open_for_write = full
    # kernels/_jit.py alone (it needs only Numba): the child skips importing all of fastgrad
    import importlib.util
    spec = importlib.util.spec_from_file_location("fastgrad_jit", {jit_file!r})
    _jit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(_jit)
    jit = _jit.jit_entry  # Python calls the kernel below

    @jit
    def add_one(x):
        return x + 1.0

    if len(sys.argv) > 1 and sys.argv[1] == "not-a-directory":
        # the kernel's cache directory, chosen and created, turns into a file before the save
        import os, shutil
        shutil.rmtree(add_one._cache.cache_path, ignore_errors=True)
        with open(add_one._cache.cache_path, "w") as f:
            f.write("not a directory")
    print(add_one(1.5), add_one.stats.cache_hits[add_one.signatures[0]])
""")


def _tiny_script(directory):
    script = directory / "tiny_kernel.py"
    script.write_text(TINY.replace("{jit_file!r}", repr(jit.__file__)))
    return script


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """A tiny kernel compiled into a fresh cache by a fresh interpreter: (script, cache)."""
    directory = tmp_path_factory.mktemp("tiny")
    script, cache = _tiny_script(directory), directory / "cache"
    assert _run_tiny(script, cache) == (0, [])
    return script, cache


def _run_tiny(script, cache, *args, **env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("FASTGRAD_DISABLE_CACHE",
                                                             "NUMBA_CACHE_DIR")}
    env["FASTGRAD_CACHE_DIR"] = str(cache)
    env.update(env_extra)
    run = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True,
                         text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    value, hits = run.stdout.split()
    assert float(value) == 2.5
    warnings = [line for line in run.stderr.splitlines() if line.startswith("WARNING:fastgrad")]
    return int(hits), warnings


def _damage(files, how):
    for f in files:
        data = f.read_bytes()
        if how == "garbage":
            f.write_bytes(b"\x80\x04not a pickle at all" + data[::-1])
        elif how == "truncate":
            f.write_bytes(data[: len(data) // 2])
        elif how == "flip":
            flipped = bytearray(data)
            flipped[len(flipped) * 2 // 3] ^= 0x10
            f.write_bytes(bytes(flipped))
        elif how == "empty":
            f.write_bytes(b"")


@pytest.mark.parametrize("fault", ["corrupted index", "truncated data", "bit-flipped data",
                                   "empty data", "empty index"])
def test_a_damaged_kernel_cache_warns_once_recompiles_and_is_repaired(fault, tiny_cache,
                                                                       tmp_path):
    """A fresh interpreter compiled a tiny kernel into a fresh cache; the file is damaged; the
    next interpreter logs ONE warning on the ``fastgrad`` logger naming the cache directory,
    compiles, gives the right value and rewrites the entry, so a third loads it silently."""
    script, cache = tiny_cache[0], tmp_path / "cache"
    shutil.copytree(tiny_cache[1], cache)
    suffix, how = {"corrupted index": (".nbi", "garbage"), "truncated data": (".nbc", "truncate"),
                   "bit-flipped data": (".nbc", "flip"), "empty data": (".nbc", "empty"),
                   "empty index": (".nbi", "empty")}[fault]
    files = sorted(cache.rglob("tiny_kernel.add_one-*" + suffix))
    assert len(files) == 1
    _damage(files, how)
    hits, warnings = _run_tiny(script, cache)
    assert hits == 0 and len(warnings) == 1, warnings
    assert str(cache) in warnings[0] and "compiling the kernels instead" in warnings[0]
    assert _run_tiny(script, cache) == (1, [])


@pytest.mark.parametrize("fault", ["disk full", "directory replaced by a file",
                                   "directory a file before the kernel is defined"])
def test_a_cache_directory_that_cannot_take_files_warns_once_and_compiles_in_memory(
        fault, tiny_cache, tmp_path):
    """Writing fails (ENOSPC on every cache write, or the kernel's cache directory replaced by
    a regular file after fastgrad chose it, or before the kernel is defined): one warning
    naming the directory, the value is right, the interpreter exits cleanly, and no cache or
    temp file is left, in the cache or beside the source (Numba's own fallback, a
    ``__pycache__`` keyed on the kernel's file alone, could serve stale code)."""
    if fault == "directory a file before the kernel is defined":
        script, cache = tiny_cache[0], tmp_path / "cache"
        shutil.copytree(tiny_cache[1], cache)
        (kernel_dir,) = {f.parent for f in cache.rglob("*.nbi")}
        shutil.rmtree(kernel_dir)
        kernel_dir.write_text("not a directory")
        hits, warnings = _run_tiny(script, cache)
    else:
        script, cache = _tiny_script(tmp_path), tmp_path / "cache"
        mode = {"disk full": "disk-full", "directory replaced by a file": "not-a-directory"}
        hits, warnings = _run_tiny(script, cache, mode[fault])
    assert not list(cache.rglob("*.nb*")) and not list(cache.rglob("*.tmp.*"))
    assert not list(script.parent.rglob("__pycache__/*.nb*"))
    assert hits == 0 and len(warnings) == 1, warnings
    assert str(cache) in warnings[0] and "compiling the kernels instead" in warnings[0]


def test_a_fastgrad_cache_dir_that_is_not_a_directory_is_named_in_a_warning(tmp_path):
    """FASTGRAD_CACHE_DIR pointing at a regular file: the cache goes to the next candidate
    (here the XDG cache folder), and one warning says so, naming both; before, silently."""
    script, not_a_dir = _tiny_script(tmp_path), tmp_path / "a-file"
    not_a_dir.write_text("not a directory")
    xdg = tmp_path / "xdg"
    hits, warnings = _run_tiny(script, not_a_dir, XDG_CACHE_HOME=str(xdg))
    assert hits == 0 and len(warnings) == 1, warnings
    assert f"FASTGRAD_CACHE_DIR={not_a_dir}" in warnings[0] and str(xdg) in warnings[0]
    assert list(xdg.rglob("*.nbi"))  # the kernel was cached there


def test_every_cached_fastgrad_kernel_uses_the_checked_cache():
    """The check is in the decorator every kernel goes through, not beside one kernel."""
    import numba

    dispatchers = [obj for name in ("replay", "optim", "train", "scan", "elementwise", "blas")
                   for obj in vars(importlib.import_module(f"fastgrad.kernels.{name}")).values()
                   if isinstance(obj, numba.core.registry.CPUDispatcher)]
    assert len(dispatchers) > 20
    if jit.CACHE_ENABLED:
        assert all(isinstance(d._cache, jit.CheckedFunctionCache) for d in dispatchers)


@FAST
@given(payload=st.binary(min_size=0, max_size=200), cut=st.integers(0, 10_000),
       bit=st.integers(0, 8 * 10_000), how=st.sampled_from(["truncate", "flip", "append"]))
def test_fuzz_any_truncation_or_bit_flip_of_a_sealed_cache_file_is_detected(payload, cut, bit,
                                                                           how):
    """``_unseal`` returns the payload of an intact file and raises CacheDamaged for every
    truncation, single bit flip or appended byte (before anything is unpickled)."""
    blob = jit._seal(payload)
    assert jit._unseal(blob, "f") == payload
    if how == "truncate":
        damaged = blob[: cut % len(blob)]
    elif how == "flip":
        b = bytearray(blob)
        b[(bit // 8) % len(b)] ^= 1 << (bit % 8)
        damaged = bytes(b)
    else:
        damaged = blob + b"\x00"
    with pytest.raises(jit.CacheDamaged):
        jit._unseal(damaged, "f")


def test_cache_fault_helper_warns_once_per_directory(caplog, monkeypatch):
    monkeypatch.setattr(jit, "_warned_dirs", set())
    monkeypatch.setattr(jit, "unwritable_dirs", set())
    with caplog.at_level("WARNING", logger="fastgrad"):
        for _ in range(3):
            jit._cache_fault(pathlib.Path("cache-a"), "written",
                             OSError(errno.ENOSPC, "No space left on device"), unwritable=True)
        jit._cache_fault("cache-b", "read", EOFError("Ran out of input"))
    assert [r.getMessage().split(" could")[0] for r in caplog.records] == [
        "fastgrad: the kernel cache in cache-a", "fastgrad: the kernel cache in cache-b"]
    assert jit.unwritable_dirs == {"cache-a"}


# ------------------------------------------------- two optimizers over one parameter
def _two_optimizers():
    model = fg.nn.Linear(3, 2, seed=0)
    first = fg.optim.SGD(model.parameters(), lr=0.1)
    second = fg.optim.Adam(model.parameters(), lr=0.1)
    return model, first, second


def test_an_optimizer_whose_parameter_a_later_optimizer_took_refuses_to_step():
    """Each optimizer keeps its parameters' values in its own flat buffer, so the later one
    re-points the parameter: the first one's updates would silently miss the model."""
    model, first, second = _two_optimizers()
    (model(np.ones((4, 3))) ** 2).sum().backward()
    with pytest.raises(fg.FastgradError, match=r"SGD\.step: parameter 0 .* taken over by a Adam"):
        first.step()
    before = model.weight.numpy().copy()
    second.step()  # the newer optimizer owns the parameters and trains them
    assert not np.array_equal(model.weight.numpy(), before)


def test_a_compiled_step_over_the_superseded_optimizer_refuses_too():
    model, first, _ = _two_optimizers()
    step = fg.compile(lambda x: (model(x) ** 2).sum(), optimizer=first)
    with pytest.raises(fg.FastgradError, match="taken over"):
        step(np.ones((4, 3)))


def test_a_new_optimizer_after_a_discarded_one_and_a_deep_copy_are_fine():
    model = fg.nn.Linear(3, 2, seed=0)
    for _ in range(2):  # a new optimizer each round, the old one dropped: ordinary use
        opt = fg.optim.SGD(model.parameters(), lr=0.1)
        (model(np.ones((4, 3))) ** 2).sum().backward()
        opt.step()
    twin = copy.deepcopy(opt)  # its parameters are copies: it supersedes nothing
    opt.step()
    twin.step()
