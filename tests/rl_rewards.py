"""Rewards for the RL tests (importable as `rl_rewards:NAME` by the processes the tests start)."""


def even_length(output: str, reference: str) -> bool:
    """A reward a random model earns about half the time: the answer's length is even."""
    return len(output) % 2 == 0


def constant(output: str, reference: str) -> float:
    return 1.0
