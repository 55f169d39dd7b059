"""The character corpus of the ``lm`` task: Python standard-library sources, shipped gzipped.

The corpus ships as package data so that every machine trains on the same bytes, whatever its
Python version. ``python -m phasetrain.plugins.tasks.corpus`` rebuilds it from this
interpreter's standard library (the module list below), keeping only printable ASCII.
"""

from __future__ import annotations

import functools
import gzip
import string
import sys
import sysconfig
from importlib import resources
from pathlib import Path

MODULES = (
    "argparse", "ast", "bisect", "calendar", "collections/__init__", "contextlib", "csv",
    "dataclasses", "difflib", "enum", "fractions", "functools", "heapq", "inspect", "json/decoder",
    "json/encoder", "logging/__init__", "pathlib", "pprint", "queue", "random", "shlex", "statistics",
    "string", "textwrap", "threading", "tokenize", "typing", "uuid", "zipfile",
)
ALLOWED = set(string.printable) - {"\r", "\x0b", "\x0c"}
RESOURCE = "corpus.txt.gz"


def build_from_stdlib(modules: tuple[str, ...] = MODULES) -> str:
    """Concatenate the given standard-library modules, keeping printable ASCII only."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts = []
    for name in modules:
        text = (root / f"{name}.py").read_text(encoding="utf-8", errors="replace")
        parts.append("".join(c if c in ALLOWED else "?" for c in text.replace("\t", "    ")))
    return "\n\n".join(parts)


@functools.lru_cache(maxsize=1)
def load() -> str:
    """The shipped corpus as one string."""
    data = resources.files("phasetrain.plugins").joinpath("data", RESOURCE).read_bytes()
    return gzip.decompress(data).decode("ascii")


if __name__ == "__main__":
    out = Path(__file__).resolve().parent.parent / "data" / RESOURCE
    text = build_from_stdlib()
    out.write_bytes(gzip.compress(text.encode("ascii"), compresslevel=9, mtime=0))
    print(f"wrote {len(text):,} characters to {out} ({out.stat().st_size:,} bytes)", file=sys.stderr)
