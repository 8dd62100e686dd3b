"""``atomic_write``: a file written whole or not at all. It goes to a temporary file beside the
target, flushed, fsynced and renamed over it; the temporary name carries the host and pid, and
a later write removes those whose process is gone. Every file fastgrad writes goes through it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import tempfile

__all__ = ["atomic_write"]


def atomic_write(path: str, write) -> None:
    """Write a file through ``write(f)`` (``f`` a binary file) into a temporary file beside
    ``path``, fsync it and rename it over ``path``: a crash leaves the old file or the new one,
    never half of one. The temporary name carries this host and process id, so the next write
    into the folder removes one that a killed process left (``_remove_stale_temps``).

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.bin")
    >>> atomic_write(path, lambda f: f.write(b"ok")); open(path, "rb").read()
    b'ok'
    """
    directory = os.path.dirname(os.path.abspath(path))
    mode = os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644
    _remove_stale_temps(directory)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.{_TEMP_TAG}-{_HOST}-"
                               f"{os.getpid()}-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX)
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


# .<name>.fgsave-<host>-<pid>-<random>.tmp; the host hash keeps a shared (network) directory's
# temporary files of live processes on other machines, whose pids mean nothing here
_TEMP_TAG = "fgsave"
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TEMP_NAME = re.compile(r"^\..*\." + _TEMP_TAG + r"-([0-9a-f]{8})-([0-9]{1,12})-[^./]*\.tmp$")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread of this process is saving
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a live process of another user
    except (OSError, OverflowError, ValueError):
        return False  # no such pid can exist
    return True


def _remove_stale_temps(directory: str) -> None:
    """Delete the temporary files that fg.save processes of this host left in ``directory``
    when they were killed mid-write (their pid is gone). Best effort: errors are ignored."""
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            m = _TEMP_NAME.match(entry.name)
            if m is None or m[1] != _HOST or _process_alive(int(m[2])):
                continue
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
