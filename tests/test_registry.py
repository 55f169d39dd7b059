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


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up
def test_builtins_are_listed_with_kinds_and_distribution():
    result = run_cli("plugins")
    assert result.returncode == 0, result.stderr
    for name, kind in [("optimizers", "optimizer"), ("tasks", "task"), ("schedules", "schedule"),
                       ("console", "observer"), ("precision", "precision")]:
        line = next(line for line in result.stdout.splitlines() if line.startswith(name + " "))
        assert "phasetrain" in line and kind in line


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up
def test_third_party_component_and_hook_are_used_by_name(tmp_path):
    env = fake_distribution(tmp_path / "site", GOOD)
    listing = run_cli("plugins", env=env)
    assert "fakeplug_ep" in listing.stdout and "fakeplug 0.3" in listing.stdout
    assert "plainsgd" in listing.stdout
    result = run_cli("run", "regression", "--set", "optimizer={use='plainsgd', lr=0.01}",
                     "--set", "run.steps=5", "--set", f"run.out_dir='{tmp_path / 'out'}'", env=env)
    assert result.returncode == 0, result.stderr
    assert "fakeplug saw the end at step 5" in result.stdout


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up
def test_autoload_switch_loads_only_builtins(tmp_path):
    env = fake_distribution(tmp_path / "site", GOOD)
    env["PHASETRAIN_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    result = run_cli("plugins", env=env)
    assert result.returncode == 0
    assert "fakeplug" not in result.stdout and "optimizers" in result.stdout


def fake_site(root: Path, *dists: tuple[str, str, str, str]) -> dict:
    """Several distributions ``(name, version, entry point name, source)`` on one path."""
    for name, version, ep, source in dists:
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text(textwrap.dedent(source))
        info = root / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[phasetrain]\n{ep} = {name}\n")
    return {"PYTHONPATH": str(root)}


def quick_run(tmp_path: Path, *sets: str, env: dict) -> object:
    args = ["--set", "run.steps=3", "--set", f"run.out_dir='{tmp_path / 'out'}'"]
    for extra in sets:
        args += ["--set", extra]
    return run_cli("run", "regression", *args, env=env)


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up
def test_a_broken_plugin_is_listed_with_its_cause_and_stops_nothing_else(tmp_path):
    env = fake_distribution(tmp_path / "site", "raise ImportError('needs libfoo')\n")
    listing = run_cli("plugins", env=env)
    assert listing.returncode == 0 and "Traceback" not in listing.stderr
    line = next(line for line in listing.stdout.splitlines() if line.startswith("fakeplug_ep"))
    assert "fakeplug 0.3" in line and "BROKEN" in line and "needs libfoo" in line
    assert listing.stderr.count("warning:") == 1 and "fakeplug 0.3" in listing.stderr
    unrelated = quick_run(tmp_path, env=env)
    assert unrelated.returncode == 0, unrelated.stderr
    assert unrelated.stderr.count("warning:") == 1
    uses_it = quick_run(tmp_path, "optimizer={use='plainsgd'}", env=env)
    assert uses_it.returncode == 2 and "Traceback" not in uses_it.stderr
    error = uses_it.stderr.strip().splitlines()[-1]
    assert "unknown optimizer 'plainsgd'" in error and "fakeplug_ep' from fakeplug 0.3 is broken" in error


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up
def test_two_distributions_with_the_same_component_name_are_named_and_neither_is_used(tmp_path):
    clash = GOOD.replace('"plainsgd"', '"adam"')
    env = fake_distribution(tmp_path / "site", clash, name="clashplug", version="1.2")
    listing = run_cli("plugins", env=env)
    assert listing.returncode == 0
    assert "optimizer 'adam' is registered twice" in listing.stdout
    uses_it = quick_run(tmp_path, env=env)  # the regression preset chooses adam
    assert uses_it.returncode == 2
    error = uses_it.stderr.strip().splitlines()[-1]
    assert "optimizer 'adam' is registered twice" in error
    assert "phasetrain 0.2.0" in error.replace("phasetrain-", "") and "clashplug 1.2" in error
    other = quick_run(tmp_path, "optimizer={use='sgd'}", env=env)
    assert other.returncode == 0, other.stderr


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up
def test_the_same_entry_point_name_in_two_distributions_loads_both(tmp_path):
    other = GOOD.replace('"plainsgd"', '"othersgd"').replace("fakeplug saw", "second saw")
    env = fake_site(tmp_path / "site", ("firstdist", "1.0", "myopt", GOOD), ("seconddist", "2.0", "myopt", other))
    listing = run_cli("plugins", env=env)
    assert listing.returncode == 0, listing.stderr
    lines = [line for line in listing.stdout.splitlines() if line.startswith("myopt ")]
    assert len(lines) == 2 and "firstdist 1.0" in lines[0] + lines[1] and "seconddist 2.0" in lines[0] + lines[1]
    result = quick_run(tmp_path, "optimizer={use='othersgd'}", env=env)
    assert result.returncode == 0, result.stderr
    assert "fakeplug saw the end" in result.stdout and "second saw the end" in result.stdout


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up
def test_hook_implementation_matching_no_spec_makes_the_plugin_broken(tmp_path):
    source = """
        from phasetrain import hookimpl

        @hookimpl
        def post_stepp(trainer):
            pass
    """
    env = fake_distribution(tmp_path / "site", source, name="typoplug")
    listing = run_cli("plugins", env=env)
    assert listing.returncode == 0
    line = next(line for line in listing.stdout.splitlines() if line.startswith("typoplug_ep"))
    assert "BROKEN" in line and "unknown hook 'post_stepp'" in line and "<module" not in line
    assert quick_run(tmp_path, env=env).returncode == 0


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
    twice = load_registry([plugin(Extra(), "a", "one"), plugin(Extra(), "b", "two")])
    with pytest.raises(PluginError, match="offload 'nowhere' is registered twice: by plugin 'a' from one and by plugin 'b' from two"):
        twice.get("offload", "nowhere")
