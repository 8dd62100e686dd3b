"""Family 7, control: an ``fg.scan`` loop over a recorded body, as two rows.

SCAN_BEGIN marks the first body row and points at its SCAN row; the replay loops skip the body
and run it T times from the SCAN row. The interpreters (transforms/reference.py, jvp.py) and the
kernels (kernels/scan.py) run these rows themselves, so they have no NumPy forward, VJP or JVP
here and no samples: tests/test_scan.py checks them. transforms/scan.py records them (through
these layouts) and the tape validator (fastgrad/io/validate.py) checks every field.
"""

from __future__ import annotations

from .base import Layout, OpDef, Tail, fail

__all__ = ["BEGIN_LAYOUT", "FAMILY", "SCAN", "SCAN_BEGIN", "SCAN_LAYOUT", "control_rule"]

FAMILY = 7

BEGIN_LAYOUT = Layout(ints=("scan_row",), shown=("scan_row",))

# The SCAN row: a 16-field header (kernels/scan.py HEADER), then per carry its four nodes, the
# stacked output (n_stack of 0 or 1), and the body's own nodes (saved and restored per step).
# T steps; begin_row its SCAN_BEGIN row; the body rows [body_start, body_end); has_x: a
# sequence xs whose step t is copied into x_slot (x_step values); store / ckpt / schedule: the
# nodes holding saved states, checkpointed carries and a binomial schedule (-1: none) for the
# checkpoint interval k (0 all steps, > 0 segments, < 0 binomial slots); reg_size: the body
# state's size per step.
SCAN_LAYOUT = Layout(
    ints=("T", "begin_row", "body_start", "body_end", "n_carry", "n_stack", "has_x", "xs",
          "x_slot", "x_step", "store", "k", "ckpt", "schedule", "reg_size", "n_own"),
    tails=(Tail("carries", "n_carry", 4, ("init", "carry_in", "carry_out", "final")),
           Tail("stacked", "n_stack", 2, ("body_node", "output")), Tail("own", "n_own")),
    shown=("T", "n_carry", "n_stack", "k"))


def control_rule(name, shapes, **attrs):
    """Control rows are recorded by fg.scan only."""
    raise fail(name, "is recorded by fg.scan, not by apply()", "call fg.scan")


def _by_scan(shapes, out_shape, a):
    return None  # the validator checks control rows with their whole loop (io/validate.py)


SCAN_BEGIN = OpDef(
    "scan_begin", 700, -1, control_rule, BEGIN_LAYOUT, forward=None, vjp=None, jvp=None,
    recover=_by_scan, samples=[], front_end="fg.scan(lambda h, xt: h * xt, v, x)",
    kernel="scan", differentiable=False, checked_by="tests/test_scan.py")
SCAN = OpDef(
    "scan", 701, -1, control_rule, SCAN_LAYOUT, forward=None, vjp=None, jvp=None,
    recover=_by_scan, samples=[], front_end="fg.scan(lambda h, xt: h * xt, v, x)",
    kernel="scan", checked_by="tests/test_scan.py")
