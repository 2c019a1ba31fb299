"""Model zoo: exact parameter counts, torchvision key layout, build_model/model_info errors."""

from __future__ import annotations

import pytest
import torch

from quantbench.errors import QuantbenchError
from quantbench.models import MODELS, build_model, model_info


def n_params(name: str, **kwargs) -> int:
    # Meta device: structure only, no memory or init time (VGG16 would be 0.5 GB).
    with torch.device("meta"):
        model = build_model(name, **kwargs)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("resnet18", {}, 11_689_512),
        ("resnet34", {}, 21_797_672),
        ("resnet50", {}, 25_557_032),
        ("resnet101", {}, 44_549_160),
        ("vgg16", {}, 138_357_544),
        ("vgg16", {"num_classes": 10}, 134_301_514),  # the published CIFAR-10 PTQ study's VGG16
        ("vgg16_cifar", {}, 33_646_666),
        ("vgg11", {}, 132_863_336),
        ("vgg16_bn", {}, 138_365_992),
        ("mobilenet_v2", {}, 3_504_872),
        ("resnet20", {}, 269_722),
        ("resnet32", {}, 464_154),
        ("resnet44", {}, 658_586),
        ("resnet56", {}, 853_018),  # option-A shortcuts; 855,770 would be option B (1x1 conv)
        ("lenet", {}, 24_058),
    ],
)
def test_parameter_counts(name: str, kwargs: dict, expected: int) -> None:
    assert n_params(name, **kwargs) == expected


def test_mobilenet_width_mult_scales_params() -> None:
    assert (
        n_params("mobilenet_v2", width_mult=0.5)
        < n_params("mobilenet_v2")
        < n_params("mobilenet_v2", width_mult=1.4)
    )


def test_vgg_cifar_bn_flag() -> None:
    with torch.device("meta"):
        with_bn = build_model("vgg16_cifar")
        without = build_model("vgg16_cifar", bn=False)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in with_bn.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in without.modules())


@pytest.mark.parametrize(
    ("name", "n_keys", "keys"),
    [
        ("resnet18", 122, ["conv1.weight", "bn1.running_mean", "layer2.0.downsample.0.weight", "fc.bias"]),
        ("resnet50", 320, ["layer1.0.conv3.weight", "layer1.0.downsample.1.running_var", "fc.weight"]),
        ("vgg16", 32, ["features.0.weight", "features.28.bias", "classifier.0.weight", "classifier.6.bias"]),
        ("vgg16_bn", 97, ["features.1.running_mean", "features.40.weight", "classifier.6.weight"]),
        (
            "mobilenet_v2",
            314,
            [
                "features.0.0.weight",
                "features.1.conv.0.0.weight",
                "features.2.conv.3.bias",
                "features.18.1.running_var",
                "classifier.1.weight",
            ],
        ),
    ],
)
def test_torchvision_state_dict_layout(name: str, n_keys: int, keys: list[str]) -> None:
    """Same key count and names as torchvision, so its checkpoints load unchanged."""
    with torch.device("meta"):
        sd = build_model(name).state_dict()
    assert len(sd) == n_keys
    assert set(keys) <= set(sd)


def test_build_model_unknown_hyper_parameter_names_it_and_lists_accepted() -> None:
    with pytest.raises(QuantbenchError) as err:
        build_model("phinet", alpah=1.0)
    msg = str(err.value)
    assert "'alpah'" in msg and "alpha=0.5" in msg and "num_layers=7" in msg and "\n" not in msg


def test_build_model_rejects_hyper_for_model_without_any() -> None:
    with pytest.raises(QuantbenchError, match=r"resnet20.*'width_mult'.*accepted: none"):
        build_model("resnet20", width_mult=2.0)


def test_build_model_unknown_name() -> None:
    with pytest.raises(QuantbenchError, match="resnet21"):
        build_model("resnet21")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": "big"}, r"alpha='big'; expected a number"),
        ({"squeeze_excite": 1}, r"squeeze_excite=1; expected true or false"),
        ({"num_layers": 7.5}, r"num_layers=7.5; expected an integer"),
        ({"num_classes": 0}, r"num_classes=0; expected a positive integer"),
        ({"alpha": -1.0}, r"alpha=-1.0; expected a number > 0"),
    ],
)
def test_build_model_bad_values(kwargs: dict, match: str) -> None:
    with pytest.raises(QuantbenchError, match=match):
        build_model("phinet", **kwargs)


def test_build_model_coerces_yaml_friendly_values() -> None:
    # YAML gives ints for floats and lists for tuples; both are accepted.
    model = build_model("phinet", alpha=1, downsampling_layers=[5])
    assert isinstance(model, torch.nn.Module)


def test_model_info() -> None:
    info = model_info("resnet20")
    assert info["input_shape"] == (3, 32, 32)
    assert info["num_classes"] == 10 and info["in_channels"] == 3
    assert info["family"] == "cifar-resnet" and info["hyper"] == {}
    assert model_info("mobilenet_v2")["hyper"] == {"width_mult": 1.0, "dropout": 0.2}
    assert model_info("lenet")["input_shape"] == (1, 8, 8)


def test_registry_holds_the_zoo() -> None:
    expected = {"resnet20", "resnet32", "resnet44", "resnet56", "resnet18", "resnet34", "resnet50",
                "resnet101", "vgg11", "vgg16", "vgg11_bn", "vgg16_bn", "vgg11_cifar", "vgg16_cifar",
                "mobilenet_v2", "phinet", "lenet"}  # fmt: skip
    assert expected <= set(MODELS.names())


@pytest.mark.parametrize("size", [8, 9, 16, 28])
def test_lenet_any_input_size_and_channels(size: int) -> None:
    model = build_model("lenet", in_channels=3, num_classes=4).eval()
    assert model(torch.randn(2, 3, size, size)).shape == (2, 4)
