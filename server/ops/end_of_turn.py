"""Work noted during one turn of the event loop and done together at its end.

Token signatures (tessera.server.oauth.tokens), request log lines (tessera.server.ops.logs) and request metrics
(tessera.server.ops.metrics) are done this way: made one after another, each stays warm in the CPU's caches,
where made one per request in between the rest of the request they evicted each other's code and
data (docs/performance.md).
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

    ``mark`` asks for ``process`` at the end of the turn without an item, for a caller that keeps
    other state to settle there (``process`` then gets what was added, perhaps nothing).

    ``lock``, when given, is held while items are noted and taken: for a caller whose ``flush`` may
    come from another thread (a logging handler). Without it, use from the loop's thread only.
    """

    def __init__(self, process: Callable[[list[T]], Any], lock: contextlib.AbstractContextManager[Any] | None = None) -> None:
        self._process = process
        self._lock = lock
        self._items: list[T] = []
        # A flush is scheduled for the end of this turn: an item was added or ``mark`` called since
        # the last flush, so ``process`` is owed even with no item.
        self._scheduled = False

    def add(self, item: T) -> None:
        # The unlocked path is the one every request takes: no context manager, one append.
        if self._lock is None:
            self._items.append(item)
            if not self._scheduled:
                self._schedule()
            return
        with self._lock:
            self._items.append(item)
            if self._scheduled:
                return
        self._schedule()

    def mark(self) -> None:
        if not self._scheduled:
            self._schedule()

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._flush(due=True)
            return
        self._scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush(due=False)

    def _flush(self, due: bool) -> None:
        with self._lock if self._lock is not None else contextlib.nullcontext():
            items, self._items = self._items, []
            due = due or self._scheduled or bool(items)
            self._scheduled = False
            if due:
                self._process(items)
