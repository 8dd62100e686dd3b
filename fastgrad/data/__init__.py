"""The data shipped with fastgrad (nothing is downloaded): the UCI handwritten digits.

>>> from fastgrad.data import load_digits
>>> Xtr, ytr, Xte, yte = load_digits()
>>> Xtr.shape[1], int(ytr.max()) + 1
(64, 10)
"""

from .digits import load_digits

__all__ = ["load_digits"]
