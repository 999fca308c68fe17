"""Work noted during one turn of the event loop and done together at its end.

Token signatures (server.tokens), request log lines (server.logs) and request metrics
(server.metrics) are done this way: made one after another, each stays warm in the CPU's caches,
where made one per request in between the rest of the request they evicted each other's code and
data (docs/performance.md, session 3).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class EndOfTurn(Generic[T]):
    """Items noted with ``add`` during one turn of the event loop, handed together to ``process``
    at its end (one ``call_soon``, scheduled by the turn's first item). With no running loop,
    ``process`` runs at once. ``flush`` hands over what is noted so far, now.

    ``lock``, when given, is held while items are noted and taken: for a caller whose ``flush`` may
    come from another thread (a logging handler). Without it, use from the loop's thread only.
    """

    def __init__(self, process: Callable[[list[T]], Any], lock: contextlib.AbstractContextManager[Any] | None = None) -> None:
        self._process = process
        self._lock: contextlib.AbstractContextManager[Any] = lock if lock is not None else contextlib.nullcontext()
        self._items: list[T] = []

    def add(self, item: T) -> None:
        with self._lock:
            self._items.append(item)
            if len(self._items) > 1:
                return  # the turn's flush is already scheduled
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                loop.call_soon(self.flush)
                return
        self.flush()

    def flush(self) -> None:
        with self._lock:
            items, self._items = self._items, []
            if items:
                self._process(items)
