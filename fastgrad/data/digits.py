"""Small real data sets that ship inside the package (nothing is downloaded)."""

from __future__ import annotations

import pathlib

import numpy as np

__all__ = ["load_digits"]

_DATA = pathlib.Path(__file__).resolve().parent


def load_digits(test_fraction=0.25, seed=0, dtype=np.float32):
    """UCI handwritten digits (1,797 8×8 images, 10 classes; CC BY 4.0, see data/README.md).

    Returns (X_train, y_train, X_test, y_test): pixels scaled to [0, 1], shape (n, 64); labels
    int64. The split is stratified by nothing but a seeded shuffle.

    >>> Xtr, ytr, Xte, yte = load_digits()
    >>> Xtr.shape, Xte.shape, int(ytr.max())
    ((1348, 64), (449, 64), 9)
    """
    with np.load(_DATA / "digits.npz", allow_pickle=False) as f:
        X = f["images"].astype(dtype) / 16.0
        y = f["labels"].astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    test, train = perm[:n_test], perm[n_test:]
    return X[train], y[train], X[test], y[test]
