"""The Tensor API behaves as PyTorch/NumPy users expect."""

import ast
import pathlib
import threading

import numpy as np
import pytest

import fastgrad as fg

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_creation_functions_and_dtypes():
    assert fg.tensor(1.0).dtype == np.float64
    assert fg.tensor(np.ones(3, np.float32)).dtype == np.float32
    assert fg.tensor([1, 2]).dtype == np.int64
    assert fg.zeros(2, 3).shape == (2, 3) and fg.ones((4,)).numpy().sum() == 4
    assert fg.randn(3, 2, seed=0).numpy().tolist() == fg.randn(3, 2, seed=0).numpy().tolist()
    assert fg.arange(5).dtype == np.int64 and fg.arange(0.0, 1.0, 0.25).shape == (4,)
    assert fg.randn(2, dtype=np.float32).dtype == np.float32
    x = fg.tensor([[1.0, 2.0]])
    assert (x.shape, x.ndim, x.size, len(x)) == ((1, 2), 2, 2, 1)


def test_float32_graph_stays_float32():
    x = fg.tensor(np.ones((2, 3), np.float32), requires_grad=True)
    y = (x * 2.5 + 1).tanh().sum()
    assert y.dtype == np.float32
    y.backward()
    assert x.grad.dtype == np.float32


def test_leaf_numpy_is_not_a_copy_and_from_numpy_shares_memory():
    a = np.arange(4.0)
    t = fg.from_numpy(a)
    assert t.numpy() is a
    a[0] = 9.0
    assert t.numpy()[0] == 9.0


def test_gradients_accumulate_across_backward_calls_like_pytorch():
    x = fg.tensor([1.0, 2.0], requires_grad=True)
    (x * 3).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, [3 + 2, 3 + 4])
    x.zero_grad()
    assert x.grad is None


def test_no_grad_records_nothing_and_detach_cuts_the_graph():
    x = fg.tensor([1.0, 2.0], requires_grad=True)
    with fg.no_grad():
        y = x * 2
    assert not y.requires_grad and y.tape is None
    z = (x * 2).detach()
    assert not z.requires_grad and z.tape is None
    np.testing.assert_allclose(z.numpy(), [2.0, 4.0])


def test_independent_graphs_merge_when_combined():
    a = fg.tensor(2.0, requires_grad=True)
    b = fg.tensor(3.0, requires_grad=True)
    left, right = a * a, b.exp()
    assert left.tape is not right.tape
    out = left + right
    out.backward()
    assert float(a.grad) == 4.0 and float(b.grad) == pytest.approx(np.exp(3.0))
    assert left.tape is out.tape is right.tape


def test_backward_is_one_native_call(monkeypatch):
    from fastgrad import tape as tape_module

    calls = []
    real = tape_module.replay_backward

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(tape_module, "replay_backward", counting)
    x = fg.tensor(np.ones((4, 4)), requires_grad=True)
    h = x
    for _ in range(20):
        h = (h @ x).tanh()
    h.sum().backward()
    assert len(calls) == 1


def test_matmul_follows_numpy_for_1d_and_batched_operands():
    rng = np.random.default_rng(0)
    for sa, sb in [((3,), (3,)), ((3,), (3, 2)), ((2, 3), (3,)), ((4, 2, 3), (3, 5)),
                   ((2, 1, 2, 3), (3, 3, 2))]:
        a, b = rng.normal(size=sa), rng.normal(size=sb)
        np.testing.assert_allclose((fg.tensor(a) @ fg.tensor(b)).numpy(), a @ b, rtol=1e-12)
        assert fg.gradcheck(lambda x, y: x @ y, [a, b]) <= 1


def test_indexing_matches_numpy():
    a = np.arange(24.0).reshape(2, 3, 4)
    t = fg.tensor(a)
    for key in [0, -1, (1, 2), (slice(None), 1), (Ellipsis, 2), (None, 1), (slice(1, None, -1),),
                (slice(None), slice(None, None, 2), 3), np.array([1, 0, 1])]:
        np.testing.assert_array_equal(t[key].numpy(), a[key])
    assert fg.gradcheck(lambda x: x[:, ::-2, 1:3] * 2, [a]) <= 1
    assert fg.gradcheck(lambda x: x[np.array([0, 0, 1])], [a]) <= 1  # repeated index adds


def test_reductions_with_tuple_axes_and_mean():
    a = np.random.default_rng(3).normal(size=(2, 3, 4))
    t = fg.tensor(a)
    np.testing.assert_allclose(t.sum(axis=(0, 2)).numpy(), a.sum(axis=(0, 2)))
    np.testing.assert_allclose(t.mean(axis=1, keepdims=True).numpy(), a.mean(axis=1, keepdims=True))
    np.testing.assert_allclose(t.max().numpy(), a.max())
    np.testing.assert_allclose(t.mean().numpy(), a.mean())


def test_stack_concat_where_transpose():
    a, b = np.arange(6.0).reshape(2, 3), -np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(fg.stack([a, b], axis=1).numpy(), np.stack([a, b], axis=1))
    np.testing.assert_array_equal(fg.concatenate([a, b], axis=-1).numpy(),
                                  np.concatenate([a, b], axis=-1))
    np.testing.assert_array_equal(fg.where(a > 2, a, b).numpy(), np.where(a > 2, a, b))
    np.testing.assert_array_equal(fg.tensor(a).T.numpy(), a.T)
    x = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(fg.tensor(x).transpose(1, 0, 2).numpy(), x.transpose(1, 0, 2))


def test_print_tape_and_graphviz():
    x = fg.tensor(2.0, requires_grad=True)
    y = fg.tensor(-3.0, requires_grad=True)
    z = fg.tensor(4.0, requires_grad=True)
    f = (x + y) * z
    text = str(f.tape)
    assert "%2 = add %0 %1 : f64[]" in text and "%4 = mul %2 %3 : f64[]" in text
    f.backward()
    dot = f.tape.to_dot(values=True, grads=True)
    assert dot.startswith("digraph") and "-> op1" in dot and "grad" in dot


def test_threads_record_on_separate_tapes_without_interference():
    results = {}

    def work(k):
        x = fg.tensor(np.full(50, float(k)), requires_grad=True)
        for _ in range(20):
            (x * x).sum().backward()
        results[k] = x.grad.copy()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(1, 5):
        np.testing.assert_allclose(results[k], np.full(50, 40.0 * k))


def test_nothing_imports_a_bare_kernels_package():
    for path in list((ROOT / "fastgrad").glob("*.py")) + list((ROOT / "kernels").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "kernels" for a in node.names), path
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert (node.module or "").split(".")[0] != "kernels", path
    import fastgrad.kernels

    assert fastgrad.kernels.replay_backward is not None
