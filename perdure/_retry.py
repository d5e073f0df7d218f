"""Retry policy and its arithmetic."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from perdure._durations import Duration, to_seconds


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """How an activity is retried. ``maximum_attempts=0`` means unlimited.

    >>> RetryPolicy(initial_interval="1s", maximum_attempts=5)
    """

    initial_interval: Duration = 1.0
    backoff_coefficient: float = 2.0
    maximum_interval: Duration | None = 100.0
    maximum_attempts: int = 0
    non_retryable_errors: list[str] | tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        to_seconds(self.initial_interval, what="initial_interval")
        if self.maximum_interval is not None:
            to_seconds(self.maximum_interval, what="maximum_interval")
        if self.backoff_coefficient < 1:
            raise ValueError(f"backoff_coefficient must be >= 1, got {self.backoff_coefficient}")
        if self.maximum_attempts < 0:
            raise ValueError(f"maximum_attempts must be >= 0, got {self.maximum_attempts}")

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait after failed ``attempt`` (1-based) before the next one."""
        initial = to_seconds(self.initial_interval)
        delay = initial * (self.backoff_coefficient ** (attempt - 1))
        cap = (
            to_seconds(self.maximum_interval)
            if self.maximum_interval is not None
            else 100 * initial
        )
        return float(min(delay, cap))

    def attempts_exhausted(self, attempt: int) -> bool:
        return self.maximum_attempts > 0 and attempt >= self.maximum_attempts

    def is_non_retryable(self, error_type: str) -> bool:
        return error_type in self.non_retryable_errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "initial_interval": to_seconds(self.initial_interval),
            "backoff_coefficient": self.backoff_coefficient,
            "maximum_interval": None
            if self.maximum_interval is None
            else to_seconds(self.maximum_interval),
            "maximum_attempts": self.maximum_attempts,
            "non_retryable_errors": list(self.non_retryable_errors),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetryPolicy:
        return cls(
            initial_interval=data["initial_interval"],
            backoff_coefficient=data["backoff_coefficient"],
            maximum_interval=data["maximum_interval"],
            maximum_attempts=data["maximum_attempts"],
            non_retryable_errors=tuple(data["non_retryable_errors"]),
        )
