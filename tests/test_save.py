"""fg.save / fg.load: bit-exact round trips of module state, optimizer state and tapes; atomic
writes; truncated, modified and malicious files are refused with a FastgradError; a run resumed
from a checkpoint continues the uninterrupted trajectory bit for bit."""

import json
import os
from collections import OrderedDict

import numpy as np
import pytest

import fastgrad as fg
from fastgrad import FastgradError
from fastgrad.io import HEADER, _digest
from fastgrad.opcodes import Op


def raises(match):
    return pytest.raises(FastgradError, match=match)


def assert_identical(a, b):
    """Same structure, same types, arrays equal bit for bit with the same dtype."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_identical(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_identical(x, y)
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and np.shape(a) == np.shape(b)
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    elif isinstance(a, float):
        assert np.float64(a).tobytes() == np.float64(b).tobytes()  # -0.0 and NaN included
    else:
        assert a == b


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_module_and_optimizer_state_round_trip_bit_exactly(tmp_path, dtype):
    model = fg.nn.MLP([3, 5, 2], activation="tanh", seed=1, dtype=dtype)
    opt = fg.optim.Adam(model.parameters(), lr=1e-2, amsgrad=True)
    step = fg.compile(lambda x, y: fg.mse_loss(model(x), y), opt)
    rng = np.random.default_rng(0)
    for _ in range(3):
        step(rng.standard_normal((4, 3)), rng.standard_normal((4, 2)))
    path = tmp_path / "state.npz"
    fg.save({"model": model, "optimizer": opt}, path)
    back = fg.load(path)
    assert_identical(back["model"], model.state_dict())
    assert_identical(back["optimizer"], opt.state_dict())
    assert back["model"]["layers.0.weight"].dtype == dtype


def test_plain_values_round_trip_with_their_types(tmp_path):
    obj = {
        "ints": [0, -7, 2**70], "floats": (1.5, -0.0, float("nan"), float("inf")),
        "text": "héllo", "flags": [True, False, None],
        "scalars": [np.float32(1.25), np.int8(-3), np.float64(np.pi)],
        "arrays": [np.arange(6, dtype=np.int16).reshape(2, 3), np.zeros((0, 4), np.float32),
                   np.array([1 + 0j]), np.array(["a", "bc"]), np.array([True, False])],
        "ordered": OrderedDict([("b", 1), ("a", 2)]),
        7: "an int key", ("a", 1): "a tuple key",
    }
    fg.save(obj, tmp_path / "values.npz")
    assert_identical(fg.load(tmp_path / "values.npz"), obj)


def test_tensors_round_trip_as_leaves(tmp_path):
    x = fg.tensor(np.array([1.0, 2.0], np.float32), requires_grad=True)
    fg.save([x, x * 3], tmp_path / "t.npz")
    a, b = fg.load(tmp_path / "t.npz")
    assert isinstance(a, fg.Tensor) and a.requires_grad and a.dtype == np.float32
    assert b.numpy().tolist() == [3.0, 6.0] and b.requires_grad and b.tape is None


def _recorded_tape():
    rng = np.random.default_rng(3)
    w = fg.tensor(rng.standard_normal((4, 3)), requires_grad=True)
    x = fg.tensor(rng.standard_normal((5, 4)))
    h = (x @ w).tanh()
    logits = fg.concatenate([h, h[:, :1] * 2.0], axis=1)
    loss = fg.cross_entropy(logits, np.array([0, 3, 1, 2, 0])) + fg.take(h, np.array([4, -1])).sum()
    return loss, w


def test_a_tape_round_trips_bit_exactly_and_replays_to_the_same_values_and_gradients(tmp_path):
    loss, w = _recorded_tape()
    loss.backward()
    tape = loss.tape
    fg.save(tape, tmp_path / "tape.npz")
    back = fg.load(tmp_path / "tape.npz")
    assert isinstance(back, fg.Tape) and str(back) == str(tape)
    for name in ("ops", "outs", "in_ptr", "in_idx", "ip_ptr", "iparams", "fp_ptr", "fparams",
                 "node_off", "node_size", "node_kind", "node_need", "values", "ivalues"):
        a, b = getattr(tape, name).view, getattr(back, name).view
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
    assert back.shapes == tape.shapes and back.labels == tape.labels
    before = back.values.view.copy()
    back.n_done = 0
    back.flush()  # a full replay by the kernels of the loaded (validated) tape
    assert back.values.view.tobytes() == before.tobytes()
    grads = back.backward(loss.node, np.ones(()))
    (v,) = [v for leaf, v in tape.leaves if leaf is w]
    off, size = int(back.node_off.a[v]), int(back.node_size.a[v])
    assert grads[off : off + size].tobytes() == w.grad.ravel().tobytes()


def test_a_float32_tape_keeps_its_dtype(tmp_path):
    x = fg.tensor(np.linspace(-1, 1, 6, dtype=np.float32), requires_grad=True)
    y = (x.sigmoid() * 2.5).sum()
    fg.save(y.tape, tmp_path / "t32.npz")
    back = fg.load(tmp_path / "t32.npz")
    assert back.dtype == np.float32 and back.fparams.view.dtype == np.float32
    assert back.node_values(y.node).tobytes() == y.numpy().tobytes()


# ----------------------------------------------------------------------------- refusing
def _rewrite(path, change):
    """Apply ``change(arrays, header)`` to a saved file and write it back with a correct
    checksum: what a deliberate edit (or a buggy writer) would produce."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays.pop(HEADER).tobytes())
    change(arrays, header)
    header["digest"] = _digest(header["tree"], arrays)
    arrays[HEADER] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _tape_arrays(arrays, header):
    return {k: arrays[v] for k, v in header["tree"]["$tape"].items() if isinstance(v, str)
            and v in arrays}


def _row_of(tape_arrays, op):
    return int(np.flatnonzero(tape_arrays["ops"] == op)[0])


def _set_ip(t, op, i, value):
    t["iparams"][t["ip_ptr"][_row_of(t, op)] + i] = value


TAMPERINGS = {
    "an op code outside the table": (
        lambda t: t["ops"].__setitem__(0, 999), r"op code 999, which is not in the op table"),
    "an operand id past the last node": (
        lambda t: t["in_idx"].__setitem__(0, 10_000), r"operand or output node id is out of range"),
    "a node outside its arena": (
        lambda t: t["node_off"].__setitem__(-1, 10**9), r"lies outside its arena"),
    "a node read before it is written": (
        lambda t: t["in_idx"].__setitem__(0, int(t["outs"][-1])), r"reads %\d+ before row"),
    "two rows writing one node": (
        lambda t: t["outs"].__setitem__(1, int(t["outs"][0])), r"written by rows 0 and 1"),
    "matmul attributes that read past an operand": (
        lambda t: _set_ip(t, Op.MATMUL, 5, 7), r"\(matmul\).*do not agree with the op's shape rule"),
    "a concat width that does not add up": (
        lambda t: _set_ip(t, Op.CONCAT, 2, 4), r"\(concat\).*do not agree"),
    "a size that disagrees with the shape": (
        lambda t: t["node_size"].__setitem__(0, int(t["node_size"][0]) + 1),
        r"node %0 of shape .* has size"),
    "an index outside the gathered axis": (
        lambda t: t["ivalues"].__setitem__(slice(None), 9), r"holds values outside \[0, \d+\)"),
    "a float node where indices belong": (
        lambda t: t["node_kind"].__setitem__(slice(None), 0), r"operand 1 \(%\d+\) is a float"),
    "overlapping value slots": (
        lambda t: t["node_off"].__setitem__(1, int(t["node_off"][0])), r"overlap|outside"),
    "a broken pointer array": (
        lambda t: t["in_ptr"].__setitem__(1, 10**6), r"in_ptr does not partition"),
}


@pytest.mark.parametrize("what", list(TAMPERINGS))
def test_a_loaded_tape_is_validated_before_any_kernel_sees_it(tmp_path, what):
    """Files edited consistently (checksum recomputed) are still refused when the tape breaks
    an invariant the kernels rely on; the message names the row, op or node."""
    loss, _ = _recorded_tape()
    path = tmp_path / "tape.npz"
    fg.save(loss.tape, path)
    change, message = TAMPERINGS[what]
    _rewrite(path, lambda arrays, header: change(_tape_arrays(arrays, header)))
    with raises(r"load: invalid tape: " + ".*" + message):
        fg.load(path)


def test_truncated_or_corrupted_files_raise_a_clear_error(tmp_path):
    model = fg.nn.MLP([4, 8, 2], seed=0)
    path = tmp_path / "ckpt.npz"
    fg.save(model, path)
    data = path.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        (tmp_path / "cut.npz").write_bytes(data[:cut])
        with raises(r"^load: .*cut\.npz (is not a readable \.npz file|is damaged).*Fix: the "
                    r"file is truncated or was modified"):
            fg.load(tmp_path / "cut.npz")
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF  # inside a stored array: zip CRC or our digest catches it
    (tmp_path / "flip.npz").write_bytes(bytes(flipped))
    with raises(r"^load: .*flip\.npz"):
        fg.load(tmp_path / "flip.npz")


def test_edited_contents_fail_the_checksum(tmp_path):
    path = tmp_path / "ckpt.npz"
    fg.save({"w": np.ones(3), "epoch": 4}, path)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["a0"] = np.ones(3) * 2  # new values, old checksum
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with raises(r"load: .*checksum mismatch, the contents were changed after saving"):
        fg.load(path)


def test_files_not_written_by_save_are_refused(tmp_path):
    np.savez(tmp_path / "plain.npz", w=np.ones(2))
    with raises(r"load: .*plain\.npz has no fastgrad header"):
        fg.load(tmp_path / "plain.npz")
    np.save(tmp_path / "one.npy", np.ones(2))
    with raises(r"load: .*one\.npy is a single \.npy array"):
        fg.load(tmp_path / "one.npy")
    (tmp_path / "junk.npz").write_bytes(os.urandom(256))
    with raises(r"load: .*junk\.npz is not a readable \.npz file"):
        fg.load(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError):
        fg.load(tmp_path / "missing.npz")


def test_pickled_objects_are_never_loaded(tmp_path):
    """A file that smuggles a pickled object array (even with a valid header) is refused:
    np.load runs with allow_pickle=False."""
    path = tmp_path / "evil.npz"
    fg.save({"w": np.ones(2)}, path)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["a0"] = np.array([{"x": 1}, None], dtype=object)
    with open(path, "wb") as f:
        np.savez(f, **arrays)  # np.savez pickles object arrays
    with raises(r"load: .*evil\.npz is damaged \(ValueError: Object arrays cannot be loaded"):
        fg.load(path)


def test_save_refuses_what_it_cannot_write_faithfully(tmp_path):
    with raises(r"save: cannot save an array of dtype object"):
        fg.save({"x": np.array([object()])}, tmp_path / "x.npz")
    with raises(r"save: cannot save an object of type function"):
        fg.save({"f": lambda: 0}, tmp_path / "x.npz")
    h = fg.scan(lambda c, x: c * x, fg.tensor(1.0, requires_grad=True), fg.tensor(np.ones(3)))
    with raises(r"save: tapes holding an fg.scan loop cannot be saved yet"):
        fg.save(h.tape, tmp_path / "x.npz")
    assert not any(tmp_path.iterdir())  # nothing written, not even a temporary file


# ----------------------------------------------------------------------------- atomic writes
def test_save_writes_a_temporary_file_fsyncs_it_and_renames_it_over_the_target(tmp_path,
                                                                              monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: calls.append(("replace", os.path.dirname(a),
                                                                 os.path.basename(b)))
                        or real_replace(a, b))
    fg.save({"w": np.ones(3)}, tmp_path / "ckpt.npz")
    assert calls[0] == "fsync"  # the data is on disk before the rename
    assert calls[1] == ("replace", str(tmp_path), "ckpt.npz")  # same directory: atomic
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"]


def test_a_failed_save_leaves_the_previous_file_intact_and_no_temporary_file(tmp_path,
                                                                            monkeypatch):
    path = tmp_path / "ckpt.npz"
    fg.save({"epoch": 1, "w": np.ones(3)}, path)
    before = path.read_bytes()

    def crash(f, **arrays):
        f.write(b"PK\x03\x04 half a zip file")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        fg.save({"epoch": 2, "w": np.zeros(3)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"]
    monkeypatch.undo()
    assert fg.load(path)["epoch"] == 1


# ----------------------------------------------------------------------------- resuming
def _run(model, opt, batches):
    step = fg.compile(lambda x, y: fg.cross_entropy(model(x), y), opt)
    return [step(x, y) for x, y in batches]


def test_training_resumed_from_a_checkpoint_continues_the_exact_trajectory(tmp_path):
    """Adam with a compiled step: 3 steps, save model + optimizer, load them into freshly built
    objects (another seed), 3 more steps == 6 uninterrupted steps, bit for bit."""
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((8, 5)), rng.integers(0, 3, 8)) for _ in range(6)]

    model = fg.nn.MLP([5, 16, 3], activation="tanh", seed=0)
    opt = fg.optim.Adam(model.parameters(), lr=0.05, weight_decay=1e-3)
    straight = _run(model, opt, batches)

    model = fg.nn.MLP([5, 16, 3], activation="tanh", seed=0)
    opt = fg.optim.Adam(model.parameters(), lr=0.05, weight_decay=1e-3)
    first = _run(model, opt, batches[:3])
    fg.save({"model": model, "optimizer": opt, "step": 3}, tmp_path / "ckpt.npz")
    del model, opt

    model = fg.nn.MLP([5, 16, 3], activation="tanh", seed=99)  # different initial weights
    opt = fg.optim.Adam(model.parameters(), lr=0.05, weight_decay=1e-3)
    ck = fg.load(tmp_path / "ckpt.npz")
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    assert ck["step"] == 3 and opt.t == 3
    second = _run(model, opt, batches[3:])

    assert first + second == straight  # every loss, bit for bit
    final = fg.nn.MLP([5, 16, 3], activation="tanh", seed=0)
    opt2 = fg.optim.Adam(final.parameters(), lr=0.05, weight_decay=1e-3)
    _run(final, opt2, batches)
    for (name, p), q in zip(model.named_parameters(), final.parameters()):
        assert p.numpy().tobytes() == q.numpy().tobytes(), name
    for a, b in zip(opt.state, opt2.state):
        assert a.tobytes() == b.tobytes()
