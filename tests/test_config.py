"""Config: strict structuring, errors that name the file and the field, and round trips."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phasetrain import config as cfg
from phasetrain.errors import ConfigError, UnknownComponent

BASE = {"task": {"use": "regression"}}


def build(data=None, overrides=()):
    return cfg.build(data if data is not None else BASE, overrides=overrides, source="exp.toml")


def test_defaults_come_from_the_attrs_classes():
    config = build()
    assert config.run == cfg.RunConfig()
    assert config.optimizer.use == "adam" and config.optimizer.options.lr == 1e-3
    assert config.schedule.use == "single"
    assert config.dynamics is None


def test_wrong_type_names_file_and_dotted_path():
    with pytest.raises(ConfigError) as err:
        build({**BASE, "optimizer": {"use": "adam", "lr": "fast"}})
    assert str(err.value) == "exp.toml: optimizer.lr: expected a float, got a string 'fast'"


def test_unknown_key_is_rejected_with_a_suggestion():
    with pytest.raises(ConfigError) as err:
        build({**BASE, "optimizer": {"use": "adam", "lrr": 0.1}})
    assert "exp.toml: optimizer.lrr: unknown key" in str(err.value)
    assert "did you mean 'lr'?" in str(err.value)


def test_unknown_component_lists_names_and_suggests_the_closest():
    with pytest.raises(ConfigError) as err:
        build({**BASE, "optimizer": {"use": "adamm"}})
    message = str(err.value)
    assert message.startswith("exp.toml: optimizer: unknown optimizer 'adamm'")
    assert "adam, adamw" in message and "did you mean 'adam'?" in message


def test_out_of_range_value_names_the_field():
    with pytest.raises(ConfigError, match=r"exp.toml: run.steps: must be > 0, got 0"):
        build({**BASE, "run": {"steps": 0}})


def test_bool_is_not_an_integer_and_int_is_not_a_string():
    with pytest.raises(ConfigError, match="run.steps: expected an integer"):
        build({**BASE, "run": {"steps": True}})
    with pytest.raises(ConfigError, match="run.out_dir: expected a string"):
        build({**BASE, "run": {"out_dir": 3}})


def test_missing_task_is_an_error():
    with pytest.raises(ConfigError, match="task: is required"):
        cfg.build({}, source="exp.toml")


def test_unknown_section_is_an_error():
    with pytest.raises(ConfigError, match="exp.toml: optimiser: unknown section"):
        build({**BASE, "optimiser": {"use": "adam"}})


def test_set_overrides_parse_toml_and_are_named_in_errors():
    config = build(overrides=["optimizer.lr=0.5", "run.steps=7", "optimizer.betas=[0.8, 0.9]"])
    assert config.optimizer.options.lr == 0.5
    assert config.run.steps == 7
    assert config.optimizer.options.betas == (0.8, 0.9)
    assert build(overrides=["optimizer.use=sgd"]).optimizer.use == "sgd"  # bare word: a string
    with pytest.raises(ConfigError) as err:
        build(overrides=["optimizer.lr=fast"])
    assert str(err.value).startswith("--set optimizer.lr=fast: optimizer.lr: expected a float")


def test_nested_component_choices_are_structured_by_their_own_class():
    data = {
        **BASE,
        "schedule": {
            "use": "staged",
            "stages": [{"name": "a", "steps": 5}, {"name": "b", "optimizer": {"use": "lbfgs", "max_iter": 3}}],
        },
    }
    config = build(data)
    stage = config.schedule.options.stages[1]
    assert stage.optimizer.use == "lbfgs" and stage.optimizer.options.max_iter == 3
    data["schedule"]["stages"][1]["optimizer"]["max_iter"] = "x"
    with pytest.raises(ConfigError, match=r"schedule.stages\[1\].optimizer.max_iter: expected an integer"):
        build(data)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(UnknownComponent, match="unknown preset 'nope'.*regression"):
        cfg.load("nope")


def test_preset_and_toml_output_round_trip():
    config = cfg.load("regression-lbfgs")
    import tomllib

    again = cfg.build(tomllib.loads(cfg.to_toml(config)))
    assert again == config


# -- property: unstructure -> structure is the identity ------------------------------------------

optimizers = st.one_of(
    st.fixed_dictionaries({"use": st.just("adam"), "lr": st.floats(1e-6, 1.0), "amsgrad": st.booleans()}),
    st.floats(0, 0.99).flatmap(lambda momentum: st.fixed_dictionaries({  # nesterov needs momentum
        "use": st.just("sgd"), "lr": st.floats(1e-6, 1.0), "momentum": st.just(momentum),
        "nesterov": st.booleans() if momentum > 0 else st.just(False)})),
    st.fixed_dictionaries({"use": st.just("lbfgs"), "max_iter": st.integers(1, 50), "history_size": st.integers(1, 100)}),
)
runs = st.fixed_dictionaries({
    "steps": st.integers(1, 10**6), "seed": st.integers(0, 2**31), "log_every": st.integers(1, 1000),
    "checkpoint_every": st.integers(0, 1000), "out_dir": st.text(min_size=1, max_size=20),
})
tasks = st.fixed_dictionaries({"use": st.just("regression"), "hidden": st.integers(1, 256),
                               "activation": st.sampled_from(["tanh", "relu", "gelu"])})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(run=runs, task=tasks, optimizer=optimizers, quiet=st.booleans())
def test_config_survives_unstructure_structure(run, task, optimizer, quiet):
    data = {"run": run, "task": task, "optimizer": optimizer, "observers": {"console": {"quiet": quiet}}}
    config = cfg.build(data)
    again = cfg.build(config.to_dict())
    assert again == config
    assert attrs.asdict(again.run) == attrs.asdict(config.run)
    assert again.hash() == config.hash()
