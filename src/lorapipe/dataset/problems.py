"""One finding about a dataset: which file, how bad, and why (shared by blueprint, scan and check)."""

from __future__ import annotations

from dataclasses import dataclass

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    """`severity` is "error" (training would fail or silently train the wrong thing) or "warning"."""

    path: str
    severity: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "severity": self.severity, "reason": self.reason}


def error(path: object, reason: str) -> Problem:
    return Problem(str(path), ERROR, reason)


def warning(path: object, reason: str) -> Problem:
    return Problem(str(path), WARNING, reason)
