"""The engine thread of `herd serve`: it owns the scheduler and steps it; HTTP handlers talk to it.

- `submit()` (from the event loop) queues a request with the scheduler and returns an `asyncio.Queue`
  that receives the request's `TokenEvent`s, handed over with `call_soon_threadsafe`; a `Closed` item
  ends the stream when the server stops or a step fails.
- `abort()` ends a request (client gone); the scheduler carries it out at its next step.
- `call(fn)` runs `fn(model)` in the engine thread between steps (prompt scoring for `echo`), so the
  model is only ever used by one thread.
- The thread sleeps when there is nothing to do and wakes on the next submission.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

from herd.infer.scheduler import Scheduler, TokenEvent

log = logging.getLogger("herd")


@dataclass
class Closed:
    """The last item of a request's queue when it ends without its finish events."""

    reason: str


class Runner:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._lock = threading.Lock()
        self._queues: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._calls: list[tuple[Callable[[Any], Any], Future]] = []
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="herd-engine", daemon=True)
        self._thread.start()

    def submit(self, prompt: list[int], params: Any, *, images: list[torch.Tensor] | None = None,
               stop_fn: Callable[[int, int], bool] | None = None, n: int = 1,
               constraint: Callable[[], Any] | None = None) -> tuple[int, asyncio.Queue]:
        """Queue a request; raises the scheduler's ValueError / QueueFull. Call from the event loop."""
        if self._stopping:
            raise RuntimeError("the server is shutting down")
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:  # registered before the engine thread can produce its first event
            request_id = self.scheduler.submit(prompt, params, images=images, stop_fn=stop_fn, n=n,
                                               constraint=constraint)
            self._queues[request_id] = (asyncio.get_running_loop(), queue)
        self._wake.set()
        return request_id, queue

    def abort(self, request_id: int) -> None:
        with self._lock:
            self._queues.pop(request_id, None)
        self.scheduler.abort(request_id)
        self._wake.set()

    def release(self, request_id: int) -> None:
        """Forget a request that ended normally."""
        with self._lock:
            self._queues.pop(request_id, None)

    def call(self, fn: Callable[[Any], Any]) -> Future:
        future: Future = Future()
        with self._lock:
            self._calls.append((fn, future))
        self._wake.set()
        return future

    def stop(self) -> None:
        """Stop stepping; every open stream gets `Closed`."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=30)
        self._close_all("the server is shutting down")

    def _close_all(self, reason: str) -> None:
        with self._lock:
            queues, self._queues = self._queues, {}
        for request_id, (loop, queue) in queues.items():
            self.scheduler.abort(request_id)
            loop.call_soon_threadsafe(queue.put_nowait, Closed(reason))

    def _loop(self) -> None:
        while not self._stopping:
            with self._lock:
                calls, self._calls = self._calls, []
            for fn, future in calls:
                if future.set_running_or_notify_cancel():
                    try:
                        with torch.no_grad():
                            future.set_result(fn(self.scheduler.model))
                    except Exception as err:  # handed to the caller
                        future.set_exception(err)
            if not self.scheduler.has_work():
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            try:
                self.scheduler.step(self._dispatch)
            except Exception:
                log.exception("herd serve: a step failed; ending the running requests")
                self._close_all("internal error in the engine step")

    def _dispatch(self, events: list[TokenEvent]) -> None:
        """Hand events to their requests' queues, on each queue's event loop."""
        with self._lock:
            for event in events:
                target = self._queues.get(event.request)
                if target is not None:
                    target[0].call_soon_threadsafe(target[1].put_nowait, event)
