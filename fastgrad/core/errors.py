"""fastgrad's one exception type, raised at record time with the op, the shapes and a fix."""

import numpy as np

__all__ = ["FastgradError", "fail", "flag"]


class FastgradError(ValueError, TypeError):
    """Bad input caught by fastgrad before it can reach a kernel.

    Subclasses both ValueError and TypeError, so code written for NumPy's errors still catches it.
    The message names the op, the operand shapes/dtypes and how to fix the call.
    """


def fail(op: str, problem: str, fix: str = "") -> "FastgradError":
    msg = f"{op}: {problem}"
    if fix:
        msg += f". Fix: {fix}"
    return FastgradError(msg)


def flag(name, what, value) -> bool:
    """``value`` as a bool: True/False (NumPy's too) or the ints 0 and 1; anything else (a
    string, None, an array whose truth is ambiguous) is refused rather than read as truthy."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer))
                                               and value in (0, 1)):
        return bool(value)
    raise fail(name, f"{what} must be True or False, got {value!r}", f"pass {what}=True or False")
