"""Bad input raises FastgradError at record time, naming the op, the shapes and a fix."""

import numpy as np
import pytest

import fastgrad as fg
from fastgrad import FastgradError


def raises(match):
    return pytest.raises(FastgradError, match=match)


def test_shape_mismatch_names_op_and_shapes():
    with raises(r"add: shapes \(3, 4\) and \(5,\) do not broadcast.*Fix"):
        fg.tensor(np.ones((3, 4))) + fg.tensor(np.ones(5))
    with raises(r"matmul: shapes \(2, 3\) @ \(4, 5\).*inner sizes 3 and 4"):
        fg.tensor(np.ones((2, 3))) @ fg.tensor(np.ones((4, 5)))


def test_bad_axis():
    with raises(r"sum: axis 2 is out of range .* 2 dimension"):
        fg.tensor(np.ones((2, 2))).sum(axis=2)
    with raises("softmax: axis"):
        fg.tensor(np.ones(3)).softmax(axis=1)


def test_mixed_dtypes_are_refused_with_a_fix():
    a = fg.tensor(np.ones(2, np.float32))
    b = fg.tensor(np.ones(2, np.float64))
    with raises(r"mul: operands have dtypes float32 and float64.*astype"):
        a * b


def test_integer_tensors_cannot_require_grad():
    with raises("cannot require grad"):
        fg.tensor([1, 2], requires_grad=True)


def test_backward_on_non_scalar_needs_a_seed():
    x = fg.tensor(np.ones(3), requires_grad=True)
    with raises(r"backward: called on a tensor of shape \(3,\) without a seed"):
        (x * 2).backward()
    with raises("seed gradient of shape"):
        (x * 2).backward(np.ones(4))


def test_out_of_range_indices_and_labels_never_reach_a_kernel():
    x = fg.tensor(np.ones((3, 4)), requires_grad=True)
    with raises(r"gather: index 3 is out of range \[-3, 3\)"):
        x[np.array([0, 3])]
    with raises(r"cross_entropy: index 4 is out of range \[0, 4\)"):
        fg.cross_entropy(x, np.array([0, 1, 4]))
    with raises("getitem: index 5 is out of bounds for axis 1"):
        x[:, 5]
    with raises("cross_entropy: expects logits"):
        fg.cross_entropy(x, np.array([0, 1]))
    with raises("operand 1 must hold integers"):
        fg.cross_entropy(x, np.array([0.0, 1.0, 2.0]))


def test_bad_reshape_and_item():
    with raises(r"reshape: cannot reshape \(3, 4\) \(size 12\) into \(5, -1\)"):
        fg.tensor(np.ones((3, 4))).reshape(5, -1)
    with raises("item: tensor of shape"):
        fg.tensor(np.ones(2)).item()


def test_fastgrad_error_is_a_value_error_and_a_type_error():
    assert issubclass(FastgradError, ValueError) and issubclass(FastgradError, TypeError)


def test_anomaly_mode_names_the_op_that_made_a_nan():
    x = fg.tensor([1.0, -1.0], requires_grad=True)
    with fg.detect_anomaly():
        with pytest.raises(fg.AnomalyError, match=r"forward: row \d+ \(sqrt\) produced nan"):
            fg.sqrt(x * 2).sum().item()
    y = fg.sqrt(x).sum()  # off by default: no error, NaN result
    assert np.isnan(y.item())


def test_softmax_over_an_empty_axis_gives_an_empty_result():
    assert fg.tensor(np.ones((2, 0))).softmax(axis=-1).shape == (2, 0)
    assert fg.tensor(np.ones((2, 0))).log_softmax(axis=-1).numpy().size == 0
