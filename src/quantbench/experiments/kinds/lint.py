"""``lint``: the layers that keep integer kernels slow or in float, each with its fix.

Example:
    >>> from quantbench.experiments.layer import config_for, run_experiment
    >>> run_experiment(config_for("lint", {"model": "resnet20"}), log=lambda m: None).record["findings"]
    []
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quantbench.config import option
from quantbench.experiments.layer import Context, register_kind
from quantbench.experiments.options import ModelOptions


@dataclass(frozen=True)
class LintExperiment(ModelOptions):
    """Lint a model (any source) at its input shape; nothing is trained, stored or measured."""

    strict: bool = option(False, "exit 1 when there is any warning or error")


def lint(cfg: LintExperiment, ctx: Context) -> dict[str, Any]:
    from quantbench.experiments.prepare import prepare_model
    from quantbench.quant.lint import lint_model

    loaded = prepare_model(cfg, in_channels=cfg.input_shape[0] if cfg.input_shape else None, model=ctx.model)
    findings = lint_model(loaded.module, loaded.input_shape)
    return {"model": loaded.label, "input_shape": list(loaded.input_shape) if loaded.input_shape else None,
            "findings": [f.as_dict() for f in findings]}


register_kind("lint", LintExperiment, lint, "layers that make integer kernels slow or keep them in float, with fixes",
              stored=False)
