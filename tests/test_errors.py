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
    with raises(r"cross_entropy: input \(3, 4\) and target \(2,\)"):
        fg.cross_entropy(x, np.array([0, 1]))
    with raises("class indices must be integers"):
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


# Found by fuzzing (tests/test_fuzz.py): each used to escape as a raw TypeError/ValueError from
# inside the recorder, to be accepted silently, or (huge shapes) to reach the OOM killer.
def test_unknown_attributes_are_refused_naming_the_op_and_its_attributes():
    from fastgrad.tensor import apply

    x = fg.tensor(np.ones((2, 3)))
    with raises(r"softmax: unknown attribute\(s\) \['dim'\]. Fix: softmax takes axis"):
        apply(fg.Op.SOFTMAX, x, dim=1)
    with raises(r"add: unknown attribute\(s\) \['axis'\]. Fix: add takes no attributes"):
        apply(fg.Op.ADD, x, x, axis=0)


def test_unsupported_operand_dtypes_are_refused_not_cast():
    x = fg.tensor(np.ones(2))
    for bad in (np.array([1 + 2j, 3j]), np.array(["a", "b"]), np.array([None, 1.0]),
                np.ones(2, np.float16)):
        with raises(rf"mul: unsupported dtype {bad.dtype} \(operand 1, shape \(2,\)\)"):
            x * bad


def test_scalar_constants_must_be_real_numbers():
    x = fg.tensor(np.ones(2))
    with raises(r"leaky_relu: the constant must be a real number, got None"):
        x.leaky_relu(None)
    with raises(r"clip: min must be a real number|clip: the constant must be a real number"):
        x.clip("low", 1.0)


def test_bad_slices_and_axis_lists_are_refused_as_in_numpy():
    x = fg.tensor(np.ones((2, 3)))
    with raises(r"getitem: bad slice slice\(None, None, 0\) for axis 1 of shape \(2, 3\)"):
        x[:, ::0]
    with raises(r"transpose: axes \(0, 5\) are not a permutation|transpose: axis 5 is out"):
        x.transpose(0, 5)
    with raises(r"transpose: axes \(\) are not a permutation of 2 axes"):
        x.transpose(())
    with raises(r"sum: axis 4 is out of range for a tensor with 2 dimension"):
        x.sum(axis=(0, 4))
    with raises(r"max: axis \(1, -1\) names an axis twice"):
        x.max(axis=(1, -1))
    with raises(r"reshape: the target shape must be ints, got \(3, 2.0\)"):
        x.reshape(3, 2.0)


def test_views_are_validated_entry_by_entry():
    from fastgrad.tensor import apply

    x = fg.tensor(np.ones(6))
    with raises(r"strided: the view shape \(2, -1\) has entries below 0"):
        apply(fg.Op.STRIDED, x, out_shape=(2, -1), base=0, strides=(1, 1))
    with raises(r"strided: view shape \(2,\) and strides \(1, 1\) differ in length"):
        apply(fg.Op.STRIDED, x, out_shape=(2,), base=0, strides=(1, 1))
    with raises(r"strided: view of \(6,\) reads outside the tensor"):
        apply(fg.Op.STRIDED, x, out_shape=(3,), base=4, strides=(1,))
    with raises(r"strided: the view offset must be ints, got \(0.5,\)"):
        apply(fg.Op.STRIDED, x, out_shape=(3,), base=0.5, strides=(1,))


def test_a_zero_dimensional_tensor_has_one_axis_for_axis_arguments():
    s = fg.tensor(2.0)
    assert s.softmax(axis=-1).item() == 1.0 and s.sum(axis=0).item() == 2.0
    with raises(r"softmax: axis 1 is out of range for a tensor with 0 dimension\(s\). Fix: use an "
                r"axis in \[-1, 0\]"):
        s.softmax(axis=1)
