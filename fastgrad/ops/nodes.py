"""The kinds of tape nodes: where a node's values live (fastgrad/runtime/tape.py, docs/tape.md). The
tape, the recorder, the compiler, the validator and the kernels name them from here.

>>> from fastgrad.ops.nodes import FLOAT_NODE, INDEX_NODE, PARAM_NODE, EXTERNAL_NODE
>>> FLOAT_NODE, INDEX_NODE, PARAM_NODE, EXTERNAL_NODE
(0, 1, 2, 3)
"""

__all__ = ["EXTERNAL_NODE", "FLOAT_NODE", "FUSED_LABEL", "INDEX_NODE", "NODE_KINDS", "PARAM_NODE"]

FLOAT_NODE = 0  # a float node in the tape's value arena
INDEX_NODE = 1  # an integer node (indices, labels) in the integer arena
PARAM_NODE = 2  # a compiled program's parameter, in its flat parameter buffer
EXTERNAL_NODE = 3  # a compiled program's input, read in place from the caller's array
NODE_KINDS = (FLOAT_NODE, INDEX_NODE, PARAM_NODE, EXTERNAL_NODE)

# the label of a node whose row the fusion pass dropped: written and read by no row
FUSED_LABEL = "fused"
