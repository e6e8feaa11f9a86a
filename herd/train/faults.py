"""Fault injection for the resume tests: `HERD_FAULT=save:N` or `step:N` makes the process kill
itself with SIGKILL in the middle of saving checkpoint N, or in the middle of optimizer step N
(after the backward, before the update); `rollout:N` kills an RL rollout worker as it takes the task of
step N. A fault fires only in a process's first life: processes that torchrun restarts
(TORCHELASTIC_RESTART_COUNT > 0) run clean. Unset in normal use, where this costs one dict lookup."""

from __future__ import annotations

import os
import signal


def maybe_fail(point: str, step: int) -> None:
    if os.environ.get("HERD_FAULT") == f"{point}:{step}" and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        os.kill(os.getpid(), signal.SIGKILL)
