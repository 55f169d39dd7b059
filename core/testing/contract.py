"""Contracts: named invariants of a component kind, each run under hypothesis.

A contract is a function ``body(subject, data)`` that draws what it needs from ``data``
(hypothesis' ``st.data()``) and raises :class:`ContractViolation` when the component breaks the
promise. :func:`run` drives it for a number of examples; hypothesis shrinks a failure to a
minimal example and attaches it to the exception as notes. Any other exception a component
raises inside a contract is a violation of that contract too.

Every contract object is also a plain function for any test suite::

    from phasetrain.testing import optimizer
    optimizer.state_round_trip("lion")                 # kind-specific: the component's name
    from phasetrain.testing import generic
    generic.deterministic("optimizer", "lion")         # generic ("component.*"): kind and name
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import attrs

from phasetrain.testing.violation import ContractViolation, Outcome, describe

GENERIC = "*"

#: Every contract, by name, in the order they were declared.
CONTRACTS: dict[str, Contract] = {}


@attrs.frozen
class Contract:
    name: str  # "<kind>.<what>", or "component.<what>" for the ones every kind has
    kind: str  # a component kind, or GENERIC
    body: Callable[[Any, Any], None] = attrs.field(repr=False)
    examples: int = 10  # hypothesis examples by default
    summary: str = ""
    applies: Callable[[Any], str | None] | None = attrs.field(default=None, repr=False)  # a reason to skip

    def __call__(self, *args: str, **settings: Any) -> Outcome:
        """Check this contract for one component; raise :class:`ContractViolation` if broken."""
        from phasetrain.testing.context import Settings, Subject

        if self.kind == GENERIC:
            if len(args) != 2:
                raise TypeError(f"{self.name} takes the component's kind and name, got {args!r}")
            kind, name = args
        else:
            if len(args) != 1:
                raise TypeError(f"{self.name} takes the component's name, got {args!r}")
            kind, name = self.kind, args[0]
        outcome = run(self, Subject(kind, name, Settings.of(settings)))
        if outcome.status == "failed":
            raise outcome.error  # type: ignore[misc]
        return outcome


def contract(name: str, kind: str, *, examples: int = 10, summary: str = "",
             applies: Callable[[Any], str | None] | None = None) -> Callable[[Callable[[Any, Any], None]], Contract]:
    """Declare a contract (used as a decorator on its body)."""

    def register(body: Callable[[Any, Any], None]) -> Contract:
        made = Contract(name, kind, body, examples, summary or (body.__doc__ or "").strip().split("\n")[0], applies)
        CONTRACTS[name] = made
        return made

    return register


@attrs.frozen
class KindContext:
    """How the kit builds the smallest honest run for a component of ``kind``, declared in the
    module that holds the kind's contracts (named by ``Kind.contracts``).

    ``adjust(subject, options, raw)`` edits the raw run config, in which the component is already
    in its section; ``hooks(subject, options)`` gives plugin objects the run needs;
    ``small(subject, strategy)`` narrows drawn options for contracts that train.
    """

    kind: str
    adjust: Callable[[Any, Any, dict[str, Any]], None]
    hooks: Callable[[Any, Any], list[Any]] | None = None
    small: Callable[[Any, Any], Any] | None = None


#: Contexts of kinds, by kind, registered by their contract modules.
CONTEXTS: dict[str, KindContext] = {}


def context(kind: str, *, hooks: Callable[[Any, Any], list[Any]] | None = None,
            small: Callable[[Any, Any], Any] | None = None) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Declare the run context of ``kind`` (used as a decorator on its ``adjust`` function)."""

    def register(adjust: Callable[..., None]) -> Callable[..., None]:
        CONTEXTS[kind] = KindContext(kind, adjust, hooks, small)
        return adjust

    return register


@attrs.frozen
class Failed(Outcome):
    error: BaseException | None = attrs.field(default=None, eq=False, repr=False)


def run(contract: Contract, subject: Any) -> Outcome:
    """Run ``contract`` for ``subject`` under hypothesis; an :class:`Outcome` either way."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from hypothesis.errors import HypothesisException, Unsatisfiable

    started = time.perf_counter()
    subject.contract = contract.name

    def example(data: Any) -> None:
        try:
            contract.body(subject, data)
        except (ContractViolation, HypothesisException):
            raise
        except Exception as exc:
            raise ContractViolation(contract.name, f"{subject.label}: {type(exc).__name__}: {exc}") from exc

    def hypothesis_run(examples: int) -> None:
        settings(
            max_examples=examples,
            deadline=None,
            database=None,  # every contract shares this function: replaying another's examples is noise
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
            derandomize=subject.settings.derandomize,
            print_blob=False,
            phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
        )(given(data=st.data())(example))()

    examples = subject.settings.examples or contract.examples
    threads = _one_thread()
    try:
        with subject.workdir():
            reason = contract.applies(subject) if contract.applies is not None else None
            if reason:
                return Outcome(contract.name, "skipped", reason, time.perf_counter() - started)
            # The default options first, on their own: when they already break the contract they
            # are the minimal example, found without shrinking through many (costly) runs.
            for pinned, count in ((True, 1), (False, examples - 1)):
                if count > 0:
                    subject.pinned = pinned
                    try:
                        hypothesis_run(count)
                    except Unsatisfiable:
                        if pinned:
                            raise
                        note = "every drawn configuration was refused with a BadInput; only the defaults were checked"
                        return Outcome(contract.name, "passed", note, time.perf_counter() - started)
                    finally:
                        subject.pinned = False
    except ContractViolation as exc:
        return Failed(contract.name, "failed", describe(exc), time.perf_counter() - started, exc)
    except Unsatisfiable as exc:
        error = ContractViolation(
            contract.name, f"{subject.label}: refused every drawn configuration, so nothing could be checked ({exc})"
        )
        return Failed(contract.name, "failed", describe(error), time.perf_counter() - started, error)
    except Exception as exc:  # hypothesis' own verdicts (flaky failures) and errors around the runs
        error = ContractViolation(contract.name, f"{subject.label}: {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return Failed(contract.name, "failed", describe(error), time.perf_counter() - started, error)
    finally:
        threads()
    return Outcome(contract.name, "passed", "", time.perf_counter() - started)


def _one_thread() -> Callable[[], None]:
    """Run contracts on one CPU thread and return how to put the old count back. The contexts'
    models are tiny: more threads only wait for each other, badly so on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    return lambda: torch.set_num_threads(before)
