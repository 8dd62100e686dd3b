"""Property tests: broadcasting elementwise ops and reductions over generated shapes."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastgrad as fg

SETTINGS = settings(max_examples=60, deadline=None)
finite = st.floats(-3, 3, allow_nan=False, width=64)


@SETTINGS
@given(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=4, max_side=4), st.data())
def test_broadcast_binary_ops_match_numpy_and_sum_gradients_back(shapes, data):
    sa, sb = shapes.input_shapes
    a = data.draw(hnp.arrays(np.float64, sa, elements=finite))
    b = data.draw(hnp.arrays(np.float64, sb, elements=st.floats(0.5, 2, width=64)))
    for fn in (lambda x, y: x + y, lambda x, y: x * y, lambda x, y: x / y, lambda x, y: x - y):
        np.testing.assert_allclose(fn(fg.tensor(a), fg.tensor(b)).numpy(), fn(a, b), rtol=1e-12)
        ta, tb = fg.tensor(a, requires_grad=True), fg.tensor(b, requires_grad=True)
        fn(ta, tb).sum().backward()
        assert ta.grad.shape == a.shape and tb.grad.shape == b.shape
    # for a*b the summed-back gradient has a closed form
    ta, tb = fg.tensor(a, requires_grad=True), fg.tensor(b, requires_grad=True)
    (ta * tb).sum().backward()
    out = np.broadcast_shapes(sa, sb)
    exp_a = np.broadcast_to(b, out).copy()
    while exp_a.ndim > len(sa):
        exp_a = exp_a.sum(axis=0)
    exp_a = exp_a.sum(axis=tuple(d for d, s in enumerate(sa) if s == 1), keepdims=True)
    np.testing.assert_allclose(ta.grad, exp_a.reshape(sa), rtol=1e-12, atol=1e-12)


@SETTINGS
@given(hnp.array_shapes(min_dims=1, max_dims=4, max_side=5), st.data())
def test_reductions_match_numpy_on_any_axis(shape, data):
    a = data.draw(hnp.arrays(np.float64, shape, elements=finite))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    keep = data.draw(st.booleans())
    t = fg.tensor(a)
    np.testing.assert_allclose(t.sum(axis=axis, keepdims=keep).numpy(),
                               a.sum(axis=axis, keepdims=keep), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(t.amax(axis=axis, keepdims=keep).numpy(),
                               a.max(axis=axis, keepdims=keep))
    np.testing.assert_allclose(t.mean(axis=axis, keepdims=keep).numpy(),
                               a.mean(axis=axis, keepdims=keep), rtol=1e-12, atol=1e-12)
    x = fg.tensor(a, requires_grad=True)
    x.sum(axis=axis, keepdims=keep).sum().backward()
    np.testing.assert_array_equal(x.grad, np.ones_like(a))
