"""fastgrad's one exception type, raised at record time with the op, the shapes and a fix."""


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
