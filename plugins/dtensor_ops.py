"""Two DTensor operations that plugins written for plain tensors use and torch 2.13 lacks.

Under the ``fsdp`` strategy the trainable parameters are DTensors, and plugins that keep copies of
them (weight averaging, the hybrid schedule's snapshots and rollbacks, the dynamics models) run
plain torch code on them. Element-wise arithmetic works shard by shard as it is; two things do not:

- ``torch._foreach_copy_(dst, src)``: torch has no sharding rule for it. With ``dst`` and ``src``
  sharded alike, it is a copy from shard to shard, with no communication (a differently sharded
  ``src`` is redistributed first).
- ``float(t)`` / ``t.item()`` of a *partial* DTensor (a sum over shards, such as the dot product
  ``(a * b).sum()`` of two sharded tensors): torch returns this process's part of the sum, so every
  process would see another number (and, for a dynamics model's confidence, choose another phase).
  DTensor's own rule for the operation says "replicate only"; this handler does that: one scalar
  all-reduce, then every process reads the same value.

:func:`install` registers both with DTensor's dispatcher (``_custom_op_handlers``, the hook torch's
own ``loss_parallel`` uses). It is called when an ``fsdp`` strategy is built; runs without
DTensors never reach these handlers.
"""

from __future__ import annotations

from typing import Any


def _foreach_copy(op_call: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    from torch.distributed.tensor import DTensor

    dst, src = list(args[0]), list(args[1])
    local_src = []
    for d, s in zip(dst, src, strict=True):
        if not isinstance(s, DTensor):
            raise TypeError("_foreach_copy_: copying a plain tensor into a DTensor is ambiguous; make it a DTensor")
        if s.device_mesh != d.device_mesh or s.placements != d.placements:
            s = s.redistribute(d.device_mesh, d.placements)
        local_src.append(s._local_tensor)
    op_call([d._local_tensor for d in dst], local_src, *args[2:], **kwargs)


def _item(op_call: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    from torch.distributed.tensor import Replicate

    t = args[0]
    if any(p.is_partial() for p in t.placements):
        t = t.redistribute(t.device_mesh, [Replicate()] * t.device_mesh.ndim)
    return op_call(t._local_tensor, *args[1:], **kwargs)


def install() -> None:
    """Register the two handlers (idempotent)."""
    import torch
    from torch.distributed.tensor import DTensor

    aten = torch.ops.aten
    DTensor._op_dispatcher._custom_op_handlers.update({
        aten._foreach_copy_.default: _foreach_copy,
        aten._local_scalar_dense.default: _item,
    })
