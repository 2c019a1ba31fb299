"""Shared test fixtures.

Real data lives in ``../shared`` beside the checkout (CIFAR-10 JPEGs, ResNet20 weights);
tests that need it are marked ``realdata`` and skip, with the reason, when it is absent.
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("QUANTBENCH_SHARED", REPO.parent / "shared"))
CIFAR_DEV = SHARED / "datasets" / "cifar10-jpeg" / "dev"
RESNET20_WEIGHTS = SHARED / "weights" / "resnet20-12fca82f.th"

# Two xdist workers on a 2-core machine: one intra-op thread each keeps them from fighting.
torch.set_num_threads(1)

# `--weight-range auto` follows the CPU (7-bit weight codes on x86 without VNNI), so labels such as
# `w8a8:mse` would read `w8a8:mse-reduced` on some of the machines this suite runs on. The suite
# chooses as on a VNNI CPU everywhere; tests/unit/test_weight_range.py fakes both kinds of CPU to test
# the choice itself. Engines still pick their storage from the real CPU (`real_cpu_flags`), so the
# parity contracts hold on the machine that runs them.
_VNNI_CPUINFO = Path(os.environ.get("TMPDIR", "/tmp")) / f"quantbench-test-cpuinfo-{os.getpid()}"
_VNNI_CPUINFO.write_text("processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512_vnni\n")
os.environ["QUANTBENCH_CPUINFO"] = str(_VNNI_CPUINFO)
atexit.register(_VNNI_CPUINFO.unlink, missing_ok=True)


@pytest.fixture
def shared_dir() -> Path:
    """The ../shared folder, or skip the test with the reason."""
    if not CIFAR_DEV.is_dir() or not RESNET20_WEIGHTS.is_file():
        pytest.skip(f"real data not found at {SHARED} (needs datasets/cifar10-jpeg/dev and weights/)")
    return SHARED


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def absent_engine():
    """An engine registered for one test whose package is never installed (for "not installed" errors)."""
    from quantbench.engines.base import ENGINES, Engine

    class Absent(Engine):
        name = "absent-engine"
        variants = ("fp32",)
        package = "quantbench_no_such_package"

        def load(self, model, variant, *, threads, workdir):  # pragma: no cover - never available
            raise AssertionError

    ENGINES.register("absent-engine", description="test: never installed")(Absent)
    try:
        yield "absent-engine"
    finally:
        ENGINES._items.pop("absent-engine", None)
        ENGINES._meta.pop("absent-engine", None)
