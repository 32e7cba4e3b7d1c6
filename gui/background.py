"""Run blocking work (database reads and writes) off the UI thread; results come back in a slot."""

from __future__ import annotations

import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from PySide6.QtCore import QObject, Signal


class Background(QObject):
    """One worker thread, so database calls run in order. `run(fn, done, failed)`: `fn()` runs on the
    worker; `done(result)` or `failed(message)` run on the UI thread."""

    _finished = Signal(object, object, object)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="panel-db")
        self._finished.connect(self._deliver)
        self.pending = 0
        self.closed = False

    def run(self, fn: Callable, done: Callable | None = None, failed: Callable | None = None) -> Future | None:
        if self.closed:  # the panel is closing: nothing new
            return None
        self.pending += 1
        fut = self._pool.submit(fn)
        fut.add_done_callback(lambda f: self._finished.emit(done, failed, f))
        return fut

    def _deliver(self, done, failed, fut: Future) -> None:
        self.pending -= 1
        if fut.cancelled():  # shutting down
            return
        try:
            result = fut.result()
        except Exception as e:  # noqa: BLE001 - shown to the person, never lost
            if failed is not None:
                failed(str(e) or type(e).__name__)
            else:
                traceback.print_exception(e)
            return
        if done is not None:
            done(result)

    def shutdown(self) -> None:
        self.closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
