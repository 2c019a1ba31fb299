"""Environment capture (quantbench.measure.environment): complete, cheap, never raises."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from quantbench.measure import environment, git_sha

# The package re-exports the function ``environment``, which shadows the submodule attribute
# (``import quantbench.measure.environment as m`` would give the function): fetch the module.
envmod = sys.modules["quantbench.measure.environment"]

KEYS = {
    "cpu_model", "logical_cores", "cpu_flags", "memory_total_bytes", "os", "system", "machine",
    "python_version", "python_implementation", "torch_threads", "torch_interop_threads",
    "torch_cpu_capability", "packages", "git_sha",
}


def test_environment_keys_and_types() -> None:
    env = environment()
    assert KEYS <= set(env)
    assert env["logical_cores"] == os.cpu_count()
    assert env["python_version"] == ".".join(map(str, sys.version_info[:3]))
    assert set(envmod.CPU_FLAGS) <= set(env["cpu_flags"])
    assert set(env["packages"]) == set(envmod.PACKAGES)
    assert env["packages"]["torch"] is not None and env["packages"]["numpy"] is not None
    import torch

    assert env["torch_threads"] == torch.get_num_threads()
    json.dumps(env)  # storable as is


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="Linux only")
def test_linux_probes_fill_cpu_and_memory() -> None:
    env = environment()
    assert env["memory_total_bytes"] > 100 * 1024 * 1024
    assert all(isinstance(v, bool) for v in env["cpu_flags"].values())
    assert env["cpu_model"]


def test_optional_packages_are_not_imported() -> None:
    heavy = ["ray", "openvino", "nncf", "onnxruntime", "matplotlib"]
    before = {m for m in heavy if m in sys.modules}
    environment()
    assert {m for m in heavy if m in sys.modules} == before


def test_missing_package_reports_none() -> None:
    assert envmod.package_version("surely-not-an-installed-distribution-xyz") is None
    assert envmod.package_version("numpy")


def test_never_raises_when_probes_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_a, **_k):
        raise OSError("no such thing")

    monkeypatch.setattr(envmod, "_cpuinfo", broken)
    monkeypatch.setattr(envmod, "_mem_total_bytes", broken)
    monkeypatch.setattr(envmod.subprocess, "run", broken)
    env = environment()
    assert KEYS <= set(env)
    assert env["cpu_flags"] == {f: None for f in envmod.CPU_FLAGS}
    assert env["memory_total_bytes"] is None
    assert env["git_sha"] is None


def test_git_sha_none_outside_a_checkout(tmp_path) -> None:
    assert git_sha(tmp_path) is None
    assert git_sha(tmp_path / "missing") is None


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_sha_clean_and_dirty(tmp_path) -> None:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", *args],
            cwd=tmp_path, check=True, capture_output=True, text=True,
        ).stdout.strip()

    git("init", "-q")
    (tmp_path / "a.txt").write_text("a")
    git("add", "a.txt")
    git("commit", "-q", "-m", "init")
    head = git("rev-parse", "HEAD")
    assert git_sha(tmp_path) == head
    (tmp_path / "a.txt").write_text("changed")
    assert git_sha(tmp_path) == head + "-dirty"
