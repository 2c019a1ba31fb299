"""Architecture lint: flags the patterns that hurt integer kernels, silent on a clean model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantbench.models import build_model
from quantbench.models.lint import format_findings, lint_model


class Clean(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16),
                                nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(16, 32, 1), nn.ReLU(), nn.Dropout2d(0.1))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pw(self.dw(self.stem(x))))


class Custom(nn.Module):  # a leaf the tracer is told not to enter
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


class Bad(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)              # 12 output channels
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))                    # asymmetric separate padding
        self.dw = nn.Conv2d(12, 12, 3, stride=2, groups=12)      # depthwise, 12 channels
        self.act = nn.Hardswish()                                # not fused
        self.pw = nn.Conv2d(12, 16, 1)
        self.bn = nn.BatchNorm2d(16)                             # after a pool: cannot fold
        self.norm = nn.GroupNorm(4, 16)                          # float op
        self.pad2 = nn.ZeroPad2d(1)                              # symmetric: foldable
        self.last = nn.Conv2d(16, 16, 3)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.dw(self.pad(self.stem(x))))
        x = self.bn(F.max_pool2d(self.pw(x), 1))
        x = self.last(self.pad2(self.norm(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _by_rule(findings):
    out = {}
    for f in findings:
        out.setdefault(f.rule, []).append(f)
    return out


def test_clean_model_and_zoo_resnets_are_silent():
    assert lint_model(Clean()) == []
    assert format_findings([]).startswith("no findings")
    for name in ("resnet20", "resnet18", "lenet"):
        assert lint_model(build_model(name)) == [], name


def test_every_known_bad_pattern_is_flagged_with_its_module_and_fix():
    rules = _by_rule(lint_model(Bad()))
    assert {f.module for f in rules["channels-multiple-of-8"]} == {"stem", "dw", "pw"}
    dw = next(f for f in rules["channels-multiple-of-8"] if f.module == "dw")
    assert "depthwise conv" in dw.message and "12 -> 16" in dw.fix
    pads = {f.module: f for f in rules["separate-padding"]}
    assert set(pads) == {"pad", "pad2"}
    assert "asymmetric pads (0, 1, 0, 1)" in pads["pad"].fix
    assert "add padding=(1, 1) to last" in pads["pad2"].fix
    assert [f.module for f in rules["unfused-batchnorm"]] == ["bn"]
    assert [f.module for f in rules["unfused-activation"]] == ["act"] and "h_swish=False" in rules[
        "unfused-activation"][0].fix
    assert [f.module for f in rules["float-op"]] == ["norm"]
    text = format_findings(lint_model(Bad()))
    assert "separate-padding (2):" in text and "fix: " in text and "warnings" in text


def test_custom_leaf_and_untraceable_models():
    class WithLeaf(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.custom = Custom()

        def forward(self, x):
            return self.custom(self.conv(x)).mean((2, 3))

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m, name):
            return isinstance(m, Custom) or super().is_leaf_module(m, name)

    gm = torch.fx.GraphModule(WithLeaf(), Tracer().trace(WithLeaf()))
    assert [(f.rule, f.module) for f in lint_model(gm)] == [("float-op", "custom")]

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                return self.conv(x)
            return x

    (f,) = lint_model(Branchy())
    assert f.rule == "untraceable" and f.severity == "error" and "Branchy" in f.message


def test_phinet_original_is_flagged_and_the_friendly_variant_is_quieter():
    original = _by_rule(lint_model(build_model("phinet")))
    friendly = _by_rule(lint_model(build_model("phinet", divisor=8, pad_layer=False, h_swish=False,
                                               squeeze_excite=False)))
    assert original["separate-padding"] and "separate-padding" not in friendly
    assert len(original["channels-multiple-of-8"]) > len(friendly.get("channels-multiple-of-8", []))
    assert "unfused-activation" in original and "unfused-activation" not in friendly


@pytest.mark.parametrize("name", ["mobilenet_v2"])
def test_other_zoo_models_lint_without_errors(name):
    assert all(f.severity != "error" for f in lint_model(build_model(name)))


def test_lint_cli(capsys):
    import json

    from quantbench.cli import main

    assert main(["lint", "--model", "resnet20"]) == 0
    assert "no findings" in capsys.readouterr().out
    assert main(["lint", "--model", "phinet", "--json"]) == 0
    recs = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"channels-multiple-of-8", "separate-padding"} <= {r["rule"] for r in recs}
    assert main(["lint", "--model", "phinet", "--strict"]) == 1
    capsys.readouterr()
    assert main(["lint", "--model", "phinet", "--hyper", "colour=1"]) == 2
    assert "unknown hyper-parameter 'colour'" in capsys.readouterr().err
    assert main(["lint", "--model", "phinet", "--hyper", "divisor"]) == 2
