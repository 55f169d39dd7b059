"""Conformance-kit contexts for ``[early_stopping]`` and ``[best_checkpoints]``.

They get the kit's generic contracts (builds, options round-trip, a checkpoint in the middle
resumes to the same end bit for bit, determinism) in the default ``regression`` context,
evaluated every step so that they have something to decide on. Imported by the kit only.
"""

from __future__ import annotations

from typing import Any

from phasetrain.testing.contract import context


def _evaluated(subject: Any, options: Any, raw: dict[str, Any]) -> None:
    raw["run"]["eval_every"] = 1


for _kind in ("early_stopping", "best_checkpoints"):
    context(_kind)(_evaluated)
