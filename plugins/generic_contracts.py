"""Conformance-kit contexts for phasetrain's small kinds that need no contracts of their own.

A kind whose ``Kind.contracts`` names this module gets the kit's generic contracts (it builds,
its options round-trip, a checkpoint in the middle resumes to the same end bit for bit, two runs
with one seed agree) in the kit's default context: the tiny ``regression`` task, with the
component in its section. Imported by the kit only.
"""

from __future__ import annotations

from typing import Any

from phasetrain.testing.contract import context


def _as_is(subject: Any, options: Any, raw: dict[str, Any]) -> None:
    """The default context already holds the component in its section."""


for _kind in ("grad_clip", "averaging", "nonfinite"):
    context(_kind)(_as_is)
