"""A PTQ method's label names every override, so stored results of different methods never collide."""

from quantbench.quant.ptq import PTQConfig


def test_overrides_change_the_label():
    assert PTQConfig("w8a8", "mse").label() == "w8a8:mse"
    assert PTQConfig("w2a8", "mse", bias_correction=True).label() == "w2a8:mse-bc"
    assert PTQConfig("w4a8", "adaround-bc", bias_correction=False).label() == "w4a8:adaround-bc-nobc"
    assert PTQConfig("w4a8", "mse", equalize=True).label() == "w4a8:mse-cle"
    assert PTQConfig("w4a8", "cle-mse", equalize=True).label() == "w4a8:cle-mse"  # no change, no tag


def test_every_label_parses_back_to_its_config():
    import pytest

    from quantbench.errors import QuantbenchError
    from quantbench.quant.ptq import parse_method

    for cfg in (PTQConfig("w8a8", "mse"), PTQConfig("w4a8", "adaround-bc", bias_correction=False),
                PTQConfig("w4a4", "cle-adaround", per_channel=False, first_last="int8"),
                PTQConfig("w8a8", "entropy", companding="mulaw"), PTQConfig("dynamic", "mse")):
        again = parse_method(cfg.label())
        assert again.label() == cfg.label()
        assert (again.scheme, again.per_channel, again.first_last, again.companding) == (
            cfg.scheme, cfg.per_channel, cfg.first_last, cfg.companding)
    with pytest.raises(QuantbenchError, match="unknown algorithm"):
        parse_method("w8a8:nosuch")
    with pytest.raises(QuantbenchError, match="option tag"):
        parse_method("w8a8:mse-zz")
