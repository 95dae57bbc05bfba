"""The result every property check returns."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CheckResult:
    """What a property check measured, against what, and the verdict.

    ``value`` is the measured figure and ``tolerance`` the bound it is held to (the check's
    docstring says which side passes); ``explanation`` is one line a user can read in a test
    log; ``details`` holds the other figures measured on the way (per-D errors, per-grid
    orders, z-scores, ...). A result is truthy when the check passed.
    """

    name: str
    value: float
    tolerance: float
    passed: bool
    explanation: str
    details: dict = field(default_factory=dict, compare=False)

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "fail"

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return f"{self.name}: {self.verdict.upper()}: {self.explanation}"

    def assert_passed(self) -> "CheckResult":
        """Raise ``AssertionError`` with the one-line explanation unless the check passed."""
        if not self.passed:
            raise AssertionError(str(self))
        return self
