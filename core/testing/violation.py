"""What a contract check produces: a :class:`ContractViolation` when it fails, a :class:`Report`
of every contract when :func:`phasetrain.testing.check_component` passes.

Kept free of torch and hypothesis imports so that the pytest plugin can load it cheaply.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs


class ContractViolation(AssertionError):
    """A component broke a contract. The message starts with the contract's name
    (``"optimizer.state_round_trip: ..."``) so that a failing test says which promise broke;
    hypothesis adds the minimal failing example as notes on the exception."""

    def __init__(self, contract: str, message: str):
        self.contract = contract
        self.detail = message
        super().__init__(f"{contract}: {message}")


@attrs.frozen
class Outcome:
    """How one contract went for one component."""

    contract: str
    status: str  # "passed", "failed" or "skipped"
    detail: str = ""  # the failure (with its minimal example) or why the contract does not apply
    seconds: float = 0.0


@attrs.define
class Report:
    """Every contract checked for one component, in the order they ran."""

    kind: str
    name: str
    outcomes: list[Outcome] = attrs.field(factory=list)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def passed(self) -> bool:
        return not self.failures

    def names(self, status: str) -> list[str]:
        return [o.contract for o in self.outcomes if o.status == status]

    def __str__(self) -> str:
        lines = [f"{self.kind} {self.name!r}:"]
        for o in self.outcomes:
            why = f" ({o.detail.splitlines()[0]})" if o.detail and o.status != "passed" else ""
            lines.append(f"  {o.status:7} {o.contract}  {o.seconds:.2f}s{why}")
        return "\n".join(lines)


def violation_from(report: Report) -> ContractViolation:
    """One exception for every failed contract of ``report``: the first failure's message (with
    its minimal example) first, so the exception names the first contract that broke."""
    first, *others = report.failures
    text = first.detail
    if others:
        text += "\n\nalso broken:\n" + "\n".join(f"- {o.contract}: {_first_line(o.detail)}" for o in others)
    error = ContractViolation(first.contract, text)
    error.report = report  # type: ignore[attr-defined]
    return error


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


def describe(error: BaseException) -> str:
    """The error's message followed by the notes hypothesis attached (the minimal example)."""
    message = error.detail if isinstance(error, ContractViolation) else f"{type(error).__name__}: {error}"
    notes: Iterable[str] = getattr(error, "__notes__", ())
    return "\n".join([message, *notes])
