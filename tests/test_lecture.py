"""The lecture's worked examples and "unintuitive effects", as specifications."""

import numpy as np
import pytest

import fastgrad as fg


def test_add_then_multiply_gives_z_z_x_plus_y():
    x, y, z = (fg.tensor(v, requires_grad=True) for v in (2.0, -3.0, 4.0))
    f = (x + y) * z
    f.backward()
    assert f.item() == -4.0
    assert (float(x.grad), float(y.grad), float(z.grad)) == (4.0, 4.0, -1.0)


def test_closed_form_on_arrays_with_broadcasting():
    rng = np.random.default_rng(0)
    xv, yv, zv = rng.normal(size=(3, 4)), rng.normal(size=(4,)), rng.normal(size=(3, 1))
    x, y, z = (fg.tensor(v, requires_grad=True) for v in (xv, yv, zv))
    ((x + y) * z).sum().backward()
    np.testing.assert_allclose(x.grad, np.broadcast_to(zv, (3, 4)))
    np.testing.assert_allclose(y.grad, np.broadcast_to(zv, (3, 4)).sum(axis=0))
    np.testing.assert_allclose(z.grad, (xv + yv).sum(axis=1, keepdims=True))


def test_multiplication_swaps_the_operands_magnitudes():
    a = fg.tensor(1000.0, requires_grad=True)
    b = fg.tensor(0.001, requires_grad=True)
    (a * b).backward()
    assert float(a.grad) == 0.001 and float(b.grad) == 1000.0


def test_scaling_the_data_by_1000_scales_the_weight_gradient_by_1000():
    rng = np.random.default_rng(1)
    xv, wv = rng.normal(size=5), rng.normal(size=5)
    grads = []
    for scale in (1.0, 1000.0):
        w = fg.tensor(wv, requires_grad=True)
        (w @ fg.tensor(xv * scale)).backward()
        grads.append(w.grad)
    np.testing.assert_allclose(grads[1], 1000.0 * grads[0], rtol=1e-12)


def test_sigmoid_local_gradient_peaks_at_a_quarter_at_zero():
    x = fg.tensor(np.linspace(-8, 8, 161), requires_grad=True)
    x.sigmoid().sum().backward()
    assert np.argmax(x.grad) == 80 and x.grad[80] == pytest.approx(0.25, abs=1e-15)
    assert x.grad.max() <= 0.25
    assert x.grad[0] < 4e-4 and x.grad[-1] < 4e-4  # saturated: gradient all but gone


def test_relu_gradient_is_exactly_zero_or_one():
    x = fg.tensor([-2.0, -1e-300, 0.0, 1e-300, 3.0], requires_grad=True)
    x.relu().sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]


def test_gradient_through_a_repeated_product_explodes_or_vanishes():
    for b, grows in ((0.9, False), (1.1, True)):
        h0 = fg.tensor(1.0, requires_grad=True)
        h = h0
        for _ in range(100):
            h = h * b
        h.backward()
        assert float(h0.grad) == pytest.approx(b**100, rel=1e-12)
        assert (float(h0.grad) > 1) == grows
