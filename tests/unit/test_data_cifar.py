"""cifar10 / cifar100 from tiny fake python pickles."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from quantbench.data import open_dataset
from quantbench.data.fakes import fake_pixels, write_cifar10, write_cifar100
from quantbench.errors import QuantbenchError


def test_cifar10_layout_order_and_pixels(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path / "cifar-10-batches-py", per_batch=10)
    for spec in (f"cifar10:{root}", f"cifar10:{tmp_path}"):  # the folder itself or its parent
        ds = open_dataset(spec, normalize="none")
        assert len(ds) == 60 and ds.input_shape == (3, 32, 32)
        assert ds.classes[0] == "airplane" and ds.classes[9] == "truck"
        assert ds.official_split.tolist() == ["train"] * 50 + ["test"] * 10
        assert ds.normalization["name"] == "none"
    first = fake_pixels(10, (3072,), np.arange(10) % 10, seed=0)
    np.testing.assert_array_equal(ds.raw([0])[0].numpy(), first[0].reshape(3, 32, 32))
    assert ds.targets[:10].tolist() == list(range(10))
    assert open_dataset(f"cifar10:{root}").normalization["name"] == "cifar"


def test_cifar100_fine_and_coarse(tmp_path: Path) -> None:
    root = write_cifar100(tmp_path / "cifar-100-python", n_train=40, n_test=20)
    fine = open_dataset(f"cifar100:{tmp_path}")
    coarse = open_dataset(f"cifar100-coarse:{root}")
    assert fine.num_classes == 100 and coarse.num_classes == 20
    assert len(fine) == len(coarse) == 60
    assert fine.targets[:40].tolist() == list(range(40))
    assert coarse.targets[:40].tolist() == [i // 5 for i in range(40)]
    assert coarse.classes[0] == "coarse0"


def test_missing_batch_file_is_named(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path, per_batch=4)
    (root / "data_batch_3").unlink()
    with pytest.raises(QuantbenchError, match="missing CIFAR batch file .*data_batch_3"):
        open_dataset(f"cifar10:{root}")


def test_truncated_batch(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path, per_batch=4)
    path = root / "test_batch"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(QuantbenchError, match="test_batch.* truncated or not a CIFAR python pickle") as info:
        open_dataset(f"cifar10:{root}")
    assert "\n" not in str(info.value)


def test_non_pickle_batch(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path, per_batch=4)
    (root / "data_batch_1").write_text("hello, I am not a pickle")
    with pytest.raises(QuantbenchError, match="data_batch_1"):
        open_dataset(f"cifar10:{root}")


def test_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (print, ("pwned",))

    root = write_cifar10(tmp_path, per_batch=4)
    with (root / "data_batch_2").open("wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f, protocol=2)
    with pytest.raises(QuantbenchError, match=r"data_batch_2.*refusing to load \w+\.print"):
        open_dataset(f"cifar10:{root}")


def test_batch_with_wrong_content(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path, per_batch=4)
    with (root / "data_batch_4").open("wb") as f:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}, f, protocol=2)
    with pytest.raises(QuantbenchError, match="data_batch_4.*expected uint8 N x 3072"):
        open_dataset(f"cifar10:{root}")
    with (root / "data_batch_4").open("wb") as f:
        pickle.dump({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1]}, f, protocol=2)
    with pytest.raises(QuantbenchError, match="data_batch_4.* has 2 labels for 4 images"):
        open_dataset(f"cifar10:{root}")


def test_official_split_suffix(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path / "cifar-10-batches-py", per_batch=10)
    test = open_dataset(f"cifar10:{root}:test", normalize="none")
    train = open_dataset(f"cifar10:{tmp_path}:train", normalize="none")
    assert len(test) == 10 and test.official_split.tolist() == ["test"] * 10
    assert len(train) == 50 and set(train.official_split) == {"train"}
    both = open_dataset(f"cifar10:{root}", normalize="none")
    np.testing.assert_array_equal(test.raw([0])[0].numpy(), both.raw([50])[0].numpy())
    c100 = write_cifar100(tmp_path / "cifar-100-python", n_train=40, n_test=20)
    assert len(open_dataset(f"cifar100:{c100}:test")) == 20
    assert len(open_dataset(f"cifar100-coarse:{c100}:TRAIN")) == 40


def test_official_split_bad_name_and_colon_folders(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path / "cifar-10-batches-py", per_batch=4)
    with pytest.raises(QuantbenchError, match="unknown official split 'tset'.*DIR:test") as info:
        open_dataset(f"cifar10:{root}:tset")
    assert "\n" not in str(info.value)
    odd = write_cifar10(tmp_path / "run:test", per_batch=4)  # a folder whose name ends in ":test" is a folder
    assert len(open_dataset(f"cifar10:{odd}")) == 24
    assert len(open_dataset(f"cifar10:{odd}:test")) == 4
