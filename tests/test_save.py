"""fg.save / fg.load: bit-exact round trips of module state, optimizer state and tapes (also
tapes holding fg.scan loops, in every checkpoint mode); atomic writes; truncated, modified and
malicious files (and tampered scan headers) are refused with a FastgradError; a run resumed from
a checkpoint continues the uninterrupted trajectory bit for bit."""

import json
import os
from collections import OrderedDict

import numpy as np
import pytest

import fastgrad as fg
import fastgrad.io
from fastgrad import FastgradError
from fastgrad.io import HEADER, validate_tape
from fastgrad.io.files import _digest
from fastgrad.io.tapes import _TAPE_INTS
from fastgrad.ops import Op


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
        step(rng.standard_normal((4, 3)).astype(dtype), rng.standard_normal((4, 2)).astype(dtype))
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
    (v,) = [v for leaf, v in tape.tensors.leaves if leaf is w]
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

    def step(c, x):  # the loop body is still being recorded: its tape is not a whole one
        fg.save(c.tape, tmp_path / "x.npz")
        return c * x

    with raises(r"save: an fg.scan body is being recorded on this tape"):
        fg.scan(step, fg.tensor(1.0, requires_grad=True), fg.tensor(np.ones(3)))
    assert not any(tmp_path.iterdir())  # nothing written, not even a temporary file


# ----------------------------------------------------------------------------- fg.scan loops
CHECKPOINTS = {"store-all": None, "sqrt": "sqrt", "segments of 2": 2, "binomial": fg.Binomial(2)}
H = 16  # the SCAN header; then (init, carry_in, carry_out, final) per carry, stacked, own nodes


def _scan_loss(checkpoint, dtype=np.float64):
    """A loop of T=6 steps over xs (6, 3) with a tuple carry (h (3,), s ()) and h stacked over
    time; the loss reads the stacked output and both final carries. With checkpoint=2 it keeps
    3 carries of 4 values; fg.Binomial(2) stores steps 0 and 3 in its forward sweep."""
    rng = np.random.default_rng(5)
    w = fg.tensor((rng.standard_normal((3, 3)) * 0.5).astype(dtype), requires_grad=True)
    b = fg.tensor(rng.standard_normal(3).astype(dtype), requires_grad=True)
    xs = fg.tensor(rng.standard_normal((6, 3)).astype(dtype))

    def step(carry, x):
        h, s = carry
        h = (h @ w + x + b).tanh()
        return h, s + (h * h).sum()

    hs, (h, s) = fg.scan(step, (fg.zeros(3, dtype=dtype), fg.zeros((), dtype=dtype)), xs,
                         checkpoint=checkpoint, stack=True)
    return hs.sum() * 0.5 + s + h.sum(), (w, b)


def _state(tape):
    return tape.values.view.tobytes(), tape.ivalues.view.tobytes()


@pytest.mark.parametrize("mode, dtype", [(m, np.float64) for m in CHECKPOINTS]
                         + [("binomial", np.float32)])
def test_a_tape_holding_a_scan_round_trips_and_replays_bit_exactly(tmp_path, mode, dtype):
    """Saved after its forward sweep and loaded, then the same replays on the original and the
    loaded tape: backward from the saved state (binomial: from the checkpoints the forward sweep
    left), a fresh forward sweep, backward again. Values, schedule and gradients agree bit for
    bit at every stage."""
    loss, params = _scan_loss(CHECKPOINTS[mode], dtype)
    tape = loss.tape
    fg.save(tape, tmp_path / "scan.npz")
    back = fg.load(tmp_path / "scan.npz")
    assert str(back) == str(tape) and back.shapes == tape.shapes and back.labels == tape.labels
    for name in (*_TAPE_INTS, "fparams", "node_kind", "node_need", "values", "ivalues"):
        a, b = getattr(tape, name).view, getattr(back, name).view
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
    assert back.scan_rows == tape.scan_rows == [_row_of({"ops": tape.ops.view}, Op.SCAN)]
    assert back.producer == tape.producer  # final carries and stacked output: the SCAN row's
    assert back.n_done == tape.n_done == tape.n_rows

    loss.backward()
    back.backward(loss.node, np.ones((), dtype))
    assert back.grads[: back.values.n].tobytes() == tape.grads[: tape.values.n].tobytes()
    assert _state(back) == _state(tape)
    for p in params:
        (v,) = [v for leaf, v in tape.tensors.leaves if leaf is p]
        assert back.node_grad(v).tobytes() == p.grad.tobytes() and np.all(p.grad != 0)
    for t in (tape, back):
        t.n_done = 0
        t.flush()
    assert _state(back) == _state(tape)
    for t in (tape, back):
        t.backward(loss.node, np.ones((), dtype))
    assert back.grads[: back.values.n].tobytes() == tape.grads[: tape.values.n].tobytes()
    assert _state(back) == _state(tape)


def test_a_loaded_tape_never_resumes_inside_a_loop(tmp_path):
    loss, _ = _scan_loss("sqrt")
    path = tmp_path / "scan.npz"
    fg.save(loss.tape, path)
    begin = _row_of({"ops": loss.tape.ops.view}, Op.SCAN_BEGIN)
    _rewrite(path, lambda arrays, header: header["tree"]["$tape"].update(n_done=begin + 2))
    back = fg.load(path)
    assert back.n_done == begin  # not a body row: the replay starts with the whole loop
    back.flush()
    assert _state(back) == _state(loss.tape)


def _scan_ip(t, op=Op.SCAN):
    """The integer attributes of the first ``op`` row, as a writable view."""
    r = _row_of(t, op)
    return t["iparams"][t["ip_ptr"][r] : t["ip_ptr"][r + 1]]


def _add(i, delta):
    def change(t):
        _scan_ip(t)[i] += delta
    return change


def _put(i, value):
    def change(t):
        _scan_ip(t)[i] = value
    return change


def _copy(dst, src):
    def change(t):
        ip = _scan_ip(t)
        ip[dst] = ip[src]
    return change


def _schedule(i, value):
    """Entry i of the binomial schedule node: [forward valid, held, advanced, most used, the
    step of each slot...]; the saved forward sweep left [1, 2, ., ., 0, 3]."""
    def change(t):
        t["ivalues"][t["node_off"][_scan_ip(t)[13]] + i] = value
    return change


def _operand(op, node_of):
    """Make the first ``op`` row read the node ``node_of(scan header)`` as its operand 0."""
    def change(t):
        t["in_idx"][t["in_ptr"][_row_of(t, op)]] = node_of(_scan_ip(t))
    return change


def _op(row_of, code):
    def change(t):
        t["ops"][row_of(t)] = code
    return change


# name: (checkpoint mode, edit, message, the checks of other rows would have let it through)
SCAN_TAMPERINGS = {
    "T one step more than xs holds": (
        "sqrt", _add(0, 1), r"xs %\d+ of shape \(6, 3\) does not hold T=7 steps", True),
    "T = 0": ("store-all", _put(0, 0), r"T=0 steps; a scan runs T >= 1", True),
    "body_start one row late": (
        "store-all", _add(2, 1), r"body_start \d+ is not row \d+, the row after its scan_begin",
        True),
    "body_start on the scan_begin row": (
        "binomial", _add(2, -1), r"body_start \d+ is not row \d+, the row after its scan_begin",
        True),
    "body_end past the scan row": (
        "store-all", _add(3, 1), r"body_end \d+ is not row \d+: the body runs up to the scan row",
        True),
    "one carry more": (
        "sqrt", _add(4, 1), r"has \d+ integer attributes; n_carry=3, n_stack=1 and n_own=\d+ make",
        True),
    "a carry node id past the last node": (
        "store-all", _put(H + 1, 10**6), r"its carry 0 carry_in node id 1000000 is out of range",
        True),
    "a negative carry node id": (
        "binomial", _put(H + 4 + 2, -1), r"its carry 1 carry_out node id -1 is out of range", True),
    "x_step one more": (
        "store-all", _add(9, 1), r"x_step 4 is not the 3 values of one step of xs", True),
    "the store node id pointing at the checkpoints": (
        "sqrt", _copy(10, 12), r"its store node\(s\) %\d+ are not %\d+, where fg.scan records",
        True),
    "reg_size one more": (
        "segments of 2", _add(14, 1), r"reg_size \d+ is not the \d+ values of its \d+ own nodes",
        True),
    "own nodes shifted": (
        "store-all", lambda t: _scan_ip(t).__setitem__(slice(-1, None), _scan_ip(t)[-1] + 1),
        r"its \d+ own nodes are not the body's", True),
    "k disagreeing with the checkpoint size": (
        "segments of 2", _put(11, 3),
        (r"its checkpoint node %\d+ has shape \(12,\); k=3 for T=6 steps of carries of 4 values "
         r"needs \(8,\)"), True),
    "binomial slots disagreeing with the checkpoint size": (
        "binomial", _put(11, -3),
        r"its checkpoint node %\d+ has shape \(8,\); k=-3 .* needs \(12,\)", True),
    "the schedule node made a float node": (  # the overlap check would also refuse it, later
        "binomial", lambda t: t["node_kind"].__setitem__(_scan_ip(t)[13], 0),
        r"its schedule node %\d+ is a float node, not an integer node", False),
    "a checkpoint at a step before the loop": (
        "binomial", _schedule(4, -100_000),
        (r"holds 2 checkpoints at steps \[-100000, 3\]; the binomial forward sweep stores 2 at "
         r"\[0, 3\]"), True),
    "more checkpoints held than slots": (
        "binomial", _schedule(1, 50), r"holds 50 checkpoints at steps \[0, 3\]", True),
    "a forward flag other than 0 or 1": (
        "binomial", _schedule(0, 7), r"has forward flag 7, not 0 or 1", True),
    "the stacked output fed by carry 1": (
        "sqrt", _copy(H + 8, H + 4 + 2), r"the stacked body node %\d+ is not carry 0's carry_out",
        True),
    "the scan_begin row pointing at itself": (  # the forward replay would loop forever
        "store-all",
        lambda t: _scan_ip(t, Op.SCAN_BEGIN).__setitem__(0, _row_of(t, Op.SCAN_BEGIN)),
        r"row \d+ \(scan_begin\) points at row \d+, not at its scan row \d+", True),
    "the scan_begin row pointing past its scan row": (
        "binomial",
        lambda t: _scan_ip(t, Op.SCAN_BEGIN).__setitem__(0, _row_of(t, Op.SCAN) + 1),
        r"row \d+ \(scan_begin\) points at row \d+, not at its scan row \d+", True),
    "begin_row off by one": (
        "sqrt", _add(1, 1), r"begin_row \d+ is not a scan_begin row before it", True),
    "a scan_begin row nested in the body": (
        "store-all", _op(lambda t: _row_of(t, Op.TANH), Op.SCAN_BEGIN),
        r"row \d+ inside its body is a scan control row; scans do not nest", True),
    "a stray scan_begin row after the loop": (  # the forward replay would loop forever
        "store-all", _op(lambda t: len(t["ops"]) - 1, Op.SCAN_BEGIN),
        r"row \d+ \(scan_begin\) starts no scan loop", True),
    "a body row reading the final carry": (
        "sqrt", _operand(Op.TANH, lambda ip: ip[H + 3]),
        r"\(tanh\) reads %\d+ before row \d+ writes it", True),
    "a row reading the loop's store": (  # its shape rule would also refuse it, later
        "store-all", _operand(Op.SUM, lambda ip: ip[10]),
        r"\(sum\) reads %\d+, a node internal to an fg.scan loop", False),
}


@pytest.mark.parametrize("what", list(SCAN_TAMPERINGS))
def test_a_tampered_scan_header_is_refused_by_name(tmp_path, monkeypatch, what):
    """One field of a saved loop changed and the checksum recomputed: loading refuses it with a
    message naming the field; the same edit made in memory is refused by validate_tape, and
    (where marked) the checks of other rows alone would have passed it on to the kernels."""
    mode, change, message, others_miss = SCAN_TAMPERINGS[what]
    loss, _ = _scan_loss(CHECKPOINTS[mode])
    path = tmp_path / "scan.npz"
    fg.save(loss.tape, path)
    tape = fg.load(path)
    _rewrite(path, lambda arrays, header: change(_tape_arrays(arrays, header)))
    with raises(r"^load: invalid tape: .*" + message + r".*\. Fix: the file is truncated or"):
        fg.load(path)

    change({name: getattr(tape, name).view for name in (*_TAPE_INTS, "node_kind", "ivalues")})
    with raises(r"^validate_tape: invalid tape: .*" + message):
        validate_tape(tape)
    if others_miss:
        monkeypatch.setattr(fastgrad.io.validate, "_check_scans", lambda tape, producer, bad: [])
        validate_tape(tape)


@pytest.mark.parametrize("mode", list(CHECKPOINTS))
def test_every_one_integer_change_of_the_scan_rows_is_refused_or_harmless(mode):
    """Each integer attribute of the SCAN and SCAN_BEGIN rows, and each entry of the binomial
    schedule, set to each of 10 or 11 other values (2**63-1 and -2**63 among them), and the
    kind (float / integer / parameter) of each node of the loop changed: validate_tape refuses
    the tape with a FastgradError (never another exception), except for three kinds of change
    that leave a tape the kernels run safely: carry 1's carry_out moved to the other () node
    the body computes (the loop of another step function), the schedule's two counters
    (written, never read), and its forward flag cleared (the next backward sweep redoes the
    forward sweep)."""
    loss, _ = _scan_loss(CHECKPOINTS[mode])
    tape = loss.tape
    tape.flush()
    scan, begin = (_row_of({"ops": tape.ops.view}, op) for op in (Op.SCAN, Op.SCAN_BEGIN))
    ip0 = int(tape.ip_ptr.a[scan])
    places = [(tape.iparams, i) for r in (scan, begin)
              for i in range(tape.ip_ptr.a[r], tape.ip_ptr.a[r + 1])]
    sched = int(tape.node_off.a[tape.iparams.a[ip0 + 13]]) if mode == "binomial" else -1
    if mode == "binomial":
        places += [(tape.ivalues, sched + i) for i in range(6)]
    loop_nodes = range(int(tape.outs.a[begin]), int(tape.outs.a[scan]) + 1)
    places += [(tape.node_kind, v) for v in loop_nodes]
    body_sum = int(tape.outs.a[_row_of({"ops": tape.ops.view}, Op.SUM)])  # (h * h).sum()
    tried, accepted = [], []
    for arr, i in places:
        orig = int(arr.a[i])
        values = {0, 1, 2} if arr is tape.node_kind else \
            {-1, 0, 1, 2, orig - 1, orig + 1, orig + 2, 2**31, -(2**40), 2**63 - 1, -(2**63)}
        for new in sorted(values - {orig}):
            tried.append((arr, i, new))
            arr.a[i] = new
            try:
                validate_tape(tape)
                accepted.append((arr, i, new))
            except FastgradError:
                pass
            finally:
                arr.a[i] = orig
    harmless = [(tape.iparams, ip0 + H + 4 + 2, body_sum)] + [
        (arr, i, new) for arr, i, new in tried if arr is tape.ivalues
        and (i in (sched + 2, sched + 3) or (i, new) == (sched, 0))]
    assert accepted == harmless
    assert len(tried) > 300
    clean = tape.backward(loss.node, np.ones(()))[: tape.values.n].copy()
    for arr, i, new in accepted:  # each replays from its forward state, forward and backward
        tape.n_done = 0
        tape.flush()
        orig = int(arr.a[i])
        arr.a[i] = new
        try:
            validate_tape(tape)
            if arr is tape.iparams:
                tape.n_done = 0
                tape.flush()
            grads = tape.backward(loss.node, np.ones(()))[: tape.values.n]
            if arr is tape.ivalues:  # the same loop: the same gradients
                assert grads.tobytes() == clean.tobytes()
            assert np.all(np.isfinite(grads))
        finally:
            arr.a[i] = orig


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


def test_a_tape_whose_scan_has_a_hoisted_row_round_trips(tmp_path):
    """``w.T`` in a step is recorded before the loop (Tape.hoist_last_row) and writes a node
    of the body's range: the validator accepts such a row right before the loop, as fg.scan
    records it, and refuses one that reads a node the loop writes."""
    rng = np.random.default_rng(4)
    w = fg.tensor(rng.standard_normal((3, 3)), requires_grad=True)
    h = fg.scan(lambda h, x: (h @ w.T + x).tanh(), fg.zeros((1, 3)),
                fg.tensor(rng.standard_normal((5, 1, 3))), fuse=False)
    tape = (h * h).sum().tape
    begin = tape.scan_body(tape.scan_rows[0])[0] - 1
    assert Op(int(tape.ops.view[begin - 1])) == Op.STRIDED  # the hoisted transpose
    fg.save(tape, tmp_path / "hoisted.npz")
    assert str(fg.load(tmp_path / "hoisted.npz")) == str(tape)
    slot = int(tape.in_idx.view[tape.in_ptr.view[begin + 1]])  # the body's carry slot
    tape.in_idx.view[tape.in_ptr.view[begin - 1]] = slot  # the hoisted row reads it
    with pytest.raises(fg.FastgradError, match="hoisted out of the body"):
        fg.save(tape, tmp_path / "bad.npz")
