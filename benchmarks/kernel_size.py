"""The size of phasetrain's kernel: lines of code in core/ outside core/testing.

Counts lines that hold code: blank lines, comment-only lines and docstrings (of modules,
classes and functions) are left out; a statement spread over several lines counts each of them.
Prints a table per file and the total, and writes JSON. ``tests/test_open_kernel.py`` holds the
kernel to its budget (1,315 lines) with the same counter.

    python benchmarks/kernel_size.py [--out benchmarks/results/kernel_size.json]
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET = 1300


def count(path: str | Path) -> int:
    """Lines of code in the Python file at ``path`` (see the module docstring)."""
    source = Path(path).read_text()
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                docstrings.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    lines: set[int] = set()
    skip = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in skip:
            lines.update(range(token.start[0], token.end[0] + 1))
    return len(lines - docstrings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kernel_size.json"))
    args = parser.parse_args()
    files = {p.name: count(p) for p in sorted((ROOT / "core").glob("*.py"))}
    total = sum(files.values())
    for name, n in files.items():
        print(f"{name:<16} {n:>5}")
    print(f"{'total':<16} {total:>5}  (budget {BUDGET})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"files": files, "total": total, "budget": BUDGET}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
