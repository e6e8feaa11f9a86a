"""The engine thread of `herd serve`: it owns the scheduler and steps it; HTTP handlers talk to it.

- `submit()` (from the event loop) queues a request with the scheduler and returns an `asyncio.Queue`
  that receives the request's `TokenEvent`s, handed over with `call_soon_threadsafe`; a `Closed` item
  ends the stream when the server stops or a step fails.
- `abort()` ends a request (client gone); the scheduler carries it out at its next step.
- `call(fn)` runs `fn(model)` in the engine thread between steps (prompt scoring for `echo`), so the
  model is only ever used by one thread.
- The thread sleeps when there is nothing to do and wakes on the next submission.
- Events reach the event loop through a delivery thread, woken by the scheduler's `wake_fd` (a pipe): a
  step's tokens are handed over as the next decode step's LM head starts, where the event loop's and the
  client's CPU time is taken from a part of the step its threads share dynamically (on a machine whose
  cores the step fills, handed over as soon as they exist they landed in the layers, whose static shares
  wait for each other), or at once when no decode step follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

from herd.infer.scheduler import Scheduler, TokenEvent
from herd.infer.steps import wake

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
        self._pending: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue, Any]] = []  # not yet handed over
        self._deliver_r, self._deliver_w = os.pipe()
        os.set_blocking(self._deliver_w, False)
        self._pipe_lock = threading.Lock()
        self._engine_done = self._close_when_done = False
        scheduler.wake_fd = self._deliver_w
        self._delivery = threading.Thread(target=self._deliver, name="herd-deliver", daemon=True)
        self._delivery.start()
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
        """Stop stepping; every open stream gets `Closed`. Safe to call more than once, from any thread."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=30)
        self._close_all("the server is shutting down")
        with self._pipe_lock:  # the pipe closes once no step can write to it: its number may go to another file
            if self._engine_done:
                self._close_pipe()
            else:  # a step outlived the join: the engine thread closes it as it leaves
                self._close_when_done = True
        self._delivery.join(timeout=30)

    def _close_pipe(self) -> None:
        """Close the delivery pipe's write end (once; the caller holds `_pipe_lock`): the delivery thread hands
        over what is left and ends."""
        if self._deliver_w >= 0:
            self.scheduler.wake_fd = -1
            os.close(self._deliver_w)
            self._deliver_w = -1

    def _close_all(self, reason: str) -> None:
        with self._lock:
            queues, self._queues = self._queues, {}
            self._pending += [(loop, queue, Closed(reason)) for loop, queue in queues.values()]
        for request_id in queues:
            self.scheduler.abort(request_id)
        self._hand_over()

    def _hand_over(self) -> None:
        """Wake the delivery thread now (nothing once the pipe is closed)."""
        with self._pipe_lock:
            if self._deliver_w >= 0:
                wake(self._deliver_w)

    def _deliver(self) -> None:
        """The delivery thread: on each wake-up, the pending events to their queues' event loops."""
        while True:
            try:
                woken = os.read(self._deliver_r, 4096)
            except OSError:
                return
            with self._lock:
                items, self._pending = self._pending, []
            for loop, queue, item in items:
                with contextlib.suppress(RuntimeError):  # that event loop is closed: its request is gone
                    loop.call_soon_threadsafe(queue.put_nowait, item)
            if not woken:  # the write end is closed: stopped
                os.close(self._deliver_r)
                return

    def _loop(self) -> None:
        try:
            self._steps()
        finally:
            with self._pipe_lock:
                self._engine_done = True
                if self._close_when_done:
                    self._close_pipe()

    def _steps(self) -> None:
        while not self._stopping:
            with self._lock:
                calls, self._calls = self._calls, []
            if calls:
                self._hand_over()  # the last step's tokens do not wait for these
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
            if not self.scheduler.has_work():  # no next step to hand over this one's events
                self._hand_over()

    def _dispatch(self, events: list[TokenEvent]) -> None:
        """Queue events for their requests; the scheduler's wake-up hands them over (see the module doc)."""
        with self._lock:
            for event in events:
                target = self._queues.get(event.request)
                if target is not None:
                    self._pending.append((*target, event))
