"""Plugins from entry points: discovery, errors that name the distribution, autoload switch."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from phasetrain.errors import PluginError
from phasetrain.registry import load_registry, plugin

from .conftest import run_cli


def fake_distribution(root: Path, source: str, name: str = "fakeplug", version: str = "0.3") -> dict:
    """Install (by sys.path) a distribution with one `phasetrain` entry point; return the env."""
    package = root / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(source))
    info = root / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[phasetrain]\n{name}_ep = {name}\n")
    return {"PYTHONPATH": str(root)}


GOOD = """
    import attrs, torch
    from phasetrain import Component, hookimpl

    @attrs.define
    class Options:
        lr: float = 0.05

    def build(options, ctx):
        return torch.optim.SGD(ctx.params, lr=options.lr)

    @hookimpl
    def phasetrain_components():
        return [Component("optimizer", "plainsgd", build, Options, "SGD from a third party")]

    @hookimpl
    def train_end(trainer, outcome):
        print("fakeplug saw the end at step", outcome.steps)
"""


def test_builtins_are_listed_with_kinds_and_distribution():
    result = run_cli("plugins")
    assert result.returncode == 0, result.stderr
    for name, kind in [("optimizers", "optimizer"), ("tasks", "task"), ("schedules", "schedule"),
                       ("console", "observer"), ("precision", "precision")]:
        line = next(line for line in result.stdout.splitlines() if line.startswith(name + " "))
        assert "phasetrain" in line and kind in line


def test_third_party_component_and_hook_are_used_by_name(tmp_path):
    env = fake_distribution(tmp_path / "site", GOOD)
    listing = run_cli("plugins", env=env)
    assert "fakeplug_ep" in listing.stdout and "fakeplug 0.3" in listing.stdout
    assert "plainsgd" in listing.stdout
    result = run_cli("run", "regression", "--set", "optimizer={use='plainsgd', lr=0.01}",
                     "--set", "run.steps=5", "--set", f"run.out_dir='{tmp_path / 'out'}'", env=env)
    assert result.returncode == 0, result.stderr
    assert "fakeplug saw the end at step 5" in result.stdout


def test_autoload_switch_loads_only_builtins(tmp_path):
    env = fake_distribution(tmp_path / "site", GOOD)
    env["PHASETRAIN_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    result = run_cli("plugins", env=env)
    assert result.returncode == 0
    assert "fakeplug" not in result.stdout and "optimizers" in result.stdout


def test_broken_plugin_is_named_with_its_distribution_and_cause(tmp_path):
    env = fake_distribution(tmp_path / "site", "raise ImportError('needs libfoo')\n")
    result = run_cli("plugins", env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "'fakeplug_ep'" in result.stderr and "fakeplug 0.3" in result.stderr
    assert "needs libfoo" in result.stderr


def test_two_distributions_with_the_same_component_name_both_distributions(tmp_path):
    clash = GOOD.replace('"plainsgd"', '"adam"')
    env = fake_distribution(tmp_path / "site", clash, name="clashplug", version="1.2")
    result = run_cli("plugins", env=env)
    assert result.returncode == 2
    assert "optimizer 'adam' is registered twice" in result.stderr
    assert "phasetrain 0.1.0" in result.stderr.replace("phasetrain-", "") and "clashplug 1.2" in result.stderr


def test_hook_implementation_matching_no_spec_is_rejected_at_start(tmp_path):
    source = """
        from phasetrain import hookimpl

        @hookimpl
        def post_stepp(trainer):
            pass
    """
    env = fake_distribution(tmp_path / "site", source, name="typoplug")
    result = run_cli("plugins", env=env)
    assert result.returncode == 2
    assert "typoplug" in result.stderr and "post_stepp" in result.stderr


def test_in_process_extra_plugins_join_the_registry():
    class Extra:
        from phasetrain import hookimpl as _h

        @_h
        def phasetrain_components(self):
            from phasetrain import Component, NoOptions

            return [Component("offload", "nowhere", lambda o, c: object(), NoOptions)]

    registry = load_registry([plugin(Extra(), "extra", "extra-dist")])
    assert "nowhere" in registry.names("offload")
    assert registry.origin("offload", "nowhere").distribution == "extra-dist"
    with pytest.raises(PluginError, match="registered twice"):
        load_registry([plugin(Extra(), "a", "one"), plugin(Extra(), "b", "two")])
