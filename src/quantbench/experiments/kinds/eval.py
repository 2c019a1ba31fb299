"""``eval``: top-1/top-k (with 95% CIs) of a model on ALL images of a data spec.

Example:
    >>> from quantbench.experiments.layer import config_for, run_experiment
    >>> out = run_experiment(config_for("eval", {"no_store": True}), progress=False, log=lambda m: None)
    >>> out.record["n_images"]
    1797
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quantbench.experiments.layer import Context, register_kind
from quantbench.experiments.options import DataOptions


@dataclass(frozen=True)
class EvalConfig(DataOptions):
    """Evaluate a model as it is (its checkpoint, no training)."""


def evaluate_model(cfg: EvalConfig, ctx: Context) -> dict[str, Any]:
    from quantbench.experiments.prepare import prepare
    from quantbench.experiments.records import accuracy_rows
    from quantbench.measure.accuracy import evaluate

    p = prepare(cfg, ctx)
    ev = evaluate(p.model, p.test, topk=(1, p.topk), batch_size=cfg.eval_batch_size,
                  progress=f"eval {p.loaded.label}" if ctx.progress else False)
    ctx.commit(accuracy_rows(p.key, ev, "all" if p.test is p.ds else "test"))
    record = {"model": p.loaded.label, "checkpoint": cfg.checkpoint, "data": cfg.data, "n_images": ev.n_images,
              "input_shape": list(p.input_shape), "normalization": p.ds.normalization, "notes": p.loaded.notes,
              **ev.as_dict()}
    for k, v in ev.topk.items():
        record[f"top{k}"] = v
    return record


register_kind("eval", EvalConfig, evaluate_model, "top-1/top-k (with 95% CIs) of a model on ALL images of a data spec")
