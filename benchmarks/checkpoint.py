"""Checkpoint cost: phasetrain's atomic, checksummed checkpoint vs a bare torch.save.

For the `lm` preset at two model sizes, after a few training steps (so Adam's moments exist):
write time (the run's whole state through its `[store]`, as the loop writes it: serialised,
checksummed, fsynced, renamed into place, the previous checkpoint pruned), load time (both
checksums, weights_only, the state's checks) and bytes on disk, against `torch.save` /
`torch.load` of the same model and optimizer state dicts. The size ratio shows that nothing is
stored twice (tied weights included). Medians over repeats, interleaved.

    python benchmarks/checkpoint.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

import phasetrain
from phasetrain.plugins import store

SIZES = {
    "small": ["task.n_layer=2", "task.n_embd=128"],
    "large": ["task.n_layer=6", "task.n_embd=384", "task.n_head=6"],
}


def tensor_bytes(obj) -> int:
    seen, total = set(), 0

    def walk(value):
        nonlocal total
        if isinstance(value, torch.Tensor):
            key = (value.untyped_storage().data_ptr(), value.dtype)
            if key not in seen:
                seen.add(key)
                total += value.untyped_storage().nbytes()
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    walk(obj)
    return total


def measure(size: str, repeats: int, root: Path) -> dict:
    trainer = phasetrain.Trainer.from_config("lm", [
        *SIZES[size], "run.steps=2", f"run.out_dir='{root / size}'", "run.keep_checkpoints=1",
        "observers.console.quiet=true", "task.batch_size=4", "run.device='cpu'"])
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.fit()
    payload = {"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict()}
    bare = root / f"{size}-bare.pt"
    ours_w, ours_r, bare_w, bare_r, sync_w = [], [], [], [], []
    for _ in range(repeats):
        trainer.state.step += 1  # a new checkpoint each time, the previous one pruned (keep 1)
        t0 = time.perf_counter()
        path = trainer.save_checkpoint()
        ours_w.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        torch.save(payload, bare)
        bare_w.append(time.perf_counter() - t0)
        t0 = time.perf_counter()  # the same bytes made durable: what atomicity costs at least
        with open(bare, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        sync_w.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        store.load_dir(path)
        ours_r.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        torch.load(bare, weights_only=True)
        bare_r.append(time.perf_counter() - t0)
    ours_bytes = sum(f.stat().st_size for f in path.iterdir())
    params = sum(p.numel() for p in trainer.model.parameters())
    return {
        "size": size, "parameters": params,
        "model_plus_optimizer_bytes": tensor_bytes(payload),
        "phasetrain_bytes": ours_bytes, "torch_save_bytes": bare.stat().st_size,
        "write_s": statistics.median(ours_w), "torch_save_s": statistics.median(bare_w),
        "torch_save_fsync_s": statistics.median(sync_w),
        "load_s": statistics.median(ours_r), "torch_load_s": statistics.median(bare_r),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results/checkpoint.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(size, args.repeats, Path(tmp)) for size in SIZES]
    print(f"{'size':<6} {'params':>10} {'tensors MB':>11} {'ours MB':>8} {'torch.save MB':>14} "
          f"{'size ratio':>10} {'write ms':>9} {'save ms':>8} {'save+fsync':>10} {'w ratio':>8} {'load ms':>8} {'t.load ms':>9} {'l ratio':>8}")
    for r in rows:
        mb = 1 / 2**20
        print(f"{r['size']:<6} {r['parameters']:>10,} {r['model_plus_optimizer_bytes'] * mb:>11.2f} "
              f"{r['phasetrain_bytes'] * mb:>8.2f} {r['torch_save_bytes'] * mb:>14.2f} "
              f"{r['phasetrain_bytes'] / r['model_plus_optimizer_bytes']:>10.3f} "
              f"{r['write_s'] * 1e3:>9.1f} {r['torch_save_s'] * 1e3:>8.1f} {r['torch_save_fsync_s'] * 1e3:>10.1f} "
              f"{r['write_s'] / r['torch_save_fsync_s']:>8.2f} "
              f"{r['load_s'] * 1e3:>8.1f} {r['torch_load_s'] * 1e3:>9.1f} {r['load_s'] / r['torch_load_s']:>8.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
