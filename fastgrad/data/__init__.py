"""The data shipped with fastgrad: the digits (``load_digits``), read from this folder."""

__all__ = ["digits"]  # its modules
