"""Transforms of recorded code: the fusion pass, the NumPy reference interpreter, loops
(fg.scan), forward mode (fg.jvp) and finite differences (fg.gradcheck)."""

__all__ = ["fusion", "gradcheck", "jvp", "reference", "scan"]  # its modules
