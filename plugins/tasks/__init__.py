"""Built-in tasks. A task provides ``model``, ``batch(index)``, ``loss(model, batch)`` and
``evaluate(model) -> dict``; batch ``index`` counts micro-batches from the start of the run."""

from __future__ import annotations

from phasetrain import Component, hookimpl


@hookimpl
def phasetrain_components() -> list[Component]:
    from phasetrain.plugins.tasks import lm, regression

    return [
        Component("task", "regression", regression.Regression, regression.RegressionOptions,
                  "small MLP on a synthetic smooth function (seconds)"),
        Component("task", "lm", lm.LanguageModel, lm.LMOptions,
                  "character-level causal transformer on Python standard-library sources"),
    ]
