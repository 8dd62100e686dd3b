"""fg.save and fg.load: the file format (files.py), a tape as arrays (tapes.py), the validator
every loaded tape passes before a kernel sees it (validate.py), and the one atomic-write helper
(atomic.py)."""

from .atomic import atomic_write
from .files import FORMAT, HEADER, VERSION, load, save
from .validate import validate_tape

__all__ = ["FORMAT", "HEADER", "VERSION", "atomic_write", "load", "save", "validate_tape"]
