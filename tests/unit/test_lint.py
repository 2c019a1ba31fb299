"""Architecture lint: flags the patterns that hurt integer kernels, silent on a clean model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.models import build_model
from quantbench.quant import lint as qlint
from quantbench.quant.fold import fold_batchnorm
from quantbench.quant.prepare import prepare
from quantbench.quant.spec import parse_scheme


class QClean(nn.Module):
    """conv-BN-ReLU stages (widths multiples of 8), a residual add, max/avg pooling, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)) + x)
        x = F.relu(self.conv3(self.pool(x)))
        x = self.dw(x).relu()
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.drop(x))


class QBad(nn.Module):
    """One of each known-bad pattern, each on its own named module (comments: the expected rule)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)  # 3 input channels are the image's: fine
        self.stem_act = nn.ReLU()
        self.expand = nn.Conv2d(16, 12, 1)  # channels-multiple-of-8 (out 12)
        self.expand_bn = nn.BatchNorm2d(12)
        self.expand_act = nn.ReLU()
        self.pad = nn.ZeroPad2d(1)  # separate-padding (folds exactly: padding=(1, 1))
        self.dw = nn.Conv2d(12, 12, 3, groups=12)  # channels-multiple-of-8 (depthwise 12)
        self.dw_bn = nn.BatchNorm2d(12)  # folds into dw: fine
        self.dw_act = nn.Hardswish()  # unfused-activation (warning)
        self.project = nn.Conv2d(12, 16, 1)  # in 12 comes from dw, already flagged: not repeated
        self.project_act = nn.ReLU()
        self.late_bn = nn.BatchNorm2d(16)  # unfused-bn (after a ReLU)
        self.norm = nn.GroupNorm(4, 16)  # unsupported-op
        self.up = nn.Upsample(scale_factor=2)  # unsupported-op
        self.head_conv = nn.Conv2d(16, 16, 3, padding=1)
        self.head_act = nn.ReLU6()  # unfused-activation (info: fused on ONNX Runtime only)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)  # 10 outputs are the classes: fine
        self.softmax = nn.Softmax(dim=1)  # after the logits: float by design, not reported

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem(x))
        x = self.expand_act(self.expand_bn(self.expand(x)))
        x = self.dw_act(self.dw_bn(self.dw(self.pad(x))))
        x = self.late_bn(self.project_act(self.project(x)))
        x = self.up(self.norm(x))
        x = self.head_act(self.head_conv(x))
        return self.softmax(self.fc(torch.flatten(self.avgpool(x), 1)))


QBAD_EXPECTED = {
    ("channels-multiple-of-8", "expand", "warning"),
    ("separate-padding", "pad", "warning"),
    ("channels-multiple-of-8", "dw", "warning"),
    ("unfused-activation", "dw_act", "warning"),
    ("unfused-bn", "late_bn", "warning"),
    ("unsupported-op", "norm", "warning"),
    ("unsupported-op", "up", "warning"),
    ("unfused-activation", "head_act", "info"),
}


def test_bad_model_flags_each_pattern_on_its_module() -> None:
    findings = qlint.lint_model(QBad(), (3, 8, 8))
    assert qkeys(findings) == QBAD_EXPECTED
    assert all(f.rule in qlint.RULES and f.message and f.fix for f in findings)
    assert "set out_channels to 16" in qby_module(findings, "expand").fix
    assert "depthwise" in qby_module(findings, "dw").message
    assert "remove pad and set dw = Conv2d(..., padding=(1, 1))" in qby_module(findings, "pad").fix
    # The pad also keeps the conv in front of it from writing integer output.
    assert "expand in front of it" in qby_module(findings, "pad").message
    assert "nn.ReLU()" in qby_module(findings, "dw_act").fix
    assert "torch-int8" in qby_module(findings, "head_act").message


def test_unfused_bn_agrees_with_fold_batchnorm() -> None:
    """The BN the lint flags is exactly the one BN folding leaves in the graph."""
    gm = fold_batchnorm(QBad())
    left = {n.target for n in gm.graph.nodes if n.op == "call_module" and "bn" in str(n.target)}
    assert left == {"late_bn"}


def test_clean_model_is_silent() -> None:
    assert qlint.lint_model(QClean(), (3, 16, 16)) == []
    assert qlint.lint_model(QClean()) == []  # without a shape too
    assert qlint.format_findings([]).startswith("no findings")


def test_resnet20_is_clean() -> None:
    # The option-A shortcut (PadShortcut) zero-pads *channels* with F.pad for the residual add:
    # there is no conv to fold it into, prepare() treats zero padding as free and quantizes the
    # add's inputs, so it is deliberately not a finding.
    assert qlint.lint_model(build_model("resnet20"), (3, 32, 32)) == []


def test_phinet_bad_config_flags_padding_and_channels() -> None:
    findings = qlint.lint_model(build_model("phinet", divisor=1, pad_layer=True), (3, 32, 32))
    rules = {f.rule for f in findings}
    assert {"separate-padding", "channels-multiple-of-8", "unfused-activation"} <= rules
    pads = {f.module: f for f in findings if f.rule == "separate-padding"}
    # The stem pad works on the float image (info); the block pads sit between quantized layers.
    assert pads["_layers.0"].severity == "info"
    block_pad = pads["_layers.3._layers.3"]
    assert block_pad.severity == "warning" and block_pad.op == "ZeroPad2d"
    assert "asymmetric" in block_pad.message
    assert "set _layers.3._layers.5 = Conv2d(..., padding=(1, 1))" in block_pad.fix
    channels = {f.module for f in findings if f.rule == "channels-multiple-of-8"}
    assert "_layers.2._layers.4" in channels  # the 24->12 projection of the first block


def test_phinet_good_config_is_quieter() -> None:
    bad = qlint.lint_model(build_model("phinet", divisor=1, pad_layer=True), (3, 32, 32))
    good = qlint.lint_model(build_model("phinet", divisor=8, pad_layer=False), (3, 32, 32))
    assert len(good) < len(bad)
    assert not {"separate-padding", "channels-multiple-of-8"} & {f.rule for f in good}
    # Hardswish and the squeeze-excite Sigmoid gate remain: integer kernels fuse neither.
    assert {f.op for f in good} == {"Hardswish", "Sigmoid"}
    gate = next(f for f in good if f.op == "Sigmoid")
    assert "no ReLU replacement" in gate.fix
    # The "compatibility" network (ReLU6, no SE) leaves only engine-dependent infos.
    compat = build_model("phinet", divisor=8, pad_layer=False, h_swish=False, squeeze_excite=False)
    findings = qlint.lint_model(compat, (3, 32, 32))
    assert findings and {(f.rule, f.severity, f.op) for f in findings} == {("unfused-activation", "info", "ReLU6")}


def test_mobilenet_v2_only_relu6_infos() -> None:
    model = build_model("mobilenet_v2", num_classes=10, width_mult=0.35)
    findings = qlint.lint_model(model, (3, 32, 32))
    assert findings and {(f.rule, f.severity, f.op) for f in findings} == {("unfused-activation", "info", "ReLU6")}


class QAsymPad(nn.Module):
    """TensorFlow-"same" padding before a stride-2 conv, fed by a conv (not by the input)."""

    def __init__(self, pad: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.pad = pad
        self.down = nn.Conv2d(8, 8, 3, stride=2)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.down(self.pad(self.relu(self.conv(x)))))
        return self.fc(x.mean((2, 3)))


def test_asymmetric_pad_says_it_cannot_fold_exactly() -> None:
    (f,) = qlint.lint_model(QAsymPad(nn.ZeroPad2d((0, 1, 0, 1))), (3, 8, 8))
    assert (f.rule, f.module, f.severity) == ("separate-padding", "pad", "warning")
    assert "asymmetric" in f.message and "symmetric padding only" in f.message
    assert "set down = Conv2d(..., padding=(1, 1))" in f.fix
    assert "same 4-pixel output for this 8-pixel input" in f.fix and "fine-tune" in f.fix


def test_nonzero_pad_cannot_fold() -> None:
    (f,) = qlint.lint_model(QAsymPad(nn.ConstantPad2d(1, 0.5)), (3, 8, 8))
    assert f.rule == "separate-padding" and "value 0.5" in f.message and "cannot be folded" in f.message
    (f,) = qlint.lint_model(QAsymPad(nn.ReflectionPad2d(1)), (3, 8, 8))
    assert f.rule == "separate-padding" and "reflect padding" in f.message


def test_functional_pad_names_the_calling_module() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.conv(F.pad(x, (1, 1, 1, 1))))

    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), Block(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    (f,) = qlint.lint_model(model, (3, 8, 8))
    assert (f.rule, f.module, f.op) == ("separate-padding", "2", "F.pad")
    assert "padding=(1, 1)" in f.fix


def test_bn_whose_conv_output_is_shared_is_flagged() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.fc((F.relu(self.bn(y)) + y).mean((2, 3)))

    (f,) = qlint.lint_model(Shared(), (3, 8, 8))
    assert (f.rule, f.module) == ("unfused-bn", "bn")
    assert "also used by" in f.message


def test_hidden_and_grouped_widths() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3),
        nn.ReLU(),
        nn.Conv2d(16, 24, 3, groups=2),  # 8 in / 12 out per group
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(24, 20),  # hidden width 20
        nn.ReLU(),
        nn.Linear(20, 10),  # classes
    )
    findings = qlint.lint_model(model, (3, 8, 8))
    assert qkeys(findings) == {("channels-multiple-of-8", "2", "warning"), ("channels-multiple-of-8", "6", "warning")}
    assert "per group" in qby_module(findings, "2").message
    assert "set out_features to 24" in qby_module(findings, "6").fix


def test_layers_prepare_does_not_quantize() -> None:
    class MyConv(nn.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(3, 16, 3, padding=1)
            self.c2 = MyConv(16, 16, 3, padding=1)
            self.c3 = nn.Conv1d(16, 16, 1)
            self.fc = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.relu(self.c2(F.relu(self.c1(x))))
            x = self.c3(x.mean(3)).relu()
            x = F.interpolate(x, scale_factor=2) / 2
            return self.fc(x.mean(2))

    findings = qlint.lint_model(Net(), (3, 8, 8))
    assert {(f.rule, f.module, f.op) for f in findings} == {
        ("unsupported-op", "c2", "F.conv2d"),  # a Conv2d subclass is traced through
        ("unsupported-op", "c3", "Conv1d"),
        ("unsupported-op", "<model>", "F.interpolate"),
        ("unsupported-op", "<model>", "operator.truediv"),
    }
    assert "plain nn.Conv2d" in qby_module([f for f in findings if f.op == "F.conv2d"], "c2").fix
    div = next(f for f in findings if f.op == "operator.truediv")
    assert "dequantize/quantize pair" in div.fix and "reciprocal" in div.fix


def test_ops_after_the_last_layer_are_not_reported() -> None:
    # A segmentation-style head: conv -> sigmoid -> output. prepare() keeps the output float.
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 1, 1), nn.Sigmoid())
    assert qlint.lint_model(model, (3, 8, 8)) == []


class QGate(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(16, 12, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) if x.mean() > 0 else self.conv(-x)


class QUntraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.act = nn.SiLU()
        self.gate = QGate()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flat(self.pool(self.gate(self.act(self.stem(x))))))


def test_untraceable_model_gives_an_error_finding_then_best_effort_rules() -> None:
    # Documented choice: no exception; an "untraceable" error finding first, naming the innermost
    # module whose forward fails, then the other rules over the leaf modules in registration order.
    model = QUntraceable()
    with pytest.raises(QuantbenchError, match="gate"):
        prepare(model, parse_scheme("w8a8"))  # what the finding warns about
    findings = qlint.lint_model(model, (3, 8, 8))
    head = findings[0]
    assert (head.rule, head.module, head.severity, head.op) == ("untraceable", "gate", "error", "QGate")
    assert "cannot be traced" in head.message and "traceable" in head.fix
    assert qkeys(findings[1:]) == {
        ("unfused-activation", "act", "warning"),
        ("channels-multiple-of-8", "gate.conv", "warning"),
    }


def test_no_quantizable_layer_is_an_error() -> None:
    (f,) = qlint.lint_model(nn.Sequential(nn.ReLU()), (3, 4, 4))
    assert (f.rule, f.severity) == ("no-quantizable-layer", "error")


def test_bad_input_shape_is_a_user_error() -> None:
    with pytest.raises(QuantbenchError, match="input_shape"):
        qlint.lint_model(QClean(), (3, 16))
    with pytest.raises(QuantbenchError, match=r"input_shape \(1, 16, 16\)"):
        qlint.lint_model(QClean(), (1, 16, 16))


def test_model_is_not_modified() -> None:
    model = QBad().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qlint.lint_model(model, (3, 8, 8))
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_format_findings_lists_modules_and_fixes() -> None:
    findings = qlint.lint_model(QBad(), (3, 8, 8))
    text = qlint.format_findings(findings)
    for f in findings:
        assert f"{f.severity}: {f.module} ({f.op}) [{f.rule}]" in text
        assert f"fix: {f.fix}" in text
    assert text.splitlines()[-1] == "8 findings: 7 warnings, 1 info"
    assert findings[0].as_dict()["module"] == findings[0].module


def test_lint_cli(capsys):
    import json

    from quantbench.cli import main

    assert main(["lint", "--model", "resnet20"]) == 0
    assert "no findings" in capsys.readouterr().out
    assert main(["lint", "--model", "phinet", "--json"]) == 0
    recs = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["findings"]
    assert {"channels-multiple-of-8", "separate-padding"} <= {r["rule"] for r in recs}
    assert main(["lint", "--model", "phinet", "--strict"]) == 1
    capsys.readouterr()
    assert main(["lint", "--model", "phinet", "--hyper", "colour=1"]) == 2
    assert "unknown hyper-parameter 'colour'" in capsys.readouterr().err
    assert main(["lint", "--model", "phinet", "--hyper", "divisor"]) == 2


# ----------------------------------------------------------------------------- quantbench.quant.lint
# The graph-level linter (rules checked against prepare()'s quantizer placement, BN folding and the
# torch-int8 / ONNX Runtime engines); tiny models, each rule asserted on the module it must name.


def qkeys(findings: list[qlint.Finding]) -> set[tuple[str, str, str]]:
    return {(f.rule, f.module, f.severity) for f in findings}


def qby_module(findings: list[qlint.Finding], module: str) -> qlint.Finding:
    (found,) = [f for f in findings if f.module == module]
    return found
