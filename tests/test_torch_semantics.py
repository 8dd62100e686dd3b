"""PyTorch code runs with PyTorch's meaning, or fails loudly: never silently differently.

Each spec states PyTorch's documented behaviour with its expected values written out (so it
runs without PyTorch); where torch is installed (the ``torch`` extra, torch==2.13.0) the same
expressions are also run through torch and compared, values and gradients.
"""

import numpy as np
import pytest

import fastgrad as fg

try:
    import torch
except ImportError:  # the specs below still run; the comparisons with torch are skipped
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")

X = np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 2.0]])  # ties in both rows


def leaf(a=X, dtype=np.float64):
    return fg.tensor(np.array(a, dtype), requires_grad=True)


def grad_of(fn, a=X):
    x = leaf(a)
    fn(x).backward()
    return x.grad


# ----------------------------------------------------------------------------- transpose
def test_transpose_with_two_dims_swaps_them_as_pytorch():
    x = fg.tensor(np.arange(24.0).reshape(2, 3, 4))
    assert x.transpose(1, 2).shape == (2, 4, 3)
    np.testing.assert_array_equal(x.transpose(1, 2).numpy(), np.swapaxes(x.numpy(), 1, 2))
    m = fg.tensor(np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(m.transpose(0, 1).numpy(), m.numpy().T)  # not unchanged
    np.testing.assert_array_equal(fg.transpose(x, 0, 2).numpy(), np.swapaxes(x.numpy(), 0, 2))


def test_permute_mT_T_and_numpy_permutations():
    x = fg.tensor(np.arange(24.0).reshape(2, 3, 4))
    assert x.permute(2, 0, 1).shape == (4, 2, 3)
    assert x.permute((2, 0, 1)).shape == (4, 2, 3)
    np.testing.assert_array_equal(x.mT.numpy(), np.swapaxes(x.numpy(), -1, -2))
    np.testing.assert_array_equal(x.T.numpy(), x.numpy().T)
    # NumPy's spellings that cannot mean a swap keep NumPy's meaning
    assert x.transpose(1, 0, 2).shape == (3, 2, 4)
    assert x.transpose((1, 0, 2)).shape == (3, 2, 4)
    assert x.transpose().shape == (4, 3, 2)
    with pytest.raises(fg.FastgradError, match="mT: needs at least 2 dims"):
        fg.tensor([1.0]).mT


def test_gradients_flow_back_through_a_swap():
    w = np.arange(6.0).reshape(3, 2)
    g = grad_of(lambda x: (x.transpose(0, 1) * w).sum())
    np.testing.assert_array_equal(g, w.T)


# ----------------------------------------------------------------------------- max and min
def test_max_along_a_dim_returns_values_and_indices():
    values, indices = leaf().max(1)
    np.testing.assert_array_equal(values.numpy(), [3.0, 2.0])
    np.testing.assert_array_equal(indices.numpy(), [1, 0])  # the first maximal element
    assert indices.dtype == np.int64
    r = leaf().min(dim=1, keepdim=True)
    np.testing.assert_array_equal(r.values.numpy(), [[1.0], [0.0]])
    np.testing.assert_array_equal(r.indices.numpy(), [[0], [1]])
    np.testing.assert_array_equal(leaf().max(1)[0].numpy(), [3.0, 2.0])  # not a row


def test_the_element_an_index_names_takes_the_gradient_of_max_along_a_dim():
    np.testing.assert_array_equal(grad_of(lambda x: x.max(1).values.sum()),
                                  [[0, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(grad_of(lambda x: x.min(0).values.sum()),
                                  [[1, 0, 0], [0, 1, 1]])


def test_ties_share_the_gradient_of_a_full_max_and_of_amax():
    np.testing.assert_array_equal(grad_of(lambda x: x.max()), [[0, 0.5, 0.5], [0, 0, 0]])
    np.testing.assert_array_equal(grad_of(lambda x: x.amax(1).sum()),
                                  [[0, 0.5, 0.5], [0.5, 0, 0.5]])
    np.testing.assert_array_equal(grad_of(lambda x: x.amin(dim=0).sum()),
                                  [[1, 0, 0], [0, 1, 1]])
    np.testing.assert_array_equal(grad_of(lambda x: fg.tensor(np.ones(3)).max() * x.min()),
                                  [[0, 0, 0], [0, 1, 0]])


def test_argmax_argmin_and_max_with_another_tensor():
    x = fg.tensor(X)
    assert x.argmax().item() == 1 and x.argmin().item() == 4  # of the flattened tensor
    np.testing.assert_array_equal(x.argmax(dim=1).numpy(), [1, 0])
    assert x.argmin(1, keepdim=True).shape == (2, 1)
    np.testing.assert_array_equal(x.max(fg.tensor(2.5)).numpy(), np.maximum(X, 2.5))


def test_nan_is_the_max_and_its_index_as_in_pytorch():
    x = fg.tensor([[1.0, np.nan, 3.0]])
    values, indices = x.max(1)
    assert np.isnan(values.item()) and indices.item() == 1
    assert x.argmin().item() == 1 and np.isnan(x.amax().item())


def test_max_and_argmax_inside_compile_follow_each_call():
    w = fg.tensor(np.ones(3, np.float32), requires_grad=True)

    def loss(x):
        values, indices = (x * w).max(1)
        return values.sum() + (indices == 2).float().sum() + (x * w).argmin(1).float().sum()

    step = fg.compile(loss)
    for a in (X, X[:, ::-1], np.array([[0.0, 1.0, 5.0], [9.0, 1.0, 2.0]])):
        a = np.ascontiguousarray(a, np.float32)
        value, (gw,) = step(a)
        assert value == a.max(1).sum() + (a.argmax(1) == 2).sum() + a.argmin(1).sum()
        want = np.zeros(3, np.float32)  # each row's first maximal element takes the gradient
        np.add.at(want, a.argmax(1), a.max(1))
        np.testing.assert_array_equal(gw, want)


def test_indices_computed_inside_compile_cannot_index_yet():
    w = fg.tensor(np.ones(3), requires_grad=True)
    step = fg.compile(lambda x: fg.take(x * w, x.argmax(1), axis=1).sum())
    with pytest.raises(fg.FastgradError, match="holds indices computed inside fg.compile"):
        step(X)


def test_values_and_indices_are_not_an_array():
    with pytest.raises(fg.FastgradError, match="use .values or .indices"):
        fg.tensor(X) - fg.tensor(X).max(1, keepdim=True)


# ----------------------------------------------------------------------------- casts
def test_a_cast_of_a_leaf_is_differentiable():
    w = fg.tensor([1.0, 2.0], requires_grad=True)  # float64
    w32 = w.float()
    assert w32.dtype == np.float32 and w32.requires_grad and not w32.is_leaf
    (w32 * fg.tensor(np.float32([3.0, 4.0]))).sum().backward()
    assert w.grad.dtype == np.float64
    np.testing.assert_array_equal(w.grad, [3.0, 4.0])
    assert w32.grad is None
    w.to(np.float32).double().sum().backward()  # two casts: back to the leaf
    np.testing.assert_array_equal(w.grad, [4.0, 5.0])


def test_casting_to_the_same_dtype_is_the_tensor_itself():
    w = fg.tensor([1.0, 2.0], requires_grad=True)
    assert w.double() is w and w.to(np.float64) is w and w.astype(np.float64) is w


def test_casts_that_cannot_be_followed_are_refused():
    w = fg.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(fg.FastgradError, match="cannot cast a recorded float64"):
        (w * 2).float()
    step = fg.compile(lambda x: (x * w.float()).sum())
    with pytest.raises(fg.FastgradError, match="inside fg.compile or fg.scan"):
        step(np.ones(2, np.float32))
    outside = w.float()
    with pytest.raises(fg.FastgradError, match="is a cast of another tensor"):
        fg.compile(lambda x: (x * outside).sum())(np.ones(2, np.float32))


def test_integer_casts():
    i = fg.tensor([1.7, -2.2]).long()
    assert i.dtype == np.int64
    np.testing.assert_array_equal(i.numpy(), [1, -2])
    assert fg.tensor([0, 2]).bool().dtype == np.bool_


# ----------------------------------------------------------------------------- NumPy functions
def test_numpy_ufuncs_on_tensors_are_recorded():
    g = grad_of(lambda x: np.exp(x).sum())
    np.testing.assert_allclose(g, np.exp(X))
    g = grad_of(lambda x: (np.ones(3) * x + np.maximum(x, 2.0)).sum())
    np.testing.assert_array_equal(g, 1.0 + (X > 2) + 0.5 * (X == 2))
    assert isinstance(np.float64(2.0) - leaf(), fg.Tensor)


def test_numpy_functions_on_tensors_keep_numpy_meanings():
    np.testing.assert_array_equal(grad_of(lambda x: np.sum(x, axis=0).sum()), np.ones((2, 3)))
    np.testing.assert_array_equal(np.max(fg.tensor(X), axis=1).numpy(), [3.0, 2.0])  # values
    np.testing.assert_array_equal(np.argmax(fg.tensor(X), axis=1).numpy(), [1, 0])
    np.testing.assert_array_equal(np.transpose(fg.tensor(X)).numpy(), X.T)
    np.testing.assert_array_equal(np.stack([fg.tensor(X), fg.tensor(X)]).numpy(),
                                  np.stack([X, X]))
    assert np.isnan(fg.tensor([np.nan, 1.0])).tolist() == [True, False]


def test_numpy_functions_fastgrad_does_not_have_are_refused():
    for fn in (np.median, np.cumprod, np.sort):
        with pytest.raises(fg.FastgradError, match="would cut the result from the graph"):
            fn(leaf())
    with pytest.raises(fg.FastgradError, match="np.cbrt: is not an op fastgrad records"):
        np.cbrt(leaf())


def test_a_tensor_of_tensors_is_their_stack():
    a, b = fg.tensor(2.0, requires_grad=True), fg.tensor(3.0, requires_grad=True)
    s = fg.tensor([a * b, a, 1.0])
    np.testing.assert_array_equal(s.numpy(), [6.0, 2.0, 1.0])
    (s * fg.tensor([1.0, 10.0, 100.0])).sum().backward()
    assert a.grad == 13.0 and b.grad == 2.0
    rows = fg.tensor([[a, b], [b, a]])
    assert rows.shape == (2, 2)


# ----------------------------------------------------------------------------- pow at zero
def test_zero_to_a_power_has_pytorch_gradients():
    y = leaf([1.0, -1.0, 0.0, 2.5])
    (0.0 ** y).sum().backward()
    np.testing.assert_array_equal(y.grad, [0.0, -np.inf, 0.0, 0.0])
    a, b = leaf([0.0, 0.0, 0.0]), leaf([2.0, -1.0, 0.0])
    (a**b).sum().backward()
    np.testing.assert_array_equal(a.grad, [0.0, -np.inf, 0.0])
    np.testing.assert_array_equal(b.grad, [0.0, -np.inf, 0.0])


def test_pow_rules_agree_compiled_and_eager():
    b = fg.tensor(np.array([2.0, -1.0, 0.5]), requires_grad=True)
    step = fg.compile(lambda a: (a**b).sum() + (0.0**b).sum())
    _, (gb,) = step(np.array([0.0, 0.0, 2.0]))
    np.testing.assert_array_equal(gb, [0.0, -2 * np.inf, 2.0**0.5 * np.log(2.0)])


# ----------------------------------------------------------------------------- dtypes of results
def test_comparisons_give_bool_masks():
    x = leaf()
    m = x > 2
    assert m.dtype == np.bool_ and m.numpy().dtype == np.bool_
    np.testing.assert_array_equal(m.numpy(), X > 2)
    np.testing.assert_array_equal((~m).numpy(), ~(X > 2))
    np.testing.assert_array_equal((m & (x < 3)).numpy(), np.zeros((2, 3), bool))
    np.testing.assert_array_equal((m | (x == 0)).numpy(), (X > 2) | (X == 0))
    assert (m.sum()).item() == 2
    g = grad_of(lambda x: (x * (x > 2)).sum())  # a mask multiplies as 0/1
    np.testing.assert_array_equal(g, X > 2)
    np.testing.assert_array_equal((x > 2).float().numpy(), (X > 2).astype(np.float32))


def test_masks_inside_compile_follow_each_call():
    w = fg.tensor(np.ones(3, np.float32), requires_grad=True)
    step = fg.compile(lambda x: ((x * w > 1.5).float() * w).sum())
    for a in (X, 3 - X):
        value, (gw,) = step(a.astype(np.float32))
        assert value == (a > 1.5).sum()
        np.testing.assert_array_equal(gw, (a > 1.5).sum(0) + 0.0)


def test_all_and_any():
    m = fg.tensor(X) > 1
    assert not m.all().item() and m.any().item()
    np.testing.assert_array_equal(m.all(1).numpy(), [False, False])
    np.testing.assert_array_equal(m.any(dim=0).numpy(), [True, True, True])
    assert fg.tensor([1.0, 2.0]).all().item()


def test_integer_tensors_stay_integers():
    i = fg.tensor(np.arange(6))
    assert i.reshape(2, 3).dtype == np.int64 and i[1:].dtype == np.int64
    assert (i + i).dtype == np.int64 and i.sum().item() == 15
    assert fg.tensor([True, True, False]).sum().item() == 2
    with pytest.raises(fg.FastgradError, match="neg: negation of a bool tensor"):
        -fg.tensor([True])


# ----------------------------------------------------------------------------- dim= spellings
def test_dim_and_keepdim_are_accepted_with_numpy_aliases():
    x = fg.tensor(X)
    assert x.sum(dim=0, keepdim=True).shape == (1, 3) == x.sum(axis=0, keepdims=True).shape
    assert x.mean(1).shape == (2,) and x.amax(dim=(0, 1)).shape == ()
    np.testing.assert_allclose(x.softmax(dim=0).numpy().sum(0), 1.0)
    with pytest.raises(fg.FastgradError, match="got both dim=0 and axis=1"):
        x.sum(0, axis=1)


# ----------------------------------------------------------------------------- against torch
CASES = {
    "transpose(0, 1)": lambda x: x.transpose(0, 1) * x.transpose(0, 1).cos(),
    "max(1).values": lambda x: x.max(1).values,
    "max(0)[0] * 2": lambda x: x.max(0)[0] * 2,
    "min(1, keepdim).values": lambda x: x.min(1, keepdim=True).values,
    "max()": lambda x: x.max(),
    "amax(1)": lambda x: x.amax(1),
    "amin(0)": lambda x: x.amin(0),
    "0 ** x": lambda x: 0.0 ** (x - 1),
    "x.mT @ x": lambda x: x.mT @ x,
    "where(x > 2, x, -x)": lambda x: x * (x > 2) - x * (x <= 2),
}


@needs_torch
@pytest.mark.parametrize("name", CASES)
def test_values_and_gradients_match_torch(name):
    fn = CASES[name]
    x = leaf()
    y = fn(x)
    seed = np.arange(1.0, 1.0 + y.size).reshape(y.shape)
    y.backward(seed)
    tx = torch.tensor(X, requires_grad=True)
    ty = fn(tx)
    ty.backward(torch.tensor(seed))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy())
    np.testing.assert_allclose(x.grad, tx.grad.numpy())


@needs_torch
def test_indices_and_dtypes_match_torch():
    t, x = torch.tensor(X), fg.tensor(X)
    for f in (lambda a: a.max(1).indices, lambda a: a.min(0).indices, lambda a: a.argmax(),
              lambda a: a.argmin(1, keepdim=True)):
        np.testing.assert_array_equal(f(x).numpy(), f(t).numpy())
    assert str((x > 2).dtype) == str((t > 2).dtype).replace("torch.", "")
    assert str(fg.tensor(np.arange(3)).reshape(3, 1).dtype) == "int64"


# ----------------------------------------------------------------------------- PyTorch spellings
A = np.arange(24.0).reshape(2, 3, 4)
SHAPE_CASES = {
    "flip(1)": (lambda v: v.flip(1), A[:, ::-1]),
    "flip(0, 2)": (lambda v: v.flip(0, 2), A[::-1, :, ::-1]),
    "repeat(2, 1, 3)": (lambda v: v.repeat(2, 1, 3), np.tile(A, (2, 1, 3))),
    "repeat(2, 2, 1, 1)": (lambda v: v.repeat(2, 2, 1, 1), np.tile(A, (2, 2, 1, 1))),
    "flatten(1)": (lambda v: v.flatten(1), A.reshape(2, 12)),
    "flatten(0, 1)": (lambda v: v.flatten(0, 1), A.reshape(6, 4)),
    "unsqueeze(-1)": (lambda v: v.unsqueeze(-1), A[..., None]),
    "squeeze(1) of [:, :1]": (lambda v: v[:, :1].squeeze(1), A[:, 0]),
    "expand(3, -1, -1) of [:1]": (lambda v: v[:1].expand(3, -1, -1), np.broadcast_to(A[:1],
                                                                                    (3, 3, 4))),
    "view(6, 4)": (lambda v: v.view(6, 4), A.reshape(6, 4)),
    "add(alpha=2)": (lambda v: v.add(v, alpha=2), 3 * A),
    "mul, sub, div, pow, neg": (lambda v: v.mul(2).sub(1).div(2).pow(2).neg(),
                                -(((A * 2 - 1) / 2) ** 2)),
}


@pytest.mark.parametrize("name", SHAPE_CASES)
def test_pytorch_shape_methods(name):
    fn, want = SHAPE_CASES[name]
    x = fg.tensor(A, requires_grad=True)
    y = fn(x)
    np.testing.assert_array_equal(y.numpy(), want)
    y.backward(np.ones(y.shape))
    if torch is not None:
        t = torch.tensor(A, requires_grad=True)
        fn(t).backward(torch.ones(tuple(y.shape), dtype=torch.float64))
        np.testing.assert_array_equal(x.grad, t.grad.numpy())


def test_split_chunk_and_size():
    x = fg.tensor(A)
    assert [p.shape for p in x.split(3, dim=2)] == [(2, 3, 3), (2, 3, 1)]
    assert [p.shape for p in x.split([1, 2], 1)] == [(2, 1, 4), (2, 2, 4)]
    assert [p.shape for p in x.chunk(3, 2)] == [(2, 3, 2), (2, 3, 2)]
    np.testing.assert_array_equal(fg.cat(x.chunk(2, dim=1), dim=1).numpy(), A)
    assert x.size() == (2, 3, 4) and x.size(-1) == 4 and x.size == 24 == x.numel()
    assert x.dim() == 3


def test_creation_functions():
    assert fg.full((2,), 7).dtype == np.int64 and fg.full((2,), 0.5).dtype == np.float64
    assert fg.full((1,), True).dtype == np.bool_
    np.testing.assert_array_equal(fg.eye(2, 3).numpy(), np.eye(2, 3))
    np.testing.assert_array_equal(fg.linspace(0, 1, 5).numpy(), [0, 0.25, 0.5, 0.75, 1])
    z = fg.zeros_like(fg.ones(2, 3, dtype=np.float32))
    assert z.shape == (2, 3) and z.dtype == np.float32 and not z.numpy().any()
    assert fg.ones_like(fg.tensor([1, 2])).dtype == np.int64
    r = fg.rand(1000, seed=0).numpy()
    assert 0 <= r.min() and r.max() < 1 and np.array_equal(r, fg.rand(1000, seed=0).numpy())
    i = fg.randint(5, (100,), seed=0).numpy()
    assert i.dtype == np.int64 and set(i.tolist()) == {0, 1, 2, 3, 4}
    assert fg.randint(2, 4, size=(3,), seed=0).numpy().min() >= 2
    with pytest.raises(fg.FastgradError, match="randint: high 1 is not above low 2"):
        fg.randint(2, 1)


# ----------------------------------------------------------------------------- the op table
def _torch_namespace():
    """``fg.name`` in an op's front-end call, read as torch.nn.functional.name or torch.name."""
    import torch.nn.functional as F

    class Names:
        def __getattr__(self, name):
            return getattr(F, name, None) or getattr(torch, name)

    return Names()


ELEMENTWISE = [d for d in fg.ops.TABLE.values() if d.family in (fg.ops.UNARY, fg.ops.BINARY)]


@needs_torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("d", ELEMENTWISE, ids=[d.name for d in ELEMENTWISE])
def test_every_elementwise_op_matches_torch_values_and_gradients(d, dtype):
    """Each elementwise op's front-end call (the registry's ``front_end``) run through fastgrad
    and through torch on the op's sample domain: values, and gradients of both operands."""
    from conftest import sample_array

    rng = np.random.default_rng(d.code)
    domain = d.samples[0][2]
    arrays = [sample_array(rng, (3, 4), domain, dtype) for _ in range(d.arity)]
    names = ["x", "v"][: d.arity]
    ours = [fg.tensor(a, requires_grad=d.differentiable) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=d.differentiable) for a in arrays]
    y = eval(d.front_end, {"fg": fg, "np": np, **dict(zip(names, ours))})
    ty = eval(d.front_end, {"fg": _torch_namespace(), "np": np, **dict(zip(names, theirs))})
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), **tol)
    if not d.differentiable:
        return
    seed = sample_array(rng, y.shape, "real", dtype)
    y.backward(seed)
    ty.backward(torch.tensor(seed))
    for ours_t, theirs_t in zip(ours, theirs):
        assert (ours_t.grad is None) == (theirs_t.grad is None)  # an operand the call skips
        if ours_t.grad is not None:
            np.testing.assert_allclose(ours_t.grad, theirs_t.grad.numpy(), **tol)


# ----------------------------------------------------------------------------- reductions
Z = np.array([[1.0, 0.0, 3.0], [2.0, -1.0, 0.5]])  # a zero in the first row


def _vector_norm(p, **kw):
    def fn(v):
        if torch is not None and isinstance(v, torch.Tensor):
            return torch.linalg.vector_norm(v, p, **kw)
        return v.norm(p, **kw)

    return fn


REDUCTIONS = {
    "prod(1) with a zero": (lambda v: v.prod(1), [[0, 3, 0], [-0.5, 1, -2]]),
    "prod()": (lambda v: v.prod(), None),
    "logsumexp(1)": (lambda v: v.logsumexp(1), None),
    "cumsum(1)": (lambda v: v.cumsum(1), None),
    "var(1) (unbiased)": (lambda v: v.var(1), None),
    "var(0, correction=0)": (lambda v: v.var(0, correction=0), None),
    "std(1, keepdim=True)": (lambda v: v.std(1, keepdim=True), None),
    "norm()": (_vector_norm(2), None),
    "norm(1, dim=1)": (_vector_norm(1, dim=1), None),
    "norm(inf)": (_vector_norm(float("inf")), None),
    "norm(3, dim=0)": (_vector_norm(3, dim=0), None),
}


@pytest.mark.parametrize("name", REDUCTIONS)
def test_reductions_follow_pytorch(name):
    fn, want_grad = REDUCTIONS[name]
    x = leaf(Z)
    y = fn(x)
    y.backward(np.ones(y.shape))
    if want_grad is not None:
        np.testing.assert_allclose(x.grad, want_grad)
    if torch is not None:
        t = torch.tensor(Z, requires_grad=True)
        ty = fn(t)
        ty.backward(torch.ones(tuple(ty.shape), dtype=torch.float64))
        np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(x.grad, t.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_the_zero_norm_counts_non_zeros_and_is_constant_in_x():
    x = leaf(Z)
    n = x.norm(0, dim=1)
    np.testing.assert_array_equal(n.numpy(), [2.0, 3.0])
    assert not n.requires_grad  # PyTorch: a zero gradient


def test_edge_cases_of_the_reductions():
    z = leaf(np.zeros(3))
    z.norm().backward()  # PyTorch: 0, not NaN, at the zero vector
    np.testing.assert_array_equal(z.grad, 0.0)
    two_zeros = leaf([0.0, 2.0, 0.0])
    two_zeros.prod().backward()
    np.testing.assert_array_equal(two_zeros.grad, 0.0)
    rows = fg.tensor([[-np.inf, -np.inf], [np.inf, 1.0], [1e4, 1e4]])
    np.testing.assert_allclose(rows.logsumexp(1).numpy(), [-np.inf, np.inf, 1e4 + np.log(2)])
    assert fg.tensor([[1.0, 2.0]]).var(0).isnan().all().item()  # n - 1 = 0: 0 / 0
    np.testing.assert_allclose(np.var(fg.tensor(Z), axis=1).numpy(), np.var(Z, axis=1))  # ddof 0
    np.testing.assert_allclose(fg.tensor(Z).cumsum().numpy(), np.cumsum(Z))  # flattened


# ----------------------------------------------------------------------------- layers
MODULES = ["ReLU", "Tanh", "Sigmoid", "LeakyReLU", "Softplus", "Identity", "GELU", "SiLU", "ELU",
           "SELU", "Mish", "Hardswish", "ReLU6", "LogSigmoid"]


@pytest.mark.parametrize("name", MODULES)
def test_activation_modules_are_classes_as_in_pytorch(name):
    m = getattr(fg.nn, name)()
    assert isinstance(m, getattr(fg.nn, name)) and isinstance(m, fg.nn.Module)
    assert repr(m).startswith(name + "(")
    a = np.linspace(-5, 5, 11) + 0.1
    x = leaf(a)
    m(x).sum().backward()
    if torch is not None:
        t = torch.tensor(a, requires_grad=True)
        getattr(torch.nn, name)()(t).sum().backward()
        np.testing.assert_allclose(m(fg.tensor(a)).numpy(), getattr(torch.nn, name)()(
            torch.tensor(a)).numpy(), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(x.grad, t.grad.numpy(), rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------- losses
_R = np.random.default_rng(0)
LOGITS, PROBS = _R.standard_normal((6, 4)), _R.dirichlet(np.ones(4), 6)
LABELS, LABELS_IGNORED = np.array([0, 3, 1, 1, 2, 0]), np.array([0, 3, 1, 1, 2, -100])
LOGITS3, LABELS3 = _R.standard_normal((2, 4, 3)), _R.integers(0, 4, (2, 3))
W4 = np.array([0.5, 1.0, 2.0, 1.5])


def _w(m):
    return torch.tensor(W4) if torch is not None and m is torch.nn.functional else fg.tensor(W4)


LOSSES = {
    "cross_entropy": (lambda m, x, y: m.cross_entropy(x, y), LOGITS, LABELS),
    "ignore_index=-100": (lambda m, x, y: m.cross_entropy(x, y), LOGITS, LABELS_IGNORED),
    "weight": (lambda m, x, y: m.cross_entropy(x, y, weight=_w(m)), LOGITS, LABELS),
    "weight, ignore_index=1": (lambda m, x, y: m.cross_entropy(x, y, weight=_w(m),
                                                               ignore_index=1), LOGITS, LABELS),
    "label_smoothing": (lambda m, x, y: m.cross_entropy(x, y, label_smoothing=0.1), LOGITS,
                        LABELS),
    "smoothing, weight, ignore": (lambda m, x, y: m.cross_entropy(
        x, y, weight=_w(m), ignore_index=3, label_smoothing=0.2), LOGITS, LABELS),
    "probability targets": (lambda m, x, y: m.cross_entropy(x, y), LOGITS, PROBS),
    "probabilities, weight, smoothing": (lambda m, x, y: m.cross_entropy(
        x, y, weight=_w(m), label_smoothing=0.3), LOGITS, PROBS),
    "(N, C, d)": (lambda m, x, y: m.cross_entropy(x, y), LOGITS3, LABELS3),
    "(N, C, d), none": (lambda m, x, y: m.cross_entropy(x, y, reduction="none"), LOGITS3,
                        LABELS3),
    "nll_loss, weight": (lambda m, x, y: m.nll_loss(x.log_softmax(1), y, weight=_w(m)),
                         LOGITS, LABELS),
    "nll_loss, ignored": (lambda m, x, y: m.nll_loss(x.log_softmax(1), y), LOGITS,
                          LABELS_IGNORED),
    "l1_loss": (lambda m, x, y: m.l1_loss(x, y), LOGITS, PROBS),
    "smooth_l1_loss": (lambda m, x, y: m.smooth_l1_loss(x, y, beta=0.5), LOGITS, PROBS),
    "huber_loss": (lambda m, x, y: m.huber_loss(x, y, delta=0.7), LOGITS, PROBS),
    "kl_div batchmean": (lambda m, x, y: m.kl_div(x.log_softmax(1), y, reduction="batchmean"),
                         LOGITS, PROBS),
    "binary_cross_entropy": (lambda m, x, y: m.binary_cross_entropy(x.sigmoid(), y), LOGITS,
                             PROBS),
    "bce with logits, pos_weight": (lambda m, x, y: m.binary_cross_entropy_with_logits(
        x, y, pos_weight=_w(m)), LOGITS, PROBS),
}


@needs_torch
@pytest.mark.parametrize("name", LOSSES)
def test_losses_match_torch(name):
    fn, x, y = LOSSES[name]
    ours, theirs = leaf(x), torch.tensor(x, requires_grad=True)
    loss = fn(fg.nn.functional, ours, y)
    t_loss = fn(torch.nn.functional, theirs, torch.tensor(y))
    loss.backward(np.ones(loss.shape))
    t_loss.backward(torch.ones(tuple(t_loss.shape), dtype=torch.float64))
    np.testing.assert_allclose(loss.numpy(), t_loss.detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_an_ignored_class_is_ignored_and_weights_divide_the_mean():
    x = np.zeros((3, 2))  # every row: loss log 2
    loss = fg.cross_entropy(fg.tensor(x), np.array([0, 1, -100]))
    assert loss.item() == pytest.approx(np.log(2))
    weighted = fg.cross_entropy(fg.tensor(x), np.array([0, 1, 1]), weight=np.array([1.0, 3.0]))
    assert weighted.item() == pytest.approx(np.log(2))  # (1 + 3 + 3) log 2 / 7


def test_weights_and_ignored_classes_follow_the_labels_of_each_compiled_call():
    w = fg.tensor(np.zeros(3, np.float32), requires_grad=True)
    step = fg.compile(lambda x, y: fg.cross_entropy(x + w, y, weight=np.float32([1, 2, 4]),
                                                    ignore_index=0))
    x = np.zeros((4, 3), np.float32)
    for y in (np.array([0, 1, 2, 2]), np.array([1, 1, 0, 0])):
        value, (gw,) = step(x, y)
        eager = leaf(x.astype(np.float64))
        want = fg.cross_entropy(eager, y, weight=np.array([1.0, 2, 4]), ignore_index=0)
        want.backward()
        assert value == pytest.approx(want.item(), rel=1e-6)
        np.testing.assert_allclose(gw, eager.grad.sum(0), rtol=1e-5, atol=1e-7)


def test_one_hot():
    np.testing.assert_array_equal(fg.nn.functional.one_hot(fg.tensor([0, 2]), 3).numpy(),
                                  [[1, 0, 0], [0, 0, 1]])
    assert fg.nn.functional.one_hot(fg.tensor([1, 3])).shape == (2, 4)


# ----------------------------------------------------------------------------- indexing
GATHER_INDEX = np.array([[[0, 3], [1, 1], [2, 0]], [[3, 3], [0, 1], [2, 2]]])


def _index(v, a):
    return torch.tensor(a) if torch is not None and isinstance(v, torch.Tensor) else a


SCATTER_SRC = np.arange(100.0, 112.0).reshape(2, 3, 2)
INDEX_ADD_SRC = np.arange(-18.0, 0.0).reshape(2, 3, 3)


def _scatter_add_np(x, dim, index, src):
    """torch.scatter_add written out: out[.., index[i], ..] += src[.., i, ..] along dim."""
    out = x.copy()
    for pos in np.ndindex(index.shape):
        to = list(pos)
        to[dim] = index[pos]
        out[tuple(to)] += src[pos]
    return out


INDEXING = {
    "x[:, idx]": (lambda v: v[:, [2, 0, 2]], None),
    "x[..., idx]": (lambda v: v[..., [2, 0, 2]], None),
    "x[1, :, idx]": (lambda v: v[1, :, [3, 1]], None),
    "x[:, None, 1:, idx]": (lambda v: v[:, None, 1:, [2, 0]], None),
    "x[mask]": (lambda v: v[v > 10], A[A > 10]),
    "x[i, j]": (lambda v: v[_index(v, np.array([1, 0, 1])), _index(v, np.array([2, 2, 0]))],
                A[[1, 0, 1], [2, 2, 0]]),
    "x[i, j, k] broadcast": (lambda v: v[_index(v, np.array([[1], [0]])),
                                         _index(v, np.array([0, 2])), _index(v, np.array([3, 1]))],
                             A[[[1], [0]], [0, 2], [3, 1]]),
    "x[row mask]": (lambda v: v[(v > 10).all(2)], A[(A > 10).all(2)]),
    "masked_fill": (lambda v: v.masked_fill(v > 5, -1.0), np.where(A > 5, -1.0, A)),
    "index_select": (lambda v: v.index_select(2, _index(v, np.array([3, 1]))), A[:, :, [3, 1]]),
    "gather(2)": (lambda v: v.gather(2, _index(v, GATHER_INDEX)),
                  np.take_along_axis(A, GATHER_INDEX, 2)),
    "gather(0)": (lambda v: v.gather(0, _index(v, GATHER_INDEX[:1, :2] % 2)),
                  np.take_along_axis(A[:, :2, :2], GATHER_INDEX[:1, :2] % 2, 0)),
    "x[i0, :, i1]": (lambda v: v[_index(v, np.array([1, 0, 1])), :, _index(v, np.array([3, 3, 0]))],
                     A[[1, 0, 1], :, [3, 3, 0]]),
    "x[:, i0, i1]": (lambda v: v[:, _index(v, np.array([2, 0])), _index(v, np.array([1, 1]))],
                     A[:, [2, 0], [1, 1]]),
    "x[i0, 1, 1:3]": (lambda v: v[_index(v, np.array([1, 0])), 1, 1:3], A[[1, 0], 1, 1:3]),
    "x[i0, ..., i1]": (
        lambda v: v[_index(v, np.array([[1], [0]])), ..., _index(v, np.array([0, 2, 3]))],
        A[np.array([[1], [0]]), ..., np.array([0, 2, 3])]),
    "scatter_add(2)": (
        lambda v: v.scatter_add(2, _index(v, GATHER_INDEX), _index(v, SCATTER_SRC)),
        _scatter_add_np(A, 2, GATHER_INDEX, SCATTER_SRC)),
    "scatter_add(0), index smaller than src": (
        lambda v: v.scatter_add(0, _index(v, GATHER_INDEX[:1, :2] % 2), _index(v, SCATTER_SRC)),
        _scatter_add_np(A, 0, GATHER_INDEX[:1, :2] % 2, SCATTER_SRC)),
    "index_add(2)": (
        lambda v: v.index_add(2, _index(v, np.array([3, 0, 3])), _index(v, INDEX_ADD_SRC),
                              alpha=2.0),
        A + np.stack([2.0 * INDEX_ADD_SRC[..., 1], np.zeros((2, 3)), np.zeros((2, 3)),
                      2.0 * (INDEX_ADD_SRC[..., 0] + INDEX_ADD_SRC[..., 2])], axis=-1)),
}


@pytest.mark.parametrize("name", INDEXING)
def test_indexing_as_pytorch(name):
    fn, want = INDEXING[name]
    x = fg.tensor(A, requires_grad=True)
    y = fn(x)
    if want is not None:
        np.testing.assert_array_equal(y.numpy(), want)
    seed = np.arange(1.0, 1.0 + y.size).reshape(y.shape)
    y.backward(seed)
    if torch is not None:
        t = torch.tensor(A, requires_grad=True)
        ty = fn(t)
        np.testing.assert_array_equal(y.numpy(), ty.detach().numpy())
        ty.backward(torch.tensor(seed))
        np.testing.assert_array_equal(x.grad, t.grad.numpy())


def test_index_add_and_scatter_add_refuse_negative_indices_as_pytorch():
    for call in (lambda: fg.zeros(3).index_add(0, np.array([-1]), fg.ones(1)),
                 lambda: fg.zeros(3).scatter_add(0, np.array([-1]), fg.ones(1))):
        with pytest.raises(fg.FastgradError, match=r"index -1 is out of range \[0, 3\)"):
            call()


def test_scatter_add_and_index_add_read_the_source_gradient_back_where_it_was_added():
    """The source's gradient is the output's at the places it was added to (entries added to a
    repeated place each get that place's gradient; alpha scales it), as PyTorch's."""
    seed = np.arange(1.0, 25.0).reshape(2, 3, 4)
    calls = {"scatter_add": (lambda v, s: v.scatter_add(2, _index(v, GATHER_INDEX), s),
                             SCATTER_SRC, np.take_along_axis(seed, GATHER_INDEX, 2)),
             "index_add": (lambda v, s: v.index_add(2, _index(v, np.array([3, 0, 3])), s,
                                                    alpha=2.0),
                           INDEX_ADD_SRC, 2.0 * seed[..., [3, 0, 3]])}
    for name, (call, source, want) in calls.items():
        src = fg.tensor(source, requires_grad=True)
        call(fg.tensor(A), src).backward(seed)
        np.testing.assert_array_equal(src.grad, want, err_msg=name)
        if torch is not None:
            t = torch.tensor(source, requires_grad=True)
            call(torch.tensor(A), t).backward(torch.tensor(seed))
            np.testing.assert_array_equal(src.grad, t.grad.numpy(), err_msg=name)


def test_an_int_among_index_arrays_selects_first_as_pytorch():
    """PyTorch applies an int index before the index arrays; NumPy broadcasts it with them,
    which moves the indexed dims to the front when a slice separates them. PyTorch's order."""
    x = np.arange(120.0).reshape(2, 3, 4, 5)
    i0, i1 = np.array([1, 0, -1]), np.array([[2], [-3]])
    for key, want in (((0, slice(None), i0, i1), x[0][:, i0, i1]),
                      ((slice(None), i0, i1, 0), x[..., 0][:, i0, i1])):
        v = fg.tensor(x, requires_grad=True)
        y = v[key]
        np.testing.assert_array_equal(y.numpy(), want)
        y.backward(np.ones(y.shape))
        if torch is not None:
            t = torch.tensor(x, requires_grad=True)
            ty = t[tuple(torch.tensor(k) if isinstance(k, np.ndarray) else k for k in key)]
            np.testing.assert_array_equal(y.numpy(), ty.detach().numpy())
            ty.backward(torch.ones(ty.shape, dtype=torch.float64))
            np.testing.assert_array_equal(v.grad, t.grad.numpy())


def test_masks_that_would_shape_a_compiled_value_are_refused():
    w = fg.tensor(np.ones(3), requires_grad=True)
    with pytest.raises(fg.FastgradError, match="boolean mask inside fg.compile"):
        fg.compile(lambda x: (x * w)[x > 0].sum())(np.ones(3))
    w3 = fg.tensor(np.ones((2, 3, 4)), requires_grad=True)
    with pytest.raises(fg.FastgradError, match="several index arrays, one computed inside"):
        fg.compile(lambda i: w3[i, :, i].sum())(np.array([0, 1]))


# ----------------------------------------------------------------------------- convolution
_C = np.random.default_rng(5)
IMG, KER, BIAS = _C.standard_normal((2, 4, 7, 6)), _C.standard_normal((6, 4, 3, 3)), \
    _C.standard_normal(6)
KER_G, SEQ, KER1 = _C.standard_normal((6, 2, 3, 2)), _C.standard_normal((2, 3, 10)), \
    _C.standard_normal((5, 3, 4))


def _f(v):
    return torch.nn.functional if torch is not None and isinstance(v, torch.Tensor) \
        else fg.nn.functional


CONV = {
    "conv2d": (lambda x, w, b: _f(x).conv2d(x, w, b), (IMG, KER, BIAS)),
    "stride 2, padding 1, dilation 2": (lambda x, w, b: _f(x).conv2d(
        x, w, b, stride=2, padding=1, dilation=2), (IMG, KER, BIAS)),
    'padding="same"': (lambda x, w: _f(x).conv2d(x, w, padding="same"), (IMG, KER)),
    "groups 2, padding (1, 0), stride (1, 2)": (lambda x, w: _f(x).conv2d(
        x, w, groups=2, padding=(1, 0), stride=(1, 2)), (IMG, KER_G)),
    "conv1d": (lambda x, w: _f(x).conv1d(x, w, stride=2, padding=1), (SEQ, KER1)),
    'conv1d "same", dilation 2': (lambda x, w: _f(x).conv1d(x, w, padding="same", dilation=2),
                                  (SEQ, KER1)),
    "max_pool2d": (lambda x: _f(x).max_pool2d(x, 2), (IMG,)),
    "max_pool2d stride 1, padding 1": (lambda x: _f(x).max_pool2d(x, 3, stride=1, padding=1),
                                       (IMG,)),
    "max_pool2d ties": (lambda x: _f(x).max_pool2d(x, 2), (np.zeros((1, 1, 2, 2)),)),
    "avg_pool2d": (lambda x: _f(x).avg_pool2d(x, 2), (IMG,)),
    "avg_pool2d without padded zeros": (lambda x: _f(x).avg_pool2d(
        x, 3, stride=2, padding=1, count_include_pad=False), (IMG,)),
}


def test_conv2d_is_a_cross_correlation():
    x, w = IMG[:1, :1], KER[:1, :1]
    y = fg.nn.functional.conv2d(x, fg.tensor(w)).numpy()
    want = np.array([[(x[0, 0, i : i + 3, j : j + 3] * w[0, 0]).sum() for j in range(4)]
                     for i in range(5)])
    np.testing.assert_allclose(y[0, 0], want, rtol=1e-12)


@needs_torch
@pytest.mark.parametrize("name", CONV)
def test_convolution_and_pooling_match_torch(name):
    fn, arrays = CONV[name]
    ours = [fg.tensor(a, requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    y, ty = fn(*ours), fn(*theirs)
    seed = _C.standard_normal(y.shape)
    y.backward(seed)
    ty.backward(torch.tensor(seed))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.grad, b.grad.numpy(), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- found in review
def test_saturated_probabilities_have_finite_bce_gradients():
    z = fg.tensor(np.float32([20.0, -20.0]), requires_grad=True)
    fg.binary_cross_entropy(z.sigmoid(), fg.tensor(np.float32([1.0, 0.0]))).backward()
    assert np.isfinite(z.grad).all() and z.grad[0] == 0.0


def test_shape_mismatches_and_casts_that_pytorch_refuses_are_refused():
    with pytest.raises(fg.FastgradError, match="binary_cross_entropy_with_logits: input"):
        fg.binary_cross_entropy_with_logits(fg.zeros(3, 1), fg.zeros(3))
    with pytest.raises(fg.FastgradError, match="is a cast of another tensor"):
        fg.optim.SGD([fg.tensor([1.0], requires_grad=True).float()], lr=0.1)
    with pytest.raises(fg.FastgradError, match="index -1 is out of range"):
        fg.tensor(A).gather(2, -np.ones((2, 3, 1), np.int64))
    with pytest.raises(fg.FastgradError, match="index_select: index of shape"):
        fg.tensor(A).index_select(0, np.zeros((1, 1), np.int64))


def test_std_of_a_constant_has_a_zero_gradient():
    x = leaf([1.0, 1.0, 1.0])
    x.std().backward()
    np.testing.assert_array_equal(x.grad, 0.0)


def test_masks_combine_as_bools_eagerly_and_compiled():
    w = fg.tensor(np.ones(3), requires_grad=True)

    def f(x):
        v = x * w
        masks = ((v > 0) + (v > 1)).double().sum() + ((v > 0) * (v > 1)).double().sum()
        return masks + (v * 0.0).sum()  # a path to w, so that fg.compile has a gradient

    x = np.array([-1.0, 0.5, 2.0])
    eager = f(fg.tensor(x)).item()
    assert eager == 2.0 + 1.0  # or, then and
    assert fg.compile(f)(x)[0] == eager
    m = fg.tensor(x) > 0
    for bad in (lambda: -m, lambda: m - m,
                lambda: fg.compile(lambda x: (-(x * w > 0)).double().sum() + (x * w).sum())(x)):
        with pytest.raises(fg.FastgradError, match="bool"):
            bad()


def test_unseeded_randomness_is_refused_where_it_would_be_frozen():
    w = fg.tensor(np.ones(2), requires_grad=True)
    for draw in (lambda: fg.rand(2), lambda: fg.randn(2), lambda: fg.randint(3, (2,))):
        with pytest.raises(fg.FastgradError, match="unseeded random draw"):
            fg.compile(lambda x: (x * w + draw()).sum())(np.ones(2))
    assert fg.compile(lambda x: (x * w + fg.randn(2, seed=0)).sum())(np.ones(2))[0] == \
        pytest.approx(2 + fg.randn(2, seed=0).numpy().sum())
    drop = fg.nn.Dropout(0.5, seed=0)
    with pytest.raises(fg.FastgradError, match="dropout: inside fg.compile"):
        fg.scan(lambda h, x: drop(h + x), fg.ones(3), fg.ones((4, 3)))


def test_indices_are_those_of_the_values_at_the_call():
    w = fg.tensor(np.array([[1.0, 2.0], [2.0, 1.0]]), requires_grad=True)
    r = w.max(1)
    w.numpy()[...] = [[3.0, 0.0], [0.0, 3.0]]  # changed after the call
    np.testing.assert_array_equal(r.indices.numpy(), [1, 0])


def test_integer_reductions_and_scalar_arithmetic_stay_exact_integers():
    u = fg.tensor(np.uint8([[0, 1], [2, 3]]))
    np.testing.assert_array_equal(u.min(1).values.numpy(), [0, 2])
    assert fg.tensor(np.array([-(2**63), 0])).min().item() == -(2**63)
    assert fg.tensor([True, False]).min().item() is False
    labels = fg.tensor([1, 2, 3]) - 1
    assert labels.dtype == np.int64 and labels.tolist() == [0, 1, 2]
    assert (fg.tensor([2**53 + 1]) + 0).item() == 2**53 + 1
    assert fg.tensor(A)[fg.arange(2) + 0].shape == (2, 3, 4)


def test_float32_products_and_running_sums_accumulate_as_pytorch():
    big = fg.tensor(np.float32([1e30, 1e30, 1e-30]))
    assert big.prod().item() == np.inf  # float32 accumulation, as PyTorch's prod
    run = fg.tensor(np.float32([3e38, 3e38, -3e38])).cumsum(0).numpy()
    np.testing.assert_array_equal(run, np.float32([3e38, np.inf, 3e38]))  # float64 running sum
    for a, want in (([0.0, 2.0, np.nan], [np.nan, np.nan, 0.0]),
                    ([0.0, 0.0, np.nan], [0.0, 0.0, 0.0]),
                    ([0.0, np.inf, 2.0], [np.inf, 0.0, np.nan])):
        x = leaf(a)
        x.prod().backward()
        np.testing.assert_array_equal(x.grad, want)


def test_numpy_arguments_are_followed_or_refused():
    a = fg.tensor(np.arange(4.0).reshape(2, 2))
    assert np.concatenate([a, a], axis=None).shape == (8,)
    with pytest.raises(fg.FastgradError, match="order='F'"):
        np.reshape(a, (4,), order="F")


def test_values_indices_misuse_and_casts_with_devices():
    r = fg.tensor(A).max(1)
    for misuse in (lambda: r + 1, lambda: r.sum(), lambda: 1 - r, lambda: np.ones(1) * r):
        with pytest.raises(fg.FastgradError, match="use .values"):
            misuse()
    x = fg.tensor([1.0])
    assert x.to(device="cpu") is x and x.to("cpu", np.float32).dtype == np.float32
    with pytest.raises(fg.FastgradError, match="fastgrad runs on the CPU"):
        x.to("cuda")


def test_kl_div_sign_and_zero_follow_pytorch():
    assert np.isnan(fg.kl_div(fg.tensor([-1.0]), fg.tensor([-0.5]), reduction="sum").item())
    assert fg.kl_div(fg.tensor([-1.0]), fg.tensor([0.0]), reduction="sum").item() == 0.0
    assert str(fg.tensor([-0.0]).sign().numpy()[0]) == "0.0"


NUMPY_CALLS = {
    "np.square": np.square, "np.round(x, 1)": lambda v: np.round(v, 1), "np.around": np.around,
    "np.squeeze": lambda v: np.squeeze(v[None]), "np.expand_dims": lambda v: np.expand_dims(v, 1),
    "np.flip": np.flip, "np.flip(x, 1)": lambda v: np.flip(v, 1), "np.tile(x, 2)":
    lambda v: np.tile(v, 2), "np.tile(x, (2, 1, 2))": lambda v: np.tile(v, (2, 1, 2)),
    "np.dot": lambda v: np.dot(v, v.T), "np.var": lambda v: np.var(v, axis=1),
    "np.std(ddof=1)": lambda v: np.std(v, ddof=1), "np.prod": lambda v: np.prod(v, axis=0),
    "np.cumsum": lambda v: np.cumsum(v, axis=1), "np.tanh": np.tanh, "np.arcsinh": np.arcsinh,
}


@pytest.mark.parametrize("name", NUMPY_CALLS)
def test_numpy_calls_on_tensors_give_numpys_values_and_record_gradients(name):
    fn, a = NUMPY_CALLS[name], np.arange(6.0).reshape(2, 3) - 2.4
    x = leaf(a)
    y = fn(x)
    assert isinstance(y, fg.Tensor)
    np.testing.assert_allclose(y.numpy(), fn(a), rtol=1e-12)
    y.backward(np.ones(y.shape))
    assert x.grad is not None and x.grad.shape == a.shape


# ----------------------------------------------------------------------------- batch norm
def _batch_norm_np(x, weight, bias, mean, var, momentum, eps=1e-5):
    """torch.nn.BatchNorm's training step written out: (y, new running mean, new running var)."""
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    m, v = x.mean(axes), x.var(axes)
    n = x.size // x.shape[1]
    y = (x - m.reshape(shape)) / np.sqrt(v.reshape(shape) + eps)
    y = y * weight.reshape(shape) + bias.reshape(shape)
    return y, (1 - momentum) * mean + momentum * m, (1 - momentum) * var + momentum * v * n / (n - 1)


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (2, 3, 4, 5)])
def test_batch_norm_trains_on_batch_statistics_and_tracks_running_ones_as_pytorch(shape):
    rng = np.random.default_rng(3)
    bn = (fg.nn.BatchNorm2d if len(shape) == 4 else fg.nn.BatchNorm1d)(3, momentum=0.3)
    w, b = rng.normal(size=3), rng.normal(size=3)
    bn.weight.numpy()[...], bn.bias.numpy()[...] = w, b
    mean, var = np.zeros(3), np.ones(3)
    xs = [rng.normal(size=shape) * 3 + 1 for _ in range(3)]
    for x in xs:
        got = bn(x)
        want, mean, var = _batch_norm_np(x, w, b, mean, var, 0.3)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bn.running_mean.numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.numpy(), var, rtol=1e-12)
    assert bn.num_batches_tracked.item() == 3
    bn.eval()
    y = bn(xs[0]).numpy()
    s = (1, -1) + (1,) * (len(shape) - 2)
    np.testing.assert_allclose(y, (xs[0] - mean.reshape(s)) / np.sqrt(var.reshape(s) + 1e-5)
                               * w.reshape(s) + b.reshape(s), rtol=1e-12)
    if torch is not None:
        t = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(
            3, momentum=0.3, dtype=torch.float64)
        with torch.no_grad():
            t.weight[...], t.bias[...] = torch.tensor(w), torch.tensor(b)
        for x in xs:
            t(torch.tensor(x))
        t.eval()
        np.testing.assert_allclose(t(torch.tensor(xs[0])).detach().numpy(), y, rtol=1e-12)
        for k, v in t.state_dict().items():
            np.testing.assert_allclose(bn.state_dict()[k], v.numpy(), rtol=1e-12, err_msg=k)


def test_batch_norm_gradients_match_pytorch_and_finite_differences():
    rng = np.random.default_rng(4)
    x0 = rng.normal(size=(5, 3))
    bn = fg.nn.BatchNorm1d(3)
    x = fg.tensor(x0, requires_grad=True)
    seed = rng.normal(size=(5, 3))
    bn(x).backward(seed)
    if torch is not None:
        t = torch.nn.BatchNorm1d(3, dtype=torch.float64)
        tx = torch.tensor(x0, requires_grad=True)
        t(tx).backward(torch.tensor(seed))
        np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(bn.weight.grad, t.weight.grad.numpy(), rtol=1e-10)
        np.testing.assert_allclose(bn.bias.grad, t.bias.grad.numpy(), rtol=1e-10)
    assert fg.gradcheck(lambda v: (bn(v) * fg.tensor(seed)).sum(), [x0])


def test_batch_norm_state_saves_loads_and_refuses_to_train_compiled():
    bn = fg.nn.BatchNorm1d(2, momentum=None)  # a cumulative average, as PyTorch's None
    bn(np.array([[0.0, 2.0], [2.0, 4.0]]))
    bn(np.array([[4.0, 2.0], [6.0, 4.0]]))
    np.testing.assert_allclose(bn.running_mean.numpy(), [3.0, 3.0])
    model = fg.nn.Sequential(fg.nn.Linear(2, 2, seed=0), bn)
    assert list(model.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias",
                                        "1.running_mean", "1.running_var",
                                        "1.num_batches_tracked"]
    other = fg.nn.Sequential(fg.nn.Linear(2, 2, seed=1), fg.nn.BatchNorm1d(2))
    other.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(other[1].running_var.numpy(), bn.running_var.numpy())
    assert all(p is not bn.running_mean for p in model.parameters())
    bn.running_mean = np.array([5.0, 5.0])  # a buffer assigned anew stays the buffer
    np.testing.assert_array_equal(model.state_dict()["1.running_mean"], [5.0, 5.0])
    x = np.array([[1.0, 2.0], [3.0, 5.0]])
    with pytest.raises(fg.FastgradError, match="running statistics once, at trace time"):
        fg.compile(lambda v: model(v).sum())(x)
    model.eval()
    loss, _ = fg.compile(lambda v: model(v).sum())(x)
    assert loss == pytest.approx(model(x).sum().item(), rel=1e-12)


# ----------------------------------------------------------------------------- recurrent stacks
def _recurrent_np(kind, x, weights, layers, directions, h0=None):
    """torch.nn.RNN / GRU / LSTM written out in NumPy (x (T, B, I)): (outputs, h_n[, c_n])."""
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    T, B, _ = x.shape
    finals_h, finals_c, seq = [], [], x
    for layer in range(layers):
        outs = []
        for d in range(directions):
            sfx = f"l{layer}" + ("_reverse" if d else "")
            Wi, Wh, bi, bh = (weights[f"{w}_{sfx}"] for w in ("weight_ih", "weight_hh",
                                                               "bias_ih", "bias_hh"))
            H = Wh.shape[1]
            k = layer * directions + d
            h = np.zeros((B, H)) if h0 is None else h0[k]
            c = np.zeros((B, H))
            hs = np.zeros((T, B, H))
            for t in (range(T - 1, -1, -1) if d else range(T)):
                xi, hh = seq[t] @ Wi.T + bi, h @ Wh.T + bh
                if kind == "RNN":
                    h = np.tanh(xi + hh)
                elif kind == "GRU":
                    r, z = sig(xi[:, :H] + hh[:, :H]), sig(xi[:, H:2 * H] + hh[:, H:2 * H])
                    n = np.tanh(xi[:, 2 * H:] + r * hh[:, 2 * H:])
                    h = (1 - z) * n + z * h
                else:
                    g = xi + hh
                    c = sig(g[:, H:2 * H]) * c + sig(g[:, :H]) * np.tanh(g[:, 2 * H:3 * H])
                    h = sig(g[:, 3 * H:]) * np.tanh(c)
                hs[t] = h
            outs.append(hs)
            finals_h.append(h)
            finals_c.append(c)
        seq = np.concatenate(outs, axis=2)
    return seq, np.stack(finals_h), np.stack(finals_c)


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("layers, bidirectional", [(2, False), (1, True), (3, True)])
def test_recurrent_stacks_of_layers_and_directions_as_pytorch(kind, layers, bidirectional):
    """num_layers and bidirectional as PyTorch's: the parameter names, the outputs (forward and
    reverse directions concatenated), the final states (num_layers · D, B, H) in PyTorch's
    order, and the gradients."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 2, 3))
    layer = getattr(fg.nn, kind)(3, 4, layers, bidirectional=bidirectional, seed=0)
    weights = {n: p.numpy() for n, p in layer.named_parameters()}
    directions = 2 if bidirectional else 1
    assert len(weights) == 4 * layers * directions
    hs, final = layer(x)
    want_hs, want_h, want_c = _recurrent_np(kind, x, weights, layers, directions)
    np.testing.assert_allclose(hs.numpy(), want_hs, rtol=1e-12, atol=1e-12)
    h_n, c_n = final if kind == "LSTM" else (final, None)
    np.testing.assert_allclose(h_n.numpy(), want_h, rtol=1e-12, atol=1e-12)
    if kind == "LSTM":
        np.testing.assert_allclose(c_n.numpy(), want_c, rtol=1e-12, atol=1e-12)
    (hs.sum() + (h_n * h_n).sum()).backward()
    if torch is not None:
        t = getattr(torch.nn, kind)(3, 4, layers, bidirectional=bidirectional).double()
        with torch.no_grad():
            for n, p in t.named_parameters():
                p[...] = torch.tensor(weights[n])
        ths, tfinal = t(torch.tensor(x))
        th_n = tfinal[0] if kind == "LSTM" else tfinal
        (ths.sum() + (th_n * th_n).sum()).backward()
        np.testing.assert_allclose(hs.numpy(), ths.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(h_n.numpy(), th_n.detach().numpy(), rtol=1e-10, atol=1e-12)
        for n, p in t.named_parameters():
            np.testing.assert_allclose(dict(layer.named_parameters())[n].grad, p.grad.numpy(),
                                       rtol=1e-9, atol=1e-12, err_msg=n)


def test_recurrent_initial_states_in_pytorchs_layout_and_dropout_between_layers():
    rng = np.random.default_rng(6)
    x, h0 = rng.normal(size=(5, 2, 3)), rng.normal(size=(4, 2, 4))
    gru = fg.nn.GRU(3, 4, num_layers=2, bidirectional=True, seed=1)
    weights = {n: p.numpy() for n, p in gru.named_parameters()}
    hs, h_n = gru(x, h0)
    want_hs, want_h, _ = _recurrent_np("GRU", x, weights, 2, 2, h0)
    np.testing.assert_allclose(hs.numpy(), want_hs, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h_n.numpy(), want_h, rtol=1e-12, atol=1e-12)
    one = fg.nn.RNN(3, 4, seed=1)
    assert one(x, h0[:1])[1].shape == (1, 2, 4)  # PyTorch's (1, B, H) given, (1, B, H) back
    assert one(x)[1].shape == (2, 4)
    with pytest.raises(fg.FastgradError, match=r"pass \(4, 2, 4\)"):
        gru(x, h0[:2])
    deep = fg.nn.LSTM(3, 4, num_layers=2, dropout=0.5, seed=2)
    a, _ = deep(x)
    b, _ = deep(x)
    assert not np.array_equal(a.numpy(), b.numpy())  # fresh masks between the layers
    deep.eval()
    np.testing.assert_array_equal(deep(x)[0].numpy(), deep(x)[0].numpy())
    with pytest.raises(fg.FastgradError, match="dropout"):
        fg.nn.LSTM(3, 4, num_layers=2, dropout=1.5)
