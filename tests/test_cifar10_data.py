"""CIFAR-10 loader: directory lookup, pixel layout, opt-in download, and every damaged file refused by name.

In the style of torchvision's test/datasets_utils.py, small fake files are written in the real on-disk format
(cifar-10-batches-py/ with pickle-protocol-2 dicts) into tmp_path; nothing is downloaded.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from labelflip_models.data import CLASS_NAMES, DATA_DIR_ENV, DATASETS, cifar10, load_dataset
from labelflip_models.errors import DataError, DataNotFound

pytestmark = pytest.mark.filterwarnings("ignore:A test tried to use socket:UserWarning")

# --------------------------------------------------------------------------------------------------
# Fake files in the real format
# --------------------------------------------------------------------------------------------------

NAMES = [n.encode() for n in cifar10.CLASS_NAMES]
PER_BATCH = 20
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
GET_IT = (r"to get it: download cifar-10-python.tar.gz from https://www\.cs\.toronto\.edu/~kriz/cifar\.html "
          r"and extract it into DATA_DIR, or pass `download`")


def to_rows(images: np.ndarray) -> np.ndarray:
    """(n, 32, 32, 3) images to CIFAR's rows: 1024 red values (row-major), then 1024 green, then 1024 blue."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def batch(images: np.ndarray, labels: list[int], label: bytes = b"training batch") -> dict[bytes, Any]:
    return {b"batch_label": label, b"labels": labels, b"data": to_rows(images),
            b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}


def meta(names: list[bytes] = NAMES) -> dict[bytes, Any]:
    return {b"label_names": names, b"num_cases_per_batch": PER_BATCH, b"num_vis": 3072}


def write_pickle(path: Path, obj: Any, protocol: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def fake_split(n: int, seed: int, learnable: bool = False) -> tuple[np.ndarray, list[int]]:
    """n random images and labels; `learnable`: each class a colour of its own under the noise, which a model
    learns in seconds (a gate refuses a model at chance accuracy)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(n) % 10
    if not learnable:
        return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), [int(c) for c in labels]
    colours = np.array([[(c * 7 // 3) % 3 * 100 + 28, c % 3 * 100 + 28, c // 5 * 150 + 50] for c in range(10)])
    noise = rng.integers(-25, 26, (n, 32, 32, 3))
    images = np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return images, [int(c) for c in labels]


def write_cifar(folder: Path, n: int = PER_BATCH, seed: int = 0, skip: tuple[str, ...] = (), learnable: bool = False,
                **files: Any) -> dict[str, Any]:
    """The six batches and batches.meta in `folder`; `files` replaces a file's dict (or bytes, written raw).

    Returns the images and labels that were written, as the loader should return them.
    """
    splits = {name: fake_split(n, seed + i, learnable) for i, name in enumerate([*TRAIN_FILES, "test_batch"])}
    contents: dict[str, Any] = {"batches.meta": meta(), **{name: batch(*split) for name, split in splits.items()}}
    for name, content in {**contents, **files}.items():
        if name in skip:
            continue
        if isinstance(content, bytes):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(content)
        else:
            write_pickle(folder / name, content)
    train = [splits[name] for name in TRAIN_FILES]
    return {"train_images": np.concatenate([images for images, _ in train]),
            "train_labels": np.concatenate([labels for _, labels in train]),
            "test_images": splits["test_batch"][0], "test_labels": np.array(splits["test_batch"][1])}


class Python2Pickler(pickle._Pickler):
    """Pickles as Python 2's cPickle wrote the real files: every str and bytes a Python 2 str (BINSTRING), and
    numpy's _reconstruct under its numpy-1 name numpy.core.multiarray."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: str | bytes) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        short = len(raw) < 256
        self.write((pickle.SHORT_BINSTRING + bytes([len(raw)]) if short
                    else pickle.BINSTRING + struct.pack("<i", len(raw))) + raw)
        self.memoize(obj)

    def save_builtin(self, obj: Any, name: str | None = None) -> None:
        if obj is np.empty(0).__reduce__()[0]:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            self.save_global(obj, name)

    dispatch[str] = dispatch[bytes] = save_py2_str
    dispatch[type(len)] = save_builtin


def python2_pickle(obj: dict[bytes, Any]) -> bytes:
    buf = io.BytesIO()
    Python2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


class RunsCommand:
    """What an attacker plants: unpickling it runs a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (self.command,)


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


def assert_loaded(ds: Any, expected: dict[str, Any]) -> None:
    for key, want in expected.items():
        np.testing.assert_array_equal(getattr(ds, key), want)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int64
    assert ds.test_images.dtype == np.uint8 and ds.test_labels.dtype == np.int64


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------

def test_registered_with_its_class_names_in_label_order():
    assert "cifar-10" in DATASETS
    assert CLASS_NAMES["cifar-10"] == ("airplane", "automobile", "bird", "cat", "deer",
                                       "dog", "frog", "horse", "ship", "truck")


def test_round_trip(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    expected = write_cifar(folder)
    ds = load_dataset("cifar-10", tmp_path)
    assert_loaded(ds, expected)
    assert ds.name == "cifar-10" and ds.class_names == cifar10.CLASS_NAMES and ds.num_classes == 10
    assert ds.source == str(folder) and ds.in_channels == 3
    assert ds.train_images.shape == (5 * PER_BATCH, 32, 32, 3) and ds.test_images.shape == (PER_BATCH, 32, 32, 3)
    assert ds.note == "100 training and 20 test images, not CIFAR-10's 50,000 and 10,000"


def test_full_size_data_has_no_note(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar10, "FULL_SIZES", (5 * PER_BATCH, PER_BATCH))
    write_cifar(tmp_path / "cifar-10-batches-py")
    assert load_dataset("cifar-10", tmp_path).note == ""


def test_pixel_layout_is_red_then_green_then_blue_planes_row_major(tmp_path):
    row, col = 5, 17
    data = np.zeros((PER_BATCH, 3072), dtype=np.uint8)
    data[1, row * 32 + col] = 11  # red plane
    data[1, 1024 + row * 32 + col] = 22  # green plane
    data[1, 2048 + row * 32 + col] = 33  # blue plane
    test = {**batch(np.zeros((PER_BATCH, 32, 32, 3), np.uint8), [0] * PER_BATCH), b"data": data}
    write_cifar(tmp_path / "cifar-10-batches-py", test_batch=test)

    ds = load_dataset("cifar-10", tmp_path)
    assert ds.test_images[1, row, col].tolist() == [11, 22, 33]
    assert int(ds.test_images.sum()) == 11 + 22 + 33
    x, _ = ds.tensors("test")
    assert x.shape == (PER_BATCH, 3, 32, 32)
    assert x[1, :, row, col].tolist() == pytest.approx([11 / 255, 22 / 255, 33 / 255])


@pytest.mark.parametrize("layout", ["cifar-10-batches-py", "cifar-10/cifar-10-batches-py"])
def test_both_directory_layouts(tmp_path, layout):
    expected = write_cifar(tmp_path / layout)
    ds = load_dataset("cifar-10", tmp_path)
    assert_loaded(ds, expected)
    assert ds.source == str(tmp_path / layout)


def test_torchvision_layout_preferred_when_both_exist(tmp_path):
    expected = write_cifar(tmp_path / "cifar-10-batches-py", seed=0)
    write_cifar(tmp_path / "cifar-10" / "cifar-10-batches-py", seed=100)
    assert_loaded(load_dataset("cifar-10", tmp_path), expected)


def test_data_dir_from_environment(tmp_path, monkeypatch):
    expected = write_cifar(tmp_path / "cifar-10-batches-py")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert_loaded(load_dataset("cifar-10"), expected)


def test_explicit_data_dir_wins_over_environment(tmp_path, monkeypatch):
    expected = write_cifar(tmp_path / "mine" / "cifar-10-batches-py")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "elsewhere"))
    assert_loaded(load_dataset("cifar-10", tmp_path / "mine"), expected)


def test_fingerprint_stable_across_loads_and_sensitive_to_one_pixel(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    expected = write_cifar(folder)
    first = load_dataset("cifar-10", tmp_path).fingerprint
    assert re.fullmatch(r"[0-9a-f]{64}", first) and load_dataset("cifar-10", tmp_path).fingerprint == first

    images = expected["test_images"].copy()
    images[3, 31, 31, 2] ^= 1
    write_pickle(folder / "test_batch", batch(images, expected["test_labels"].tolist()))
    assert load_dataset("cifar-10", tmp_path).fingerprint != first


def test_files_as_python2_wrote_them(tmp_path):
    """The real files: Python 2 str for every key and text, numpy 1's module names."""
    folder = tmp_path / "cifar-10-batches-py"
    expected = write_cifar(folder)
    for name in [*TRAIN_FILES, "test_batch", "batches.meta"]:
        content = pickle.loads((folder / name).read_bytes())
        (folder / name).write_bytes(python2_pickle(content))
    assert b"numpy.core.multiarray\n_reconstruct" in (folder / "test_batch").read_bytes()
    assert b"_codecs" not in (folder / "test_batch").read_bytes()
    assert_loaded(load_dataset("cifar-10", tmp_path), expected)


def test_files_resaved_with_str_keys_and_a_newer_protocol(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    expected = write_cifar(folder)
    for name in [*TRAIN_FILES, "test_batch"]:
        content = pickle.loads((folder / name).read_bytes())
        write_pickle(folder / name, {key.decode(): value for key, value in content.items()}, protocol=4)
    write_pickle(folder / "batches.meta", {"label_names": list(cifar10.CLASS_NAMES)}, protocol=4)
    assert_loaded(load_dataset("cifar-10", tmp_path), expected)


# --------------------------------------------------------------------------------------------------
# Missing data and downloads
# --------------------------------------------------------------------------------------------------

def test_missing_data_raises_data_not_found(tmp_path, no_env):
    looked = re.escape(f"{tmp_path}/cifar-10-batches-py, {tmp_path}/cifar-10/cifar-10-batches-py")
    with pytest.raises(DataNotFound, match=rf"^cifar-10 not found \(looked in: {looked}; data dir from `data_dir` "
                                           rf"or \$LABELFLIP_DATA_DIR\); {GET_IT}$"):
        load_dataset("cifar-10", tmp_path)


def test_missing_data_without_any_data_dir(no_env):
    with pytest.raises(DataNotFound, match=r"cifar-10 not found \(looked in: nowhere \(no data dir given\);"):
        load_dataset("cifar-10")


def test_missing_batches_are_listed(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder, skip=("data_batch_4", "test_batch"))
    with pytest.raises(DataNotFound, match=rf"^cifar-10: {re.escape(str(folder))} is incomplete, missing "
                                           rf"data_batch_4, test_batch; {GET_IT}$"):
        load_dataset("cifar-10", tmp_path)


def test_a_batch_that_is_a_directory_counts_as_missing(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder, skip=("data_batch_2",))
    (folder / "data_batch_2").mkdir()
    with pytest.raises(DataNotFound, match=r"is incomplete, missing data_batch_2;"):
        load_dataset("cifar-10", tmp_path)


def test_download_without_data_dir_is_refused(no_env):
    with pytest.raises(DataError, match=r"`download` needs a data dir to download cifar-10 into "
                                        r"\(`data_dir` or \$LABELFLIP_DATA_DIR\)"):
        load_dataset("cifar-10", download=True)


OFFLINE = (r"downloading cifar-10 into .* failed \(.*socket.*\); without network access, download "
           r"cifar-10-python.tar.gz from https://www\.cs\.toronto\.edu/~kriz/cifar\.html and extract it into DATA_DIR$")


def test_a_download_without_network_is_a_clear_error_and_leaves_nothing(tmp_path):
    with pytest.raises(DataError, match=OFFLINE):
        load_dataset("cifar-10", tmp_path, download=True)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_download_removes_the_data_dir_it_created(tmp_path):
    with pytest.raises(DataError, match=OFFLINE):
        load_dataset("cifar-10", tmp_path / "new", download=True)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_download_keeps_what_was_there(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder, skip=("test_batch",))
    before = {p: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(DataError, match=OFFLINE):
        load_dataset("cifar-10", tmp_path, download=True)
    assert {p: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(tmp_path.iterdir()) == [folder]


def test_download_is_not_attempted_when_the_data_is_there(tmp_path):
    expected = write_cifar(tmp_path / "cifar-10-batches-py")  # sockets are blocked: a download attempt would fail
    assert_loaded(load_dataset("cifar-10", tmp_path, download=True), expected)


# --------------------------------------------------------------------------------------------------
# Damaged files: each refused with one DataError line naming the file
# --------------------------------------------------------------------------------------------------

def good_batch(n: int = PER_BATCH, **replace: Any) -> dict[bytes, Any]:
    return {**batch(*fake_split(n, 7)), **replace}


def without(d: dict[bytes, Any], key: bytes) -> dict[bytes, Any]:
    return {k: v for k, v in d.items() if k != key}


TRUNCATED = pickle.dumps(good_batch(), protocol=2)[:-5000]
SWAPPED = [*NAMES[:3], b"dog", b"deer", b"cat", *NAMES[6:]]
DAMAGE = [
    pytest.param("data_batch_3", TRUNCATED, r"data_batch_3: corrupt or truncated pickle \(UnpicklingError: "
                 r"pickle data was truncated\)", id="truncated-batch"),
    pytest.param("test_batch", b"", r"test_batch: corrupt or truncated pickle \(EOFError: ", id="empty-batch"),
    pytest.param("data_batch_1", b"<!DOCTYPE html><html>Rate limit exceeded</html>",
                 r"data_batch_1: corrupt or truncated pickle \(UnpicklingError: invalid load key, '<'\.\)",
                 id="garbage-bytes"),
    pytest.param("data_batch_2", pickle.dumps([1, 2, 3], protocol=2),
                 r"data_batch_2: expected a pickled dict, found list", id="not-a-dict"),
    pytest.param("batches.meta", meta(SWAPPED),
                 r"batches.meta: label_names differ from CIFAR-10's at 3: 'dog' instead of 'cat'; "
                 r"5: 'cat' instead of 'dog' \(not CIFAR-10, or its classes reordered\)", id="meta-wrong-names"),
    pytest.param("batches.meta", meta(NAMES[:9]),
                 r"batches.meta: label_names has 9 names, CIFAR-10 has 10: airplane, automobile, .*, truck$",
                 id="meta-9-names"),
    pytest.param("batches.meta", {b"fine_label_names": NAMES, b"num_vis": 3072},
                 r"batches.meta: missing key 'label_names' \(keys found: 'fine_label_names', 'num_vis'\)",
                 id="meta-missing-key"),
    pytest.param("batches.meta", {b"label_names": b"airplane automobile"},
                 r"batches.meta: label_names must be a list of names, found bytes", id="meta-names-not-a-list"),
    pytest.param("data_batch_5", without(good_batch(), b"data"),
                 r"data_batch_5: missing key 'data' \(keys found: 'batch_label', 'labels', 'filenames'\)",
                 id="missing-data-key"),
    pytest.param("test_batch", without(without(good_batch(), b"labels"), b"data"),
                 r"test_batch: missing key 'data', 'labels' \(keys found: 'batch_label', 'filenames'\)",
                 id="missing-both-keys"),
    pytest.param("data_batch_1", good_batch(data=np.zeros((PER_BATCH, 1024), np.uint8)),
                 r"data_batch_1: data must have shape \(n, 3072\) \(one 3x32x32 image per row\), found \(20, 1024\)",
                 id="data-grayscale-shape"),
    pytest.param("data_batch_1", good_batch(data=np.zeros((PER_BATCH, 32, 32, 3), np.uint8)),
                 r"data_batch_1: data must have shape \(n, 3072\) .*, found \(20, 32, 32, 3\)", id="data-4d"),
    pytest.param("data_batch_1", good_batch(data=np.zeros((PER_BATCH, 3072), np.float32)),
                 r"data_batch_1: data must be uint8 pixels, found dtype float32", id="data-float"),
    pytest.param("data_batch_1", good_batch(data=np.zeros((PER_BATCH, 3072), np.int64)),
                 r"data_batch_1: data must be uint8 pixels, found dtype int64", id="data-int64"),
    pytest.param("data_batch_1", good_batch(data=[[0] * 3072] * PER_BATCH),
                 r"data_batch_1: data must be a numpy uint8 array, found list", id="data-a-list"),
    pytest.param("test_batch", good_batch(labels=[0] * (PER_BATCH - 1) + [10]),
                 r"test_batch: labels must lie in 0..9, found 0..10", id="label-10"),
    pytest.param("test_batch", good_batch(labels=[-1] + [0] * (PER_BATCH - 1)),
                 r"test_batch: labels must lie in 0..9, found -1..0", id="label-negative"),
    pytest.param("test_batch", good_batch(labels=[0.5] * PER_BATCH),
                 r"test_batch: labels must be a flat list of whole numbers 0..9, found float64 values of shape \(20,\)",
                 id="labels-float"),
    pytest.param("test_batch", good_batch(labels=[b"cat"] * PER_BATCH),
                 r"test_batch: labels must be a flat list of whole numbers 0..9, found \|S3", id="labels-bytes"),
    pytest.param("test_batch", good_batch(labels=[[1], [2, 3]] + [0] * (PER_BATCH - 2)),
                 r"test_batch: labels must be a flat list of whole numbers 0..9, found object", id="labels-ragged"),
    pytest.param("test_batch", good_batch(labels=5), r"test_batch: labels must be a list of class numbers, found int",
                 id="labels-not-a-list"),
    pytest.param("data_batch_4", good_batch(labels=[1] * (PER_BATCH - 1)),
                 r"data_batch_4: 20 images but 19 labels", id="label-count-mismatch"),
]


@pytest.mark.parametrize("name, content, message", DAMAGE)
def test_damaged_file_is_refused(tmp_path, name, content, message):
    write_cifar(tmp_path / "cifar-10-batches-py", **{name: content})
    with pytest.raises(DataError, match=message) as raised:
        load_dataset("cifar-10", tmp_path)
    assert type(raised.value) is DataError
    text = str(raised.value)
    assert "\n" not in text and text.startswith(str(tmp_path / "cifar-10-batches-py" / name) + ": ")


def test_the_damage_table_ids_are_unique():
    assert len({p.id for p in DAMAGE}) == len(DAMAGE)


@pytest.mark.parametrize("name", ["batches.meta", "data_batch_1", "test_batch"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, name):
    marker = tmp_path / "pwned"
    planted = good_batch(data=RunsCommand(f"touch {marker}"))
    write_cifar(tmp_path / "cifar-10-batches-py", **{name: planted})
    with pytest.raises(DataError, match=rf"{name}: refuses to unpickle posix\.system: CIFAR-10 batches hold only "
                                        r"dicts, lists, bytes and numpy arrays, and unpickling anything else could "
                                        r"run code$"):
        load_dataset("cifar-10", tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("module, name", [("builtins", "eval"), ("subprocess", "Popen"), ("numpy", "load"),
                                          ("numpy.core.multiarray", "scalar"), ("codecs", "encode")])
def test_only_the_names_real_batches_use_are_found(tmp_path, module, name):
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    write_cifar(path.parent, test_batch=b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R.")
    with pytest.raises(DataError, match=rf"test_batch: refuses to unpickle {re.escape(module)}\.{name}:"):
        load_dataset("cifar-10", tmp_path)


def test_codecs_encode_is_allowed_for_latin1_only(tmp_path):
    # Protocol 2 spells bytes as _codecs.encode(text, "latin1"); any other codec is no CIFAR file's doing.
    write_cifar(tmp_path / "cifar-10-batches-py",
                test_batch=b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00abX\x03\x00\x00\x00hex\x86R.")
    with pytest.raises(DataError, match=r"test_batch: corrupt or truncated pickle \(UnpicklingError: "
                                        r"_codecs.encode with encoding 'hex'\)"):
        load_dataset("cifar-10", tmp_path)
