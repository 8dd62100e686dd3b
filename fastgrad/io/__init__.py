"""fg.save and fg.load: the file format, atomic writes, and the validator every loaded tape
passes before a kernel sees it."""

from .files import atomic_write, load, save, validate_tape

__all__ = ["atomic_write", "load", "save", "validate_tape"]
