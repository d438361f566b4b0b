"""An exclusive lock file beside an output, so two jobs never write it at once.

The lock is ``.<output name>.lock`` in the output's folder, created with
``O_CREAT | O_EXCL`` (atomic on local file systems and on NFSv3+), holding
JSON: pid, host, the process start time and a random token.  A lock whose
holder is known dead (same host, and no process with that pid and start time)
is stale and broken; a lock held by another host is never broken
automatically: the error says which host and which file to delete if that
job is known to be gone.

Pure standard library.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Self

from wsi_deepr.errors import OutputError, OutputLockedError

__all__ = ["OutputLock", "lock_holder", "lock_path"]

log = logging.getLogger(__name__)

#: a lock file still empty after this many seconds was left by a crash between create and write
_EMPTY_GRACE_S = 30.0


def lock_path(output: str | os.PathLike) -> Path:
    """``.<output name>.lock`` beside ``output``."""
    output = Path(output)
    return output.with_name(f".{output.name}.lock")


def _start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), else ``None``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])  # field 22 of stat(5)


def _alive(pid: int, ticks: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    if ticks is not None and sys.platform.startswith("linux"):
        now = _start_ticks(pid)
        return now is None or now == ticks  # pid reused by a newer process: the holder is dead
    return True


def lock_holder(path: str | os.PathLike) -> dict | None:
    """The JSON content of lock file ``path`` (``{}`` if unreadable), or ``None`` if absent."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    if not holder:
        return "a job that is starting"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {since}"


class OutputLock:
    """Exclusive lock of one output file; a context manager.

    Parameters
    ----------
    output : path
        The output file the lock protects.

    Raises
    ------
    OutputLockedError
        On :meth:`acquire`, when a live job holds the lock.
    """

    def __init__(self, output: str | os.PathLike) -> None:
        self.output = Path(output)
        self.path = lock_path(self.output)
        self._token: str | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._token is not None

    def _is_stale(self, holder: dict, mtime: float) -> bool:
        if not holder:
            return time.time() - mtime > _EMPTY_GRACE_S
        if holder.get("host") != socket.gethostname():
            return False
        try:
            pid = int(holder["pid"])
        except (KeyError, TypeError, ValueError):
            return time.time() - mtime > _EMPTY_GRACE_S
        return not _alive(pid, holder.get("start_ticks"))

    def acquire(self) -> Self:
        """Take the lock, breaking a stale one; raise if a live job holds it."""
        if self.held:
            return self
        token = secrets.token_hex(8)
        content = json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
            "start_ticks": _start_ticks(os.getpid()), "token": token, "output": str(self.output),
        })
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    st = os.stat(self.path)
                except FileNotFoundError:
                    continue  # released meanwhile
                holder = lock_holder(self.path) or {}
                if not self._is_stale(holder, st.st_mtime):
                    raise OutputLockedError(
                        f"output {self.output} is locked by {_describe(holder)} (lock file {self.path}); "
                        f"another job is writing it. If that job is gone, delete {self.path}"
                    ) from None
                try:  # break it only if it is still the file we judged stale
                    if os.stat(self.path).st_ino == st.st_ino:
                        os.unlink(self.path)
                        log.warning("removed stale lock %s of %s", self.path, _describe(holder))
                except FileNotFoundError:
                    pass
                continue
            except OSError as exc:
                raise OutputError(f"cannot create lock file {self.path}: {exc}") from exc
            with os.fdopen(fd, "w") as fh:
                fh.write(content)
            self._token = token
            return self
        raise OutputLockedError(f"could not take lock {self.path} for {self.output}; retry")

    def release(self) -> None:
        """Remove the lock file if this object still holds it."""
        if self._token is None:
            return
        holder = lock_holder(self.path)
        if holder and holder.get("token") == self._token:
            self.path.unlink(missing_ok=True)
        self._token = None

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
