"""A PTQ method's label names every override, so stored results of different methods never collide."""

from quantbench.quant.ptq import PTQConfig


def test_overrides_change_the_label():
    assert PTQConfig("w8a8", "mse").label() == "w8a8-mse"
    assert PTQConfig("w2a8", "mse", bias_correction=True).label() == "w2a8-mse-bc"
    assert PTQConfig("w4a8", "adaround-bc", bias_correction=False).label() == "w4a8-adaround-bc-nobc"
    assert PTQConfig("w4a8", "mse", equalize=True).label() == "w4a8-mse-cle"
    assert PTQConfig("w4a8", "cle-mse", equalize=True).label() == "w4a8-cle-mse"  # no change, no tag
