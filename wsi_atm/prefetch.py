"""Read ahead: iterate a stream in a background thread so reading overlaps compute."""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable
from typing import TypeVar, cast

T = TypeVar("T")


def prefetch(items: Iterable[T], depth: int = 2) -> Generator[T, None, None]:
    """Iterate ``items`` in a background thread, ``depth`` ahead, so reading overlaps compute.

    Closing this generator (or leaving it by an exception in the consumer, when it is used as
    ``with closing(prefetch(...))``) stops the producer and closes ``items`` in the producer's
    own thread before returning: a crop stream's reader threads have joined by then, so the
    slide can be closed safely.
    """
    q: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(item)
        except BaseException as exc:  # re-raised in the consumer
            q.put(exc)
            return
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # a generator's finally (e.g. joining its reader pool) runs here
        q.put(done)

    thread = threading.Thread(target=produce, daemon=True, name="wsi-atm-prefetch")
    try:
        thread.start()  # inside the try: a Ctrl-C right after the start still joins the thread
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield cast(T, item)
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
