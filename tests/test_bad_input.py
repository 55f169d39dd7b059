"""Bad input never escapes as a traceback: every case exits 2 with one line naming where and what,
through the real command-line entry point (``phasetrain.cli.main``, in-process)."""

from __future__ import annotations

import json
import string

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phasetrain import cli
from phasetrain import config as config_mod


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()  # a run may set them; they are global to the process
    yield
    torch.set_num_threads(threads)


def run(capsys, *args):
    rc = cli.main(list(args))
    captured = capsys.readouterr()
    return rc, captured.err.strip().splitlines(), captured.out


def refused(capsys, *args):
    """The one line of an exit-2 refusal."""
    rc, err, _out = run(capsys, *args)
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("phasetrain: error: ") and "Traceback" not in err[0], err
    return err[0]


def quick(tmp_path, *extra):
    return ["run", "regression", "--set", "run.steps=2", "--set", "observers.console.quiet=true",
            "--set", f"run.out_dir='{tmp_path / 'run'}'", *[w for e in extra for w in ("--set", e)]]


# ---------------------------------------------------------------------------------------------
# The cases of the fault-injection campaign, and their families
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content, expected", [
    (b"\xff\xfe[task]\nuse = 'regression'\n", "utf-8"),  # not UTF-8
    (bytes(range(256)) * 4, "not valid TOML"),  # binary garbage
    (b"a = " + b"[" * 2000 + b"]" * 2000 + b"\n", "not valid TOML"),  # nested 2,000 deep
    (b"[task]\nuse = 'regression'\nhidden = " + b"[" * 400 + b"]" * 400 + b"\n", "task.hidden"),
])
def test_unreadable_config_files_exit_2_naming_the_file(capsys, tmp_path, content, expected):
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    line = refused(capsys, "run", str(path))
    assert str(path) in line and expected in line


def test_json_nested_too_deeply_to_copy_exits_2(capsys, tmp_path):
    for depth in (600, 3000):  # the first parses, then is too deep to copy; the second does not parse
        path = tmp_path / f"deep{depth}.json"
        path.write_text(json.dumps({"task": {"use": "regression"}}).rstrip("}")
                        + ', "optimizer": {"lr": ' + '{"a": ' * depth + "1" + "}" * depth + "}}")
        assert str(path) in refused(capsys, "config", str(path))


def test_a_config_path_that_is_not_a_regular_file_is_refused_without_reading(capsys, tmp_path):
    import os

    fifo = tmp_path / "config.toml"
    os.mkfifo(fifo)  # reading it would wait for a writer forever
    assert "not a regular file" in refused(capsys, "run", str(fifo))
    assert "not a regular file" in refused(capsys, "run", "/dev/zero")


@pytest.mark.parametrize("override, field", [
    ("run.device='cuda:x'", "run.device"), ("run.device='cuda:-1'", "run.device"), ("run.device='mps'", "run.device"),
    ("run.seed=1000000000000000000000000000000", "run.seed"), ("run.seed=-1", "run.seed"),
    ("run.threads=100000", "run.threads"), ("task.n_eval=1000000000000000000000000000000", "task.n_eval"),
    ("task.depth=9223372036854775807", "task.depth"), ("task.hidden=2147483648", "task.hidden"),
    ("optimizer.lr=inf", "optimizer.lr"), ("optimizer.lr=nan", "optimizer.lr"), ("optimizer.lr=1e39", "optimizer.lr"),
    ("optimizer.eps=inf", "optimizer.eps"), ("optimizer.weight_decay=inf", "optimizer.weight_decay"),
    ("task.noise=inf", "task.noise"), ("strategy.timeout_s=inf", "strategy.timeout_s"),
    ("strategy.timeout_s=1e38", "strategy.timeout_s"), ("strategy={use='fsdp', timeout_s=1e15}", "strategy.timeout_s"),
    ("grad_clip={use='norm', max_norm=inf}", "grad_clip.max_norm"), ("grad_clip={use='norm', norm_type=nan}", "grad_clip.norm_type"),
    ("observers.jsonl.file='/proc/nope/x'", "observers.jsonl.file"), ("observers.jsonl.file='../../x.jsonl'", "observers.jsonl.file"),
    ("observers.jsonl.file='a/../../x.jsonl'", "observers.jsonl.file"), ("observers.jsonl.file=''", "observers.jsonl.file"),
    ("observers.tensorboard={log_dir='../tb'}", "observers.tensorboard.log_dir"),
    ("run=5", "run"), ("optimizer.betas=(0.9,0.95)", "optimizer.betas"), ("optimizer.betas=[0.9]", "optimizer.betas"),
    ("optimizer.betas=0.9", "optimizer.betas"), ("schedule={use='staged', stages=[5]}", "schedule.stages[0]"),
])
def test_out_of_range_and_mistyped_values_name_the_set_and_the_field(capsys, tmp_path, override, field):
    line = refused(capsys, *quick(tmp_path, override))
    assert f"--set {override}: {field}: " in line  # blamed on the --set that caused it, not the preset


def test_messages_say_what_is_expected_in_the_users_terms(capsys, tmp_path):
    assert refused(capsys, *quick(tmp_path, "run=5")).endswith("run: expected a table, got an integer 5")
    assert "expected an array of 2 values, got a list [0.9]" in refused(capsys, *quick(tmp_path, "optimizer.betas=[0.9]"))
    assert "must be finite" in refused(capsys, *quick(tmp_path, "optimizer.lr=inf"))


@pytest.mark.parametrize("out_dir, cause", [
    ("", "must name a directory"), ("/dev/null", "Not a directory"), ("/proc/x", "No such file or directory"),
    ("{file}", "Not a directory"),
])
def test_unusable_out_dirs_exit_2_before_anything_is_written(capsys, tmp_path, monkeypatch, out_dir, cause):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("in the way")
    out_dir = out_dir.format(file=tmp_path / "file")
    line = refused(capsys, *quick(tmp_path, f"run.out_dir='{out_dir}'"))
    assert line.startswith("phasetrain: error: run.out_dir: ") and cause in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing written into the working directory


def test_the_one_allowed_infinity_is_a_norm_type():
    cfg = config_mod.build({"task": {"use": "regression"}, "grad_clip": {"use": "norm", "norm_type": float("inf")}})
    assert cfg.grad_clip.options.norm_type == float("inf")


# ---------------------------------------------------------------------------------------------
# Property: hostile values anywhere, and hostile files, never escape as a traceback
# ---------------------------------------------------------------------------------------------

_RESOLVED = config_mod.load("regression").to_dict()
_LEAVES = sorted(config_mod._flatten(_RESOLVED).items())

#: Values no field of the given type accepts, written as TOML.
_HOSTILE = {
    int: ["inf", "-inf", "nan", "1e39", "1000000000000000000000000000000", "-1000000000000000000000000000000",
          "'text'", "[1, 2]", "{a = 1}", "true", "2.5"],
    float: ["inf", "-inf", "nan", "1e39", "-1e39", "'text'", "[1.0]", "{a = 1}", "true"],
    str: ["1", "2.5", "[1]", "{a = 1}", "true", "inf"],
    bool: ["1", "'yes'", "inf", "[true]"],
    list: ["'text'", "5", "{a = 1}", "inf"],
    tuple: ["'text'", "5", "{a = 1}", "inf", "[]", "[0.9]", "[0.9, 0.9, 0.9]"],
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(leaf=st.sampled_from(_LEAVES), data=st.data())
def test_a_hostile_value_for_any_field_exits_2_with_one_line(capsys, tmp_path, leaf, data):
    key, value = leaf
    if key.endswith(".use") or key == "run.out_dir":
        kind = str  # a name: any other type is refused; a string would be a valid choice or path
    else:
        kind = next(t for t in (bool, int, float, str, list, tuple) if isinstance(value, t))
    hostile = data.draw(st.sampled_from(_HOSTILE[kind]), label="value")
    line = refused(capsys, *quick(tmp_path, f"{key}={hostile}"))
    assert key.split(".")[0] in line


_toml_ish = st.text(alphabet=string.printable + "é\x00\x7f", max_size=200)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(st.binary(max_size=300), _toml_ish.map(str.encode),
                         st.integers(1, 5000).map(lambda n: b"x = " + b"{a=" * n + b"1" + b"}" * n)))
def test_any_file_that_is_not_a_config_exits_2_with_one_line(capsys, tmp_path, content):
    path = tmp_path / "fuzzed.toml"
    path.write_bytes(content)
    assert str(path) in refused(capsys, "run", str(path))
