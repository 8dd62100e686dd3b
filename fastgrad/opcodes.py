"""Op codes: append-only numbers, frozen into saved tapes and into the compiled kernels.

code = 100 * family + index. The replay kernels dispatch on ``code // 100`` (the family) and then
on the code. Never renumber; add new ops at the end of their family.
"""

from enum import IntEnum

UNARY, BINARY, WHERE, REDUCE, MATMUL, SHAPE, LOSS, CONTROL = 0, 1, 2, 3, 4, 5, 6, 7


class Op(IntEnum):
    """The op codes, one per row of the op table (fastgrad/ops.py): code = 100 * family + index.

    >>> import fastgrad as fg
    >>> fg.Op.TANH, int(fg.Op.MATMUL) // 100  # MATMUL is in family 4, the matrix products
    (<Op.TANH: 6>, 4)
    >>> fg.Op(503).name
    'CONCAT'
    """

    # unary elementwise: y = f(x) (fparams hold the scalar constants)
    NEG = 1
    ABS = 2
    EXP = 3
    LOG = 4
    SQRT = 5
    TANH = 6
    SIGMOID = 7
    RELU = 8
    LEAKY_RELU = 9
    SOFTPLUS = 10
    CLIP = 11
    ADD_SCALAR = 12
    MUL_SCALAR = 13
    DIV_SCALAR = 14
    RDIV_SCALAR = 15
    POW_SCALAR = 16
    RPOW_SCALAR = 17
    # binary elementwise with NumPy broadcasting
    ADD = 100
    SUB = 101
    MUL = 102
    DIV = 103
    POW = 104
    MAXIMUM = 105
    MINIMUM = 106
    BCE_LOGITS = 107
    GT = 108
    GE = 109
    LT = 110
    LE = 111
    EQ = 112
    NE = 113
    # selection
    WHERE = 200
    # reductions / normalisations along one axis, shape seen as (outer, n, inner)
    SUM = 300
    MAX = 301
    SOFTMAX = 302
    LOG_SOFTMAX = 303
    # (batched) matrix product
    MATMUL = 400
    LINEAR = 401  # x @ W.T + b in one row: the bias add fused into the product (bench: linear)
    # act(x @ W.T + c), c a bias (n,) or an addend of the output's shape, act tanh / sigmoid /
    # relu: an MLP layer or an Elman RNN cell in one row (bench: rnn, 2 fewer rows per step)
    LINEAR_ACT = 402
    # data movement
    RESHAPE = 500
    STRIDED = 501
    GATHER = 502
    CONCAT = 503
    # fused losses
    CROSS_ENTROPY = 600
    # control: a loop over a recorded body (fg.scan). SCAN_BEGIN marks the first body row and
    # points at its SCAN row; the replay loops skip the body and run it T times from the SCAN row.
    SCAN_BEGIN = 700
    SCAN = 701
