"""Bit-for-bit comparison of nested state (dicts, lists and tuples of tensors and plain values).

Checkpoints, optimizer state dicts and plugin state are such trees. "The same" here means the
same structure, and every tensor the same dtype, shape, device type and bytes, so ``NaN`` equals
``NaN`` and ``-0.0`` differs from ``0.0``. Values under a *volatile* key (a clock reading such as
``time``) are only required to exist on both sides.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

#: Keys whose values are clock readings: two runs cannot agree on them.
VOLATILE = frozenset({"time", "wall", "elapsed", "seconds"})


def tree_map(value: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """``value`` with every tensor inside dicts, lists and tuples replaced by ``fn(tensor)``."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, Mapping):
        return {k: tree_map(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(tree_map(v, fn) for v in value)
    return value


def tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor inside ``value``."""
    found: list[torch.Tensor] = []
    tree_map(value, found.append)
    return found


def clone(value: Any) -> Any:
    """A deep copy whose tensors are detached clones (a snapshot that later steps cannot touch)."""
    return tree_map(value, lambda t: t.detach().clone())


def _bytes(t: torch.Tensor) -> torch.Tensor:
    flat = t.detach().reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    return flat.cpu().contiguous().view(torch.uint8)


def _tensor_difference(a: torch.Tensor, b: torch.Tensor) -> str | None:
    if a.dtype != b.dtype:
        return f"dtype {a.dtype} vs {b.dtype}"
    if a.shape != b.shape:
        return f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
    if a.device.type != b.device.type:
        return f"device {a.device} vs {b.device}"
    if torch.equal(_bytes(a), _bytes(b)):
        return None
    if a.is_floating_point() or a.is_complex():
        differs = ~((a == b) | (torch.isnan(a) & torch.isnan(b)))
    else:
        differs = a != b
    count = int(differs.sum()) if differs.any() else 0
    if count == 0:  # equal values, different bits: -0.0 against 0.0, or NaN payloads
        return "same values but different bits (signed zeros or NaN payloads)"
    index = int(differs.reshape(-1).nonzero()[0])
    first_a, first_b = a.reshape(-1)[index].item(), b.reshape(-1)[index].item()
    return f"{count} of {a.numel()} elements differ (element {index}: {first_a!r} vs {first_b!r})"


def differences(a: Any, b: Any, path: str = "", volatile: Iterable[str] = VOLATILE, limit: int = 5) -> list[str]:
    """Where ``a`` and ``b`` differ, as ``"path: what"`` lines (at most ``limit``)."""
    out: list[str] = []
    _walk(a, b, path, frozenset(volatile), out, limit)
    return out


def _walk(a: Any, b: Any, path: str, volatile: frozenset[str], out: list[str], limit: int) -> None:
    if len(out) >= limit:
        return
    where = path or "(top)"
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            out.append(f"{where}: {type(a).__name__} vs {type(b).__name__}")
            return
        why = _tensor_difference(a, b)
        if why:
            out.append(f"{where}: {why}")
        return
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b), key=repr):
            sub = f"{path}.{key}" if path else str(key)
            if key not in b:
                out.append(f"{sub}: missing after the round trip")
            elif key not in a:
                out.append(f"{sub}: appeared after the round trip")
            elif key not in volatile:
                _walk(a[key], b[key], sub, volatile, out, limit)
            if len(out) >= limit:
                return
        return
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            out.append(f"{where}: {len(a)} items vs {len(b)}")
            return
        for i, (x, y) in enumerate(zip(a, b)):
            _walk(x, y, f"{path}[{i}]", volatile, out, limit)
        return
    if type(a) is not type(b):
        out.append(f"{where}: {type(a).__name__} {a!r} vs {type(b).__name__} {b!r}")
    elif a != b and not (a != a and b != b):  # NaN equals NaN here
        out.append(f"{where}: {a!r} vs {b!r}")


def through_checkpoint(state: Any) -> Any:
    """``state`` after a trip through ``torch.save`` and ``torch.load(weights_only=True)``, the
    way checkpoints store it: only plain containers of tensors and numbers survive."""
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)
