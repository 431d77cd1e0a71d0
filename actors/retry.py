"""Retry policy: how long a failed message waits before its next delivery.

A handler that raises is nacked with a delay computed here from ``msg.deliveries`` (1 on the
first delivery), so the hub redelivers it later instead of at once; ``max_deliver`` on the
subscription still decides when it is dead-lettered. Pure: the random source is a parameter.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff", "compute_backoff", "DEFAULT_RETRY"]


def compute_backoff(deliveries: int, *, initial: float, factor: float, maximum: float,
                    jitter: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed delivery number ``deliveries`` (1, 2, ...).

    ``initial * factor ** (deliveries - 1)``, capped at ``maximum``, then spread by up to
    ``±jitter`` (a fraction: 0.2 = ±20 %) so that many messages failing together do not all come
    back in the same instant; never negative, never above ``maximum``.
    """
    n = max(1, deliveries) - 1
    try:
        base = initial * factor**n
    except OverflowError:
        base = maximum
    base = min(base, maximum)
    if jitter:
        r = (rng or random).uniform(-jitter, jitter)
        base = base * (1.0 + r)
    return max(0.0, min(base, maximum))


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter, per subscription: ``@actor.subscribe(..., retry=Backoff())``.

    Delays in seconds: ``initial`` after the first failure, times ``factor`` after each further
    one, at most ``max``, each spread by ``±jitter`` (fraction of the delay).
    """

    initial: float = 1.0
    factor: float = 2.0
    max: float = 60.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.initial < 0 or self.max < 0:
            raise ValueError("initial and max must be >= 0")
        if self.factor < 1:
            raise ValueError("factor must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")

    def delay(self, deliveries: int, rng: random.Random | None = None) -> float:
        """Seconds before the next delivery after failed delivery number ``deliveries``."""
        return compute_backoff(deliveries, initial=self.initial, factor=self.factor,
                               maximum=self.max, jitter=self.jitter, rng=rng)


# What a subscription gets unless it says otherwise: 1 s, 2 s, 4 s ... up to a minute, ±20 %.
DEFAULT_RETRY = Backoff()
