"""The fusion pass (transforms/fusion.py): plain rows as people write them replay as the fused
rows of the registry, with the same results to rounding, and only where nothing else reads
what a fused row no longer writes."""

import numpy as np
import pytest

import fastgrad as fg
from fastgrad.ops import FUSIONS, Op

RNG = np.random.default_rng(7)
# float64: the fused and the unfused kernels differ only in the order a product's sums are
# rounded (the transposed-operand loops); float32 the same at its precision
TOL = {np.float64: 1e-12, np.float32: 2e-5}


def _operands(dtype):
    shapes = dict(x=(6, 4), w=(5, 4), wt=(4, 5), b=(5,), c=(6, 5))
    return {k: fg.nn.Parameter(RNG.standard_normal(s).astype(dtype)) for k, s in shapes.items()}


def _ops_of(step):
    (program,) = step.programs.values()
    return [name for _, name, _, _ in program.tape.rows()]


def _close(a, b, dtype):
    scale = max(1.0, float(np.max(np.abs(b))))
    assert np.max(np.abs(np.asarray(a) - np.asarray(b))) <= TOL[dtype] * scale


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("fusion, sample", [pytest.param(f, s, id=f"{f.name}: {s}")
                                            for f in FUSIONS for s in f.samples])
def test_every_registered_pattern_fuses_its_samples_with_the_unfused_results(fusion, sample,
                                                                             dtype):
    """Generated from the registry: each pattern's sample expressions, compiled with and
    without the pass, give one fused row of the pattern's op instead of the chain, and the same
    loss and gradients of every operand to rounding."""
    env = _operands(dtype)
    params = list(env.values())

    def loss(scale):
        return (eval(sample, {"fg": fg}, env) * scale).sum()

    scale = RNG.standard_normal((6, 5)).astype(dtype)
    fused, plain = (fg.compile(loss, params=params, fuse=f) for f in (True, False))
    (l1, g1), (l2, g2) = fused(scale), plain(scale)
    ops, unfused = _ops_of(fused), _ops_of(plain)
    assert fusion.name in ops and "matmul" not in ops and len(ops) < len(unfused), ops
    assert fusion.name not in unfused
    _close(l1, l2, dtype)
    for a, b in zip(g1, g2):
        _close(a, b, dtype)


def test_a_chain_whose_middle_is_read_elsewhere_keeps_that_row():
    """z = x @ W.T + b is read by the tanh and by the final add: the add stays (it becomes
    the fused LINEAR row), the tanh stays a row of its own."""
    env = _operands(np.float64)
    step = fg.compile(lambda: (lambda z: (z.tanh() + z).sum())(env["x"] @ env["w"].T + env["b"]),
                      params=[env["w"], env["b"]])
    step()
    ops = _ops_of(step)
    assert "linear" in ops and "tanh" in ops and "linear_act" not in ops, ops


def test_a_product_read_twice_is_not_fused():
    env = _operands(np.float64)
    w, b = env["w"], env["b"]
    step = fg.compile(lambda x: (lambda p: ((p + b).tanh() * p).sum())(x @ w.T),
                      params=[w, b])
    step(np.ones((6, 4)))
    ops = _ops_of(step)
    assert "matmul" in ops and "linear_act" not in ops and "linear" not in ops, ops


def test_the_printed_tape_shows_the_fused_row_and_the_nodes_it_no_longer_writes():
    env = _operands(np.float64)
    step = fg.compile(lambda x: (x @ env["w"].T + env["b"]).relu().sum(), params=[env["w"]])
    step(np.ones((6, 4)))
    (program,) = step.programs.values()
    text = str(program.tape)
    assert "linear_act" in text and "= fused :" in text and "strided" not in text, text


def test_fuse_must_be_a_bool():
    with pytest.raises(fg.FastgradError, match="fuse must be True or False"):
        fg.compile(lambda x: x.sum(), fuse="yes")
    with pytest.raises(fg.FastgradError, match="fuse must be True or False"):
        fg.scan(lambda h, x: h + x, fg.zeros(2), fg.zeros((3, 2)), fuse=1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_training_a_plain_ops_mlp_follows_the_unfused_trajectory(dtype):
    """Five SGD-with-momentum steps of a 4-8-3 MLP written with plain ops: the fused program
    replays LINEAR_ACT and LINEAR rows and ends at the unfused program's weights to rounding."""
    def make():
        rng = np.random.default_rng(3)
        ps = [fg.nn.Parameter(rng.standard_normal(s).astype(dtype) * 0.5)
              for s in ((8, 4), (8,), (3, 8), (3,))]
        opt = fg.optim.SGD(ps, lr=0.1, momentum=0.9)
        W1, b1, W2, b2 = ps

        def loss(x, y):
            return fg.nn.functional.cross_entropy((x @ W1.T + b1).tanh() @ W2.T + b2, y)
        return ps, opt, loss

    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((16, 4)).astype(dtype), rng.integers(0, 3, 16)
    results = []
    for fuse in (True, False):
        ps, opt, loss = make()
        step = fg.compile(loss, optimizer=opt, fuse=fuse)
        losses = [step(x, y) for _ in range(5)]
        results.append((losses, [p.numpy().copy() for p in ps], _ops_of(step)))
    (l1, p1, ops1), (l2, p2, ops2) = results
    assert "linear_act" in ops1 and "linear" in ops1 and "matmul" not in ops1, ops1
    assert "matmul" in ops2
    _close(l1, l2, dtype)
    for a, b in zip(p1, p2):
        _close(a, b, dtype)


def _elman(dtype, spelling, checkpoint, fuse, H=6, T=25, B=2):
    rng = np.random.default_rng(5)
    W = fg.nn.Parameter(rng.standard_normal((H, H)).astype(dtype) * 0.4)
    xs = rng.standard_normal((T, B, H)).astype(dtype)
    cell = {"W.T": lambda h, x: (h @ W.T + x).tanh(),
            "W": lambda h, x: (x + h @ W).sigmoid()}[spelling]

    def loss(xs):
        hs, h = fg.scan(cell, fg.zeros((B, H), dtype=dtype), xs, checkpoint=checkpoint,
                        stack=True)
        return (hs * hs).sum() + h.sum()

    step = fg.compile(loss, params=[W], fuse=fuse)
    value, (grad,) = step(xs)
    (program,) = step.programs.values()
    tape = program.tape
    (scan_row,) = tape.scan_rows
    b0, b1 = tape.scan_body(scan_row)
    body = [Op(int(op)).name.lower() for op in tape.ops.view[b0:b1]]
    return value, grad, body


@pytest.mark.parametrize("checkpoint", [None, "sqrt", fg.Binomial(slots=3)], ids=str)
@pytest.mark.parametrize("spelling", ["W.T", "W"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_an_elman_cell_written_with_plain_ops_becomes_one_fused_scan_row(dtype, spelling,
                                                                          checkpoint):
    """The body of ``fg.scan`` goes through the pass as it is recorded: act(h @ W.T + x) is one
    LINEAR_ACT row (the loop's single-cell path), with the unfused loop's loss and gradient."""
    v1, g1, body1 = _elman(dtype, spelling, checkpoint, True)
    v2, g2, body2 = _elman(dtype, spelling, checkpoint, False)
    assert body1 == ["linear_act"], body1
    assert body2 == ["matmul", "add", "tanh" if spelling == "W.T" else "sigmoid"], body2
    _close(v1, v2, dtype)
    _close(g1, g2, dtype)


def test_an_eager_scan_fuses_its_body_too_and_fuse_false_keeps_it(tmp_path):
    rng = np.random.default_rng(6)
    W = fg.tensor(rng.standard_normal((4, 4)) * 0.5, requires_grad=True)
    xs = fg.tensor(rng.standard_normal((12, 1, 4)))
    grads = []
    for fuse in (True, False):
        h = fg.scan(lambda h, x: (h @ W.T + x).tanh(), fg.zeros((1, 4)), xs, fuse=fuse)
        loss = (h * h).sum()
        loss.backward()
        grads.append(W.grad.copy())
        W.grad = None
        b0, b1 = loss.tape.scan_body(loss.tape.scan_rows[0])
        ops = [Op(int(o)).name.lower() for o in loss.tape.ops.view[b0:b1]]
        assert ops == (["linear_act"] if fuse else ["matmul", "add", "tanh"])
        if fuse:  # a tape with a fused body saves, validates and loads as it was
            fg.save(loss.tape, tmp_path / "fused.npz")
            back = fg.load(tmp_path / "fused.npz")
            assert str(back) == str(loss.tape)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-12, atol=1e-14)


def test_a_loaded_tape_that_reads_a_fused_node_is_refused(tmp_path):
    rng = np.random.default_rng(8)
    W = fg.tensor(rng.standard_normal((4, 4)), requires_grad=True)
    h = fg.scan(lambda h, x: (h @ W.T + x).tanh(), fg.zeros((1, 4)),
                fg.tensor(rng.standard_normal((5, 1, 4))))
    tape = (h * h).sum().tape
    dead = [v for v, label in tape.labels.items() if label == "fused"]
    assert dead
    tape.in_idx.view[tape.in_ptr.view[-2]] = dead[0]  # the last row, the sum, reads it
    with pytest.raises(fg.FastgradError, match="labelled 'fused'"):
        fg.save(tape, tmp_path / "bad.npz")  # save checks what it writes, as load does
        fg.load(tmp_path / "bad.npz")


def test_a_bias_added_after_the_addend_gets_its_unfused_gradient():
    """act((x @ W.T + c) + b) becomes add(c, b) into the second add's node, then LINEAR_ACT;
    with only b wanting a gradient, b's gradient flows through the taken-over node and is the
    unfused program's."""
    rng = np.random.default_rng(9)
    w, c = fg.tensor(rng.standard_normal((5, 4))), fg.tensor(rng.standard_normal((6, 5)))
    b = fg.nn.Parameter(rng.standard_normal(5))
    x = rng.standard_normal((6, 4))
    grads = []
    for fuse in (True, False):
        step = fg.compile(lambda x: ((x @ w.T + c + b).tanh() ** 2).sum(), params=[b], fuse=fuse)
        grads.append(step(x)[1][0])
        assert ("linear_act" in _ops_of(step)) == fuse
    assert np.abs(grads[0]).min() > 0
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-12)


def test_a_cell_with_its_input_projection_inside_fuses_saves_and_loads(tmp_path):
    """tanh(x @ Wih.T + bih + h @ Whh.T + bhh): the body becomes LINEAR (the input
    projection), ADD (the two biases' sum) and LINEAR_ACT; the tape saves and loads as it was,
    and the gradients are the unfused loop's."""
    rng = np.random.default_rng(10)
    ps = [fg.tensor(rng.standard_normal(s) * 0.4, requires_grad=True)
          for s in ((6, 3), (6, 6), (6,), (6,))]
    Wih, Whh, bih, bhh = ps
    xs = fg.tensor(rng.standard_normal((7, 2, 3)))
    grads = []
    for fuse in (True, False):
        h = fg.scan(lambda h, x: (x @ Wih.T + bih + h @ Whh.T + bhh).tanh(), fg.zeros((2, 6)),
                    xs, checkpoint="sqrt", fuse=fuse)
        loss = (h * h).sum()
        tape = loss.tape
        b0, b1 = tape.scan_body(tape.scan_rows[0])
        body = [Op(int(o)).name.lower() for o in tape.ops.view[b0:b1]]
        if fuse:
            assert body == ["linear", "add", "linear_act"], body
            fg.save(tape, tmp_path / "cell.npz")
            assert str(fg.load(tmp_path / "cell.npz")) == str(tape)
        loss.backward()
        grads.append([p.grad.copy() for p in ps])
        for p in ps:
            p.grad = None
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_truncated_bptt_reads_a_carry_that_a_fused_chain_would_swallow(monkeypatch):
    """The carry a model returns is read back from the compiled window's values. Here it is
    h_T @ V, which the next part reads only through (carry + b).tanh(): a chain the pass fuses.
    The carry's values and the losses are those of the same training without the pass."""
    def run():
        rng = np.random.default_rng(13)
        W, V = (fg.nn.Parameter(rng.standard_normal((4, 4)) * 0.4) for _ in range(2))
        b = fg.nn.Parameter(rng.standard_normal(4) * 0.1)

        def model(xs, h):
            hs, h_T = fg.scan(lambda h, x: (h @ W.T + x).tanh(), (h + b).tanh(), xs,
                              stack=True)
            return hs, h_T @ V

        xs = rng.standard_normal((40, 2, 4))
        ys = rng.standard_normal((40, 2, 4)) * 0.1
        opt = fg.optim.SGD([W, V, b], lr=0.05)
        losses, h = fg.truncated_bptt(model, np.zeros((2, 4)), xs, ys, k1=5, k2=10,
                                      loss=fg.mse_loss, optimizer=opt)
        return losses, h.numpy()

    fused = run()
    monkeypatch.setattr(fg.fusion, "fuse_program", lambda tape, keep: 0)
    plain = run()
    for a, b in zip(fused, plain):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
