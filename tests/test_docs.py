"""The docs say what the code does: the configuration reference is generated and must be fresh,
the metrics format page names every field the writer emits, and the README links resolve."""

from __future__ import annotations

import difflib
import re

import attrs

import phasetrain
from phasetrain import config as config_mod
from phasetrain.plugins import docgen
from phasetrain.plugins.metrics import read_records
from phasetrain.registry import Registry, discover

from .conftest import ROOT

DOCS = ROOT / "docs"


def test_configuration_reference_is_up_to_date():
    current = (DOCS / "configuration.md").read_text()
    generated = docgen.render()
    diff = difflib.unified_diff(current.splitlines(), generated.splitlines(), "docs", "code", lineterm="", n=0)
    assert current == generated, (
        "docs/configuration.md is stale: an options class changed. Regenerate it with\n"
        f"    {docgen.COMMAND}\n" + "\n".join(list(diff)[:20])
    )


def test_reference_covers_every_builtin_component_and_every_run_key():
    text = docgen.render()
    registry = Registry(discover(autoload=False))
    for kind in registry.kinds:
        for name in registry.names(kind):
            section = text.split(f"\n### `{name}`\n", 1)
            assert len(section) == 2, f"{kind} {name!r} is missing from the reference"
            component = registry.get(kind, name)
            body = section[1].split("\n### ", 1)[0]
            for field in attrs.fields(component.config) if attrs.has(component.config) else ():
                assert f"| `{field.name}` |" in body, f"{kind} {name}: option {field.name!r} is missing"
    run = text.split("## `[run]`", 1)[1].split("\n## ", 1)[0]
    for field in attrs.fields(config_mod.RunConfig):
        assert f"| `{field.name}` |" in run


def test_reference_reads_descriptions_and_defaults_from_the_code():
    @attrs.define
    class Options:
        rate: float = attrs.field(default=0.5)  # how fast
        # why the name matters
        name: str = "x"
        sizes: list[int] = attrs.field(factory=lambda: [1, 2])
        told: int = attrs.field(default=3, metadata={"doc": "from metadata"})  # not this one

    rows = {line.split("|")[1].strip(" `"): line for line in docgen.options_table(Options)[2:]}
    assert rows["rate"].split("|")[3:5] == [" `0.5` ", " how fast "]
    assert rows["name"].split("|")[3:5] == [' `"x"` ', " why the name matters "]
    assert rows["sizes"].split("|")[3] == " `[1, 2]` "
    assert rows["told"].split("|")[4] == " from metadata "


def test_metrics_format_page_names_every_field_and_kind_the_writer_emits(tmp_path):
    args = [f"run.out_dir='{tmp_path}'", "observers.console.quiet=true", "run.device='cpu'",
            "task.n_train=256", "task.hidden=16", "run.steps=4", "run.log_every=2",
            "schedule={use='staged', stages=[{name='a', steps=2}, {name='b'}]}"]
    phasetrain.Trainer.from_config("regression", args).fit()
    records = read_records(tmp_path / "metrics.jsonl")
    page = (DOCS / "metrics.md").read_text()
    kinds = {r["kind"] for r in records}
    assert kinds == {"train", "eval", "phase", "end"}
    for kind in kinds:
        assert f'"{kind}"' in page, f"docs/metrics.md does not describe records of kind {kind!r}"
    for key in {k for r in records for k in r}:
        assert f"`{key}`" in page, f"docs/metrics.md does not name the field {key!r}"


def test_readme_and_docs_links_point_at_files_that_exist():
    for page in [ROOT / "README.md", *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
