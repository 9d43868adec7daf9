"""Staged prefetch: named worker threads connected by bounded queues.

``Pipeline(source, stages, depth)`` runs ``stages`` (``(name, fn)`` pairs) one thread
each: the first consumes items from ``source``, each later one the previous stage's
outputs; the consumer iterates over the last stage's outputs, in order. Queues hold at
most ``depth`` items, so at most ``depth`` finished items wait per stage — the memory a
caller charges to its budget.

Failure and shutdown rules:

* An exception in a stage is passed down the queues and re-raised in the consumer with
  its original traceback; the pipeline then stops.
* If the consumer waits longer than ``timeout`` seconds, it raises
  :class:`~oocstore.errors.StageTimeoutError` naming the stage that holds the work and
  for how long it has been busy.
* :meth:`close` (idempotent; also on ``with`` exit and when the consumer stops early)
  sets the stop event, drains the queues and joins every thread: no thread outlives it.

States of a stage (``Pipeline.stage_state``): ``idle`` -> ``busy`` -> ``idle`` ... ->
``done`` (source exhausted or stopped) or ``failed``.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from .errors import StageTimeoutError

_END = object()


@dataclass
class _Failure:
    stage: str
    error: BaseException


class Pipeline:
    def __init__(self, source: Iterable[Any], stages: list[tuple[str, Callable[[Any], Any]]], *,
                 depth: int = 2, timeout: float = 300.0):
        if depth < 1:
            raise ValueError(f"pipeline depth {depth} must be at least 1")
        self.timeout = timeout
        self._stop = threading.Event()
        self._queues = [queue.Queue(maxsize=depth) for _ in stages]
        self.stage_state = {name: "idle" for name, _ in stages}
        self.busy_since: dict[str, float] = {}
        self.stage_seconds = {name: 0.0 for name, _ in stages}
        self.wait_seconds = 0.0
        self._threads = []
        inputs: list[Any] = [iter(source)] + self._queues[:-1]
        for i, (name, fn) in enumerate(stages):
            t = threading.Thread(target=self._run, name=name, daemon=True,
                                 args=(name, fn, inputs[i], self._queues[i], i == 0))
            self._threads.append(t)
        self._closed = False
        for t in self._threads:
            t.start()

    # -- workers -------------------------------------------------------------------
    def _put(self, q: queue.Queue, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q: queue.Queue) -> Any:
        while not self._stop.is_set():
            try:
                return q.get(timeout=0.05)
            except queue.Empty:
                continue
        return _END

    def _run(self, name: str, fn, inp, out: queue.Queue, first: bool) -> None:
        try:
            while not self._stop.is_set():
                if first:
                    try:
                        item = next(inp)
                    except StopIteration:
                        break
                else:
                    item = self._get(inp)
                    if item is _END:
                        break
                    if isinstance(item, _Failure):
                        self._put(out, item)
                        self.stage_state[name] = "failed"
                        return
                self.stage_state[name] = "busy"
                self.busy_since[name] = time.monotonic()
                result = fn(item)
                self.stage_seconds[name] += time.monotonic() - self.busy_since.pop(name)
                self.stage_state[name] = "idle"
                if not self._put(out, result):
                    break
        except BaseException as err:  # noqa: BLE001 — re-raised in the consumer
            self.busy_since.pop(name, None)
            self.stage_state[name] = "failed"
            self._put(out, _Failure(name, err))
            return
        self.stage_state[name] = "done"
        self._put(out, _END)

    # -- consumer ------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        last = self._queues[-1]
        try:
            while True:
                t0 = time.monotonic()
                while True:
                    try:
                        item = last.get(timeout=min(1.0, self.timeout))
                        break
                    except queue.Empty:
                        if time.monotonic() - t0 >= self.timeout:
                            raise self._stalled(time.monotonic() - t0) from None
                self.wait_seconds += time.monotonic() - t0
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            self.close()

    def _stalled(self, waited: float) -> StageTimeoutError:
        now = time.monotonic()
        busy = sorted(self.busy_since.items(), key=lambda kv: kv[1])
        if busy:
            name, since = busy[0]
            where = f"stage {name!r} has been busy for {now - since:.1f} s"
        else:
            where = "stages: " + ", ".join(f"{k} {v}" for k, v in self.stage_state.items())
        return StageTimeoutError(f"no batch for {waited:.1f} s ({where}): the disk or a worker "
                                 "is stalled; check the store's disk, or raise the loader's "
                                 "timeout")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        for q in self._queues:
            try:
                while True:
                    q.get_nowait()
            except queue.Empty:
                pass
        for t in self._threads:
            t.join()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
