"""Every built-in component meets the phasetrain.testing contracts of its kind.

The kit's own dogfood: parametrized from the registry of phasetrain's own plugins, so a new
built-in is checked the day it is registered, and a new kind fails
``test_every_kind_is_covered_or_skipped_with_a_reason`` until someone decides about it.
"""

from __future__ import annotations

import pytest

from phasetrain.registry import Registry, discover
from phasetrain.testing import ContractViolation, check_component, check_contract, contracts_for, kinds_with_contracts

BUILTINS = Registry(discover(autoload=False))

#: Kinds without contracts, and why. A kind is covered when the kit knows its protocol and a
#: context to build it in.
NOT_COVERED = {
    "task": "a task is the context the other kinds are checked in; no task contract yet",
    "schedule": "no schedule contract yet; the hybrid schedule is exercised by the dynamics context",
    "lr_schedule": "no learning-rate schedule contract yet (they are torch.optim.lr_scheduler objects)",
    "strategy": "strategies are exercised by the multi-process tests (tests/test_distributed.py)",
    "store": "stores are exercised by tests/test_resume.py (atomic writes, corrupt and malicious files)",
}

#: Built-ins that break a contract today, the settings that step around it in the sweep below,
#: and the test that pins the problem (it fails once the problem is fixed: then drop the entry).
KNOWN_ISSUES: dict = {}

COMPONENTS = [(kind, name) for kind in kinds_with_contracts(BUILTINS) for name in BUILTINS.names(kind)]


def test_every_kind_is_covered_or_skipped_with_a_reason():
    covered = set(kinds_with_contracts(BUILTINS))
    assert covered.isdisjoint(NOT_COVERED), "a kind with contracts is still listed as not covered"
    assert set(BUILTINS.kinds) == covered | set(NOT_COVERED), f"decide about kinds {sorted(set(BUILTINS.kinds) - covered - set(NOT_COVERED))}"


@pytest.mark.parametrize("kind", sorted(NOT_COVERED))
def test_kinds_without_contracts(kind):
    assert not contracts_for(kind)
    pytest.skip(f"{kind}: {NOT_COVERED[kind]}")


#: Components whose contracts train a PINN or L-BFGS for seconds: CI checks them, the fast lane one of them.
SLOW = {("residual", n) for n in BUILTINS.names("residual") if n != "heat1d"} | {
    ("optimizer", "lbfgs"), ("sampler", "rad"), ("sampler", "rar-d")}


@pytest.mark.parametrize(("kind", "name"), [
    pytest.param(k, n, id=f"{k}-{n}", marks=[pytest.mark.slow] if (k, n) in SLOW else []) for k, n in COMPONENTS])
def test_builtin_component_meets_its_contracts(kind, name):
    report = check_component(kind, name, **KNOWN_ISSUES.get((kind, name), {}))
    checked = report.names("passed") + report.names("skipped")
    expected = [c.name for c in contracts_for(kind) if c.name not in KNOWN_ISSUES.get((kind, name), {}).get("skip", ())]
    assert sorted(checked) == sorted(expected)  # every contract ran or said why not, none failed


def test_sgd_nesterov_without_momentum_is_a_config_error():
    # Found by the kit: torch.optim.SGD refused it at build time; now the config names the field.
    from phasetrain import config as cfg
    from phasetrain.errors import ConfigError

    with pytest.raises(ConfigError, match="optimizer.nesterov: needs momentum > 0"):
        cfg.build({"task": {"use": "regression"}, "optimizer": {"use": "sgd", "nesterov": True}})


def test_regression_probe_batch_is_full_before_any_training_batch():
    # Found by the kit: batch(-1) (the hybrid probe) was empty until a training batch was drawn,
    # so a run resumed just before Predict diverged from the uninterrupted run.
    check_contract("component.checkpoint_round_trip", "dynamics", "linear", examples=1)


def test_fp16_scales_outside_float32_range_are_config_errors():
    # Found by the kit: a scale that underflows float32 inside GradScaler ended in NaN weights.
    from phasetrain import config as cfg
    from phasetrain.errors import ConfigError

    for key, value in (("init_scale", 1e-300), ("backoff_factor", 1e-260)):
        with pytest.raises(ConfigError, match=f"precision.{key}: must be between"):
            cfg.build({"task": {"use": "regression"}, "precision": {"use": "fp16", key: value}})
