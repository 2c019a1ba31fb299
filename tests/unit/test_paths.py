"""Files on disk: identical files stored once as hard links, atomic replacement that never writes through a link."""

from __future__ import annotations

import os

import pytest
import torch

from quantbench.paths import link_identical, torch_save_atomic


def _ino(p):
    return p.stat().st_ino


def test_identical_bytes_are_linked_and_others_are_left_alone(tmp_path):
    a, b, c, d = (tmp_path / n for n in "abcd")
    a.write_bytes(b"x" * 100)
    b.write_bytes(b"x" * 100)
    c.write_bytes(b"x" * 99 + b"y")  # same size, other bytes
    d.write_bytes(b"x" * 50)  # other size
    assert link_identical(b, [d, c, tmp_path / "missing", a]) == a
    assert _ino(a) == _ino(b) and b.read_bytes() == b"x" * 100
    assert link_identical(c, [a, b, d]) is None and _ino(c) not in (_ino(a), _ino(d))
    assert link_identical(b, [a]) is None  # already the same file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c", "d"]  # no temporary left


def test_saving_over_a_linked_file_replaces_it_and_keeps_the_other(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch_save_atomic({"w": torch.ones(3)}, a)
    torch_save_atomic({"w": torch.ones(3)}, b)
    assert link_identical(b, [a]) == a and os.stat(a).st_nlink == 2
    n = torch_save_atomic({"w": torch.zeros(3)}, b)
    assert n == b.stat().st_size and _ino(a) != _ino(b)
    assert torch.equal(torch.load(a, weights_only=True)["w"], torch.ones(3))
    assert torch.equal(torch.load(b, weights_only=True)["w"], torch.zeros(3))


def test_a_save_that_fails_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "m.pt"
    torch_save_atomic({"w": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        torch_save_atomic({"w": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_written_files_get_the_usual_permissions_not_a_temporary_files(tmp_path):
    from quantbench.paths import write_atomic

    mask = os.umask(0o022)
    os.umask(mask)
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    write_atomic(tmp_path / "a.bin", [b"x"])
    torch_save_atomic({"w": torch.ones(1)}, tmp_path / "b.pt")
    for p in ("a.bin", "b.pt"):
        assert (tmp_path / p).stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o666 & ~mask


def test_linking_every_file_of_a_folder_in_any_order_leaves_one_copy(tmp_path):
    files = [tmp_path / f"{i}.pt" for i in range(4)]
    for f in files:
        f.write_bytes(b"model" * 10)
    (tmp_path / "other.pt").write_bytes(b"other" * 10)
    everything = sorted(tmp_path.glob("*.pt"))
    for f in [files[1], files[0], files[3], files[2]]:
        link_identical(f, everything)
    assert len({f.stat().st_ino for f in files}) == 1 and files[0].stat().st_nlink == 4
    assert (tmp_path / "other.pt").stat().st_nlink == 1
