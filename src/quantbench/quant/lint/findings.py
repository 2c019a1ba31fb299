"""The lint's vocabulary: the rules, their severities, one finding, and the text report.

Why a module of its own: every rule family and the public API speak in :class:`Finding`
objects; keeping the record and the rule catalogue apart from the graph walks lets a caller
(the CLI, the debugger) use findings without importing the rule machinery.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

MULTIPLE = 8

SEVERITIES = ("error", "warning", "info")

RULES: dict[str, str] = {
    "channels-multiple-of-8": "conv/linear channel count not a multiple of 8 (wasted SIMD lanes)",
    "separate-padding": "padding layer feeding a conv instead of the conv's own padding",
    "unfused-bn": "BatchNorm that cannot be folded into a preceding conv/linear",
    "unfused-activation": "activation after a conv/linear that integer kernels do not fuse",
    "unsupported-op": "op that quantbench does not quantize: runs in float between quantized layers",
    "untraceable": "torch.fx cannot trace the model, so it cannot be quantized",
    "no-quantizable-layer": "no nn.Conv2d/nn.Linear layer to quantize",
}


@dataclass(frozen=True)
class Finding:
    """One layer that hurts integer kernels.

    Attributes:
        rule: Rule id (a key of :data:`RULES`).
        severity: ``"error"`` (cannot be quantized), ``"warning"`` (slower than it should be on
            integer engines) or ``"info"`` (engine-dependent).
        module: Qualified module name (``model.get_submodule(module)``); for a functional op,
            the module whose ``forward`` calls it (``"<model>"`` for the root).
        op: What the layer is: a module type (``"ZeroPad2d"``), ``"F.interpolate"``,
            ``"Tensor.div"``...
        message: What is wrong, and why it costs.
        fix: What to change, concretely.
    """

    rule: str
    severity: str
    module: str
    op: str
    message: str
    fix: str

    def as_dict(self) -> dict[str, str]:
        """Plain dict (JSON output)."""
        return asdict(self)


ROOT = "<model>"  # the module name a finding about the root module carries


def format_findings(findings: Iterable[Finding]) -> str:
    """Human-readable report: one entry per finding (module, what is wrong, the fix), then counts."""
    items = list(findings)
    if not items:
        return "no findings: nothing in this model hurts integer kernels"
    lines: list[str] = []
    for f in items:
        lines.append(f"{f.severity}: {f.module} ({f.op}) [{f.rule}]")
        lines.append(f"    {f.message}")
        lines.append(f"    fix: {f.fix}")
    counts = {s: sum(f.severity == s for f in items) for s in SEVERITIES}
    summary = ", ".join(f"{n} {s}{'s' if n != 1 and s != 'info' else ''}" for s, n in counts.items() if n)
    lines.append(f"{len(items)} finding{'s' if len(items) != 1 else ''}: {summary}")
    return "\n".join(lines)
