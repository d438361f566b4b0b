"""A per-process, thread-safe cache of open slide files, shared by the backends.

Region readers are pickled into Dask tasks and run in threads or worker
processes; each process opens a file once and reuses the handle.  Keys carry the
process id so a forked child never reuses its parent's handle, and a file that
changed on disk (inode, size or mtime) is reopened when the caller asks to
revalidate.  Cached handles are closed at interpreter exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["HandleCache"]

logger = logging.getLogger(__name__)

H = TypeVar("H")


def _signature(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class HandleCache(Generic[H]):
    """Open handles keyed by ``(pid, path, *extra)``.

    Parameters
    ----------
    opener : callable
        ``opener(path, *extra) -> handle``.
    closer : callable
        ``closer(handle)`` releases a handle.
    """

    def __init__(self, opener: Callable[..., H], closer: Callable[[H], None]) -> None:
        self._opener = opener
        self._closer = closer
        self._cache: dict[tuple[Hashable, ...], tuple[H, tuple[int, int, int]]] = {}
        self._lock = threading.Lock()
        self._atexit = False

    def get(self, path: str, *extra: Hashable, revalidate: bool = False) -> H:
        """Return this process's handle of ``(path, *extra)``, opening it once.

        With ``revalidate``, a handle whose file changed on disk is closed and
        reopened.
        """
        key = (os.getpid(), path, *extra)
        entry = self._cache.get(key)
        if entry is not None and not revalidate:
            return entry[0]
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None and revalidate and entry[1] != _signature(path):
                logger.debug("%s changed on disk; reopening it", path)
                self._closer(entry[0])
                entry = None
            if entry is None:
                if not self._atexit:  # registered on first open, not at import
                    atexit.register(self.clear)
                    self._atexit = True
                signature = _signature(path)
                entry = self._cache[key] = (self._opener(path, *extra), signature)
            return entry[0]

    def clear(self) -> None:
        """Close every handle this process opened and forget all entries."""
        with self._lock:
            for key, (handle, _) in self._cache.items():
                if key[0] == os.getpid():
                    self._closer(handle)
            self._cache.clear()
