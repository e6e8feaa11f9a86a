"""Inference: the KV slot pool, the continuous-batching scheduler, the decode steps, sampling, and `Engine`,
the offline wrapper over them. Token ids in, token ids out."""

from herd.infer.engine import Completion, Engine
from herd.infer.kv_pool import KVPool, PoolFull
from herd.infer.sampling import SamplingParams
from herd.infer.scheduler import QueueFull, Scheduler, TokenEvent
from herd.infer.steps import EagerStep, FastDecode

__all__ = ["Completion", "EagerStep", "Engine", "FastDecode", "KVPool", "PoolFull", "QueueFull", "SamplingParams",
           "Scheduler", "TokenEvent"]
