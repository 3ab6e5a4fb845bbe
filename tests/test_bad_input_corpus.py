"""One corpus of bad inputs, each refused the same clean way.

For every case `labelflip_models.cli.run` raises the exact error class with a message that says what is wrong,
`cli.main` turns it into exit status 2 and one `labelflip: error:` line (argparse's usage errors: its own usage
message) without a traceback, and nothing is left behind in the working directory or the model cache.

No case gets as far as training a reference model: a case that passes argument validation brings its own --model.
The second group damages committed baseline files, which the pytest gate (not the CLI) reads.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from labelflip_models import cli
from labelflip_models.data.cifar10 import FILES as CIFAR_FILES
from labelflip_models.errors import BaselineError, ConfigError, DataError, DataNotFound
from labelflip_models.gate.baselines import check_same_model, load_baseline
from labelflip_models.gate.config import REFERENCE_BASELINES
from labelflip_models.gate.profiles import Case

from .helpers import run_cli
from .test_cifar10_data import NAMES, TRUNCATED, RunsCommand, good_batch, meta, write_cifar
from .test_data import IDX_STEMS, fake_arrays, idx_bytes, write_file

# TorchScript is deprecated upstream but still the portable format users have; its warnings are noise here.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")

Setup = Callable[[Path], list[str]]
# Read-only to everyone, root included: the kernel refuses new files under /proc.
UNWRITABLE = "/proc/labelflip/out"
NOT_WRITABLE = rf"output directory {UNWRITABLE} is not writable: creating a file in /proc failed"


# --------------------------------------------------------------------------------------------------
# Builders: argv, model files, IDX data dirs, run dirs
# --------------------------------------------------------------------------------------------------

def attack_argv(*extra: str, dataset: str = "mnist-5k", attack: str = "fgsm", epsilon: str | None = "0.1",
                limit: str = "20", out: str = "out") -> list[str]:
    argv = ["attack", "--dataset", dataset, "--attack", attack, "--limit", limit, "--out", out]
    return argv + (["--epsilon", epsilon] if epsilon is not None else []) + list(extra)


def argv_only(argv: list[str]) -> Setup:
    """A case that needs no input files."""
    return lambda tmp: argv


class TinyNet(nn.Module):
    """Linear logits of flattened 28x28 images; `poison` is added to every logit (NaN/inf make them non-finite)."""

    def __init__(self, outputs: int = 10, poison: float = 0.0, pixels: int = 28 * 28) -> None:
        super().__init__()
        self.fc = nn.Linear(pixels, outputs)
        self.poison = poison

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)) + self.poison


def torchscript_file(tmp: Path, name: str = "model.pt", **kw: Any) -> str:
    with torch.random.fork_rng(devices=[]):  # seeded weights, without reseeding the tests that run after
        torch.manual_seed(0)
        torch.jit.save(torch.jit.script(TinyNet(**kw).eval()), tmp / name)
    return name


def mlp() -> nn.Sequential:
    """An architecture labelflip does not know: its state dict fits no entry of models.ARCHITECTURES."""
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


def model_case(*extra: str, epsilon: str = "0.1", **model: Any) -> Setup:
    """attack on mnist-5k with a TorchScript --model built from TinyNet(**model)."""
    return lambda tmp: attack_argv("--model", torchscript_file(tmp, **model), *extra, epsilon=epsilon)


def saved_case(obj: Callable[[], Any], *extra: str) -> Setup:
    """attack on mnist-5k with a torch.save'd --model (a whole module or a state dict)."""
    def setup(tmp: Path) -> list[str]:
        torch.save(obj(), tmp / "model.pth")
        return attack_argv("--model", "model.pth", *extra)
    return setup


def raw_model_case(content: bytes) -> Setup:
    def setup(tmp: Path) -> list[str]:
        (tmp / "model.pt").write_bytes(content)
        return attack_argv("--model", "model.pt")
    return setup


def idx_case(arrays: dict[str, np.ndarray] | None = None, skip: str | None = None, **raw: bytes) -> Setup:
    """attack on a fashion-mnist --data-dir in the real layout (DATA_DIR/fashion-mnist/<IDX stems>).

    `arrays` replaces fake_arrays() entries, `raw` replaces a file's bytes outright (gzip data gets the .gz name),
    `skip` leaves a file out. A working --model comes along, so a dataset that loaded would be attacked, never a
    reference model trained.
    """
    def setup(tmp: Path) -> list[str]:
        data = {**fake_arrays(), **(arrays or {})}
        for key, stem in IDX_STEMS.items():
            content = raw.get(key, idx_bytes(data[key]))
            name = stem + ".gz" if content.startswith(GZIP_MAGIC) else stem
            if key != skip:
                write_file(tmp / "data" / "fashion-mnist" / name, content)
        return attack_argv("--data-dir", "data", "--model", torchscript_file(tmp), dataset="fashion-mnist")
    return setup


def cifar_case(skip: tuple[str, ...] = (), **files: Any) -> Setup:
    """attack on a cifar-10 --data-dir in the real layout (DATA_DIR/cifar-10-batches-py/), `files` replacing a file's
    pickled dict (or bytes), `skip` leaving files out; with a working 32x32x3 --model, as idx_case."""
    def setup(tmp: Path) -> list[str]:
        write_cifar(tmp / "data" / "cifar-10-batches-py", skip=skip, **files)
        model = torchscript_file(tmp, pixels=3 * 32 * 32)
        return attack_argv("--data-dir", "data", "--model", model, dataset="cifar-10", epsilon="0.03")
    return setup


def planted_pickle(tmp: Path) -> list[str]:
    """A cifar-10 batch that would run a shell command when unpickled: it must be refused, the marker never made."""
    return cifar_case(data_batch_2=good_batch(data=RunsCommand(f"touch {tmp / 'pwned'}")))(tmp)


def idx_images(dtype: type = np.uint8, shape: tuple[int, ...] = (6, 28, 28)) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 100, shape).astype(dtype)


def with_file(name: str, content: str, argv: list[str]) -> Setup:
    def setup(tmp: Path) -> list[str]:
        write_file(tmp / name, content.encode())
        return argv
    return setup


def with_dir(name: str, argv: list[str]) -> Setup:
    def setup(tmp: Path) -> list[str]:
        (tmp / name).mkdir(parents=True)
        return argv
    return setup


def case(setup: Setup, error: type[BaseException], message: str, id: str) -> Any:
    return pytest.param(setup, error, message, id=id)


NOISE = ["noise", "--dataset", "mnist-5k", "--out", "out"]


def own_data(files: dict[str, bytes | np.ndarray | None], *extra: str, classes: int = 2) -> Setup:
    """A user's test set under data/ (an image file from an array, raw bytes, or None: an empty folder) and a
    `classes`-way model for it; the argv attacks it."""
    def setup(tmp: Path) -> list[str]:
        from PIL import Image

        from .own_data import generated, save_model

        for name, content in files.items():
            path = tmp / "data" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if content is None:
                path.mkdir()
            elif isinstance(content, bytes):
                path.write_bytes(content)
            else:
                Image.fromarray(content).save(path)
        save_model(generated(classes, 1)[0], tmp / "model.pt")
        dataset = "data/set.npz" if (tmp / "data" / "set.npz").exists() else "data"
        return attack_argv("--model", "model.pt", *extra, dataset=dataset)
    return setup


def npz_bytes(**arrays: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


RGB = np.full((8, 8, 3), 128, dtype=np.uint8)
GOOD_PNG = {"a/1.png": RGB, "b/1.png": RGB}
OWN_DATA_CASES = [
    case(own_data({**GOOD_PNG, "b/2.png": b"\x89PNG\r\n\x1a\n\x00\x00"}), DataError,
         r"cannot read image data/b/2.png", "own-truncated-image"),
    case(own_data({**GOOD_PNG, "b/2.jpg": b"just text"}), DataError, r"cannot read image data/b/2.jpg: cannot identify",
         "own-not-an-image"),
    case(own_data({**GOOD_PNG, "c": None}, classes=3), DataError, r"class folder data/c holds no images",
         "own-empty-class"),
    case(own_data({"a/1.png": RGB}), DataError, r"data: 1 class \('a'\); a flip needs at least 2 classes",
         "own-single-class"),
    case(own_data({"set.npz": npz_bytes(x=np.zeros((2, 8, 8, 3), np.uint8), y=np.array([0, 5]),
                                        class_names=np.array(["a", "b"]))}), DataError,
         r"data/set.npz: labels must lie in 0..1 \(one per class name\), found 0..5", "own-label-out-of-range"),
    case(own_data({**GOOD_PNG, "c/1.png": RGB}), ConfigError,
         r"model outputs 2 classes, but the dataset has 3", "own-classes-differ-from-model"),
    case(own_data({"set.npz": npz_bytes(x=np.zeros((2, 8, 8, 3), np.uint8), y=np.array([0, 1]),
                                        class_names=np.array(["a", "a"]))}), DataError,
         r"data/set.npz: duplicate class names: 'a'", "own-duplicate-names"),
    case(own_data({**GOOD_PNG, "b/2.png": np.zeros((9, 8, 3), np.uint8)}), DataError,
         r"images differ in size: most are 8x8 \(2 files\), but 9x8: data/b/2.png; declare --resize and/or "
         r"--center-crop", "own-mixed-sizes"),
    case(own_data(GOOD_PNG, "--class-names", "a,x"), DataError,
         r"--class-names and the classes of data differ: names without data: 'x'; data without a name: 'b'",
         "own-class-names-differ"),
    case(own_data({"set.npz": npz_bytes(x=np.zeros((2, 8, 8, 3), np.uint8))}), DataError,
         r"data/set.npz: a .npz dataset needs arrays x, y; missing y", "own-npz-without-labels"),
    case(own_data({"set.npz": npz_bytes(x=np.array([{"a": 1}, {}], dtype=object), y=np.array([0, 1]))}), DataError,
         r"data/set.npz: `x` holds Python objects \(a pickled array\); labelflip reads only numeric arrays",
         "own-npz-pickled"),
    case(own_data(GOOD_PNG, "--resize", "0"), ConfigError, r"--resize must be a positive number of pixels, got 0",
         "own-resize-zero"),
    case(argv_only(attack_argv("--model", "m.pt", dataset="photos/")), ConfigError,
         r"--dataset: unknown dataset 'photos/': neither a built-in dataset", "own-missing-path"),
]
GZIP_MAGIC = b"\x1f\x8b"
HTML_PAGE = b"<!DOCTYPE html><html><body>Rate limit exceeded</body></html>"

# (setup, exact error class, regex its message must match, id). SystemExit: argparse's usage errors (status 2).
CLI_CASES = [
    # Names
    case(argv_only(attack_argv(dataset="cifar-100")), ConfigError,
         r"--dataset: unknown dataset 'cifar-100': neither a built-in dataset \(fashion-mnist, .*\) nor an "
         r"existing path",
         "unknown-dataset"),
    case(argv_only(attack_argv(attack="jsma")), SystemExit, r"argument --attack: invalid choice: 'jsma'",
         "unknown-attack"),
    case(argv_only(attack_argv(attack="square")), ConfigError,
         r"--attack/--norm: attack 'square' needs a norm: one of linf, l2", "attack-without-norm"),
    case(argv_only(attack_argv("--engine", "turbo")), SystemExit, r"argument --engine: invalid choice: 'turbo'",
         "unknown-engine"),
    case(saved_case(lambda: mlp().state_dict(), "--arch", "resnet18"), ConfigError,
         r"unknown architecture 'resnet18'; choose one of: cw-mnist", "unknown-architecture"),
    case(argv_only(["attack", "--dataset", "mnist-5k", "--attack", "fgsm", "--epsilon", "0.1"]), SystemExit,
         r"the following arguments are required: --out", "missing-out"),
    # ε
    case(argv_only(attack_argv(epsilon="-0.1")), ConfigError, r"epsilon must be a positive finite number, got -0.1",
         "epsilon-negative"),
    case(argv_only(attack_argv(epsilon="0")), ConfigError, r"epsilon must be a positive finite number, got 0",
         "epsilon-zero"),
    case(argv_only(attack_argv(epsilon="nan")), ConfigError, r"epsilon must be a positive finite number, got nan",
         "epsilon-nan"),
    case(argv_only(attack_argv(epsilon="inf")), ConfigError, r"epsilon must be a positive finite number, got inf",
         "epsilon-inf"),
    case(argv_only(attack_argv(epsilon="1.5")), ConfigError,
         r"epsilon 1.5 exceeds the width of the input bounds \(0.0, 1.0\)", "epsilon-above-bounds"),
    case(model_case("--bounds", "0,0.25", epsilon="0.5"), ConfigError,
         r"epsilon 0.5 exceeds the width of the input bounds \(0.0, 0.25\)", "epsilon-above-custom-bounds"),
    case(argv_only(attack_argv(epsilon="abc")), SystemExit, r"argument --epsilon: invalid float value: 'abc'",
         "epsilon-not-a-number"),
    case(argv_only(attack_argv(attack="l2-deepfool")), ConfigError,
         r"l2-deepfool is a minimal-perturbation attack and takes no epsilon", "epsilon-for-minimal-attack"),
    case(argv_only(attack_argv(epsilon=None)), ConfigError, r"fgsm is a fixed-epsilon attack and needs an epsilon",
         "epsilon-missing"),
    # Counts
    case(argv_only(attack_argv(limit="0")), ConfigError, r"--limit must be a positive number of images, got 0",
         "limit-zero"),
    case(argv_only(attack_argv(limit="-5")), ConfigError, r"--limit must be a positive number of images, got -5",
         "limit-negative"),
    case(argv_only(attack_argv(limit="ten")), SystemExit, r"argument --limit: invalid int value: 'ten'",
         "limit-not-a-number"),
    case(argv_only(attack_argv("--batch-size", "0")), ConfigError, r"--batch-size must be positive, got 0",
         "batch-size-zero"),
    case(argv_only(NOISE + ["--n", "0"]), ConfigError, r"--n must be a positive number of images, got 0",
         "noise-n-zero"),
    case(argv_only(NOISE + ["--n", "-10"]), ConfigError, r"--n must be a positive number of images, got -10",
         "noise-n-negative"),
    # Bounds and normalisation
    case(argv_only(attack_argv("--bounds", "1,0")), ConfigError, r"--bounds: lower must be below upper, got '1,0'",
         "bounds-reversed"),
    case(argv_only(attack_argv("--bounds", "0.5,0.5")), ConfigError,
         r"--bounds: lower must be below upper, got '0.5,0.5'", "bounds-empty"),
    case(argv_only(attack_argv("--bounds", "255")), ConfigError, r"--bounds: expected two numbers 'lower,upper'",
         "bounds-one-number"),
    case(model_case("--mean", "0.485,0.456,0.406"), ConfigError,
         r"--mean needs 1 value \(the dataset's images have 1 channel\), got 3", "mean-wrong-channel-count"),
    case(model_case("--std", "0.2,0.2"), ConfigError,
         r"--std needs 1 value \(the dataset's images have 1 channel\), got 2", "std-wrong-channel-count"),
    case(model_case("--std", "0"), ConfigError, r"--std values must be positive, got \(0.0,\)", "std-zero"),
    case(model_case("--mean", "nan"), ConfigError, r"--mean: values must be finite, got 'nan'", "mean-nan"),
    case(argv_only(attack_argv("--std", "0.3")), ConfigError,
         r"--mean/--std/--bounds/--trust-pickle/--resize/--center-crop describe a --model and its data; none given",
         "std-without-model"),
    case(model_case("--class-names", "cat,dog,bird"), ConfigError,
         r"--class-names: got 3 names, but the model has 10 classes", "class-names-wrong-count"),
    # IDX data (Fashion-MNIST layout under --data-dir)
    case(idx_case(test_images=HTML_PAGE), DataError,
         r"t10k-images-idx3-ubyte: not an IDX file \(magic number 3c21444f\)", "idx-wrong-magic"),
    case(idx_case({"test_images": idx_images(shape=(6, 28 * 28))}), DataError,
         r"t10k-images-idx3-ubyte: expected an IDX file with 3 dimensions, found 2", "idx-wrong-dims"),
    case(idx_case(test_images=idx_bytes(idx_images())[:-100]), DataError,
         r"t10k-images-idx3-ubyte: IDX payload truncated: header \(6, 28, 28\) needs 4704 bytes, found 4604",
         "idx-truncated-payload"),
    case(idx_case(test_images=idx_bytes(idx_images())[:10]), DataError,
         r"t10k-images-idx3-ubyte: truncated IDX header", "idx-truncated-header"),
    case(idx_case(test_labels=gzip.compress(idx_bytes(np.arange(6, dtype=np.uint8)))[:-12]), DataError,
         r"t10k-labels-idx1-ubyte.gz: corrupt or truncated gzip data", "idx-truncated-gzip"),
    case(idx_case({"test_labels": np.arange(5, dtype=np.uint8)}), DataError,
         r"fashion-mnist test: 6 images but 5 labels", "idx-label-count-mismatch"),
    case(idx_case({"test_labels": np.array([0, 1, 2, 9, 10, 12], dtype=np.uint8)}), DataError,
         r"fashion-mnist test: labels must lie in 0..9, found 0..12", "idx-labels-outside-0-9"),
    case(idx_case(test_images=idx_bytes(idx_images(np.int32), type_code=0x0C)), DataError,
         r"t10k-images-idx3-ubyte: expected unsigned bytes \(IDX type 0x08\), found int32", "idx-not-bytes"),
    case(idx_case({"test_images": idx_images(shape=(6, 27, 27))}), DataError,
         r"fashion-mnist: train images \(28, 28\) and test images \(27, 27\) differ in shape",
         "idx-image-size-mismatch"),
    case(idx_case(skip="train_labels"), DataError,
         r"fashion-mnist: data/fashion-mnist is incomplete, missing train-labels-idx1-ubyte\[.gz\]; to get it: ",
         "idx-file-missing"),
    # A data dir the user names must exist: no silent fall-back to Debian's copy of the data.
    case(argv_only(attack_argv("--data-dir", "no/such/dir", dataset="fashion-mnist")), ConfigError,
         r"^--data-dir no/such/dir does not exist$", "data-dir-missing"),
    case(with_file("data", "", attack_argv("--data-dir", "data", dataset="mnist-5k")), ConfigError,
         r"^--data-dir data is not a directory$", "data-dir-is-a-file"),
    case(with_dir("data", attack_argv("--data-dir", "data", dataset="mnist")), DataNotFound,
         r"mnist not found \(looked in: data/mnist, data/MNIST/raw; .*use the 5,000-digit sample 'mnist-5k'",
         "dataset-not-found"),
    # CIFAR-10 data (python-pickle layout under --data-dir)
    case(cifar_case(data_batch_3=TRUNCATED), DataError,
         r"^data/cifar-10-batches-py/data_batch_3: corrupt or truncated pickle \(UnpicklingError: "
         r"pickle data was truncated\)$", "cifar-truncated-batch"),
    case(cifar_case(test_batch=b"<!DOCTYPE html><html>Rate limit exceeded</html>"), DataError,
         r"^data/cifar-10-batches-py/test_batch: corrupt or truncated pickle \(UnpicklingError: invalid load key",
         "cifar-garbage-batch"),
    case(cifar_case(**{"batches.meta": meta([*NAMES[:3], b"dog", b"deer", b"cat", *NAMES[6:]])}), DataError,
         r"^data/cifar-10-batches-py/batches.meta: label_names differ from CIFAR-10's at 3: 'dog' instead of 'cat'; "
         r"5: 'cat' instead of 'dog'", "cifar-wrong-meta"),
    case(cifar_case(**{"batches.meta": {b"fine_label_names": NAMES}}), DataError,
         r"^data/cifar-10-batches-py/batches.meta: missing key 'label_names' \(keys found: 'fine_label_names'\)$",
         "cifar-meta-missing-key"),
    case(cifar_case(data_batch_1={b"batch_label": b"training batch 1 of 5"}), DataError,
         r"^data/cifar-10-batches-py/data_batch_1: missing key 'data', 'labels' \(keys found: 'batch_label'\)$",
         "cifar-missing-keys"),
    case(cifar_case(test_batch=good_batch(data=np.zeros((20, 32, 32, 3), np.uint8))), DataError,
         r"^data/cifar-10-batches-py/test_batch: data must have shape \(n, 3072\) \(one 3x32x32 image per row\), "
         r"found \(20, 32, 32, 3\)$", "cifar-wrong-shape"),
    case(cifar_case(test_batch=good_batch(data=np.zeros((20, 3072), np.float32))), DataError,
         r"^data/cifar-10-batches-py/test_batch: data must be uint8 pixels, found dtype float32$", "cifar-wrong-dtype"),
    case(cifar_case(test_batch=good_batch(labels=[3] * 19 + [10])), DataError,
         r"^data/cifar-10-batches-py/test_batch: labels must lie in 0..9, found 3..10$", "cifar-label-out-of-range"),
    case(cifar_case(data_batch_5=good_batch(labels=[3] * 19)), DataError,
         r"^data/cifar-10-batches-py/data_batch_5: 20 images but 19 labels$", "cifar-label-count-mismatch"),
    case(planted_pickle, DataError,
         r"^data/cifar-10-batches-py/data_batch_2: refuses to unpickle posix.system: ", "cifar-malicious-pickle"),
    case(cifar_case(skip=("data_batch_4",)), DataNotFound,
         r"^cifar-10: data/cifar-10-batches-py is incomplete, missing data_batch_4; to get it: download "
         r"cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and extract it into DATA_DIR, "
         r"or pass --download$", "cifar-batch-missing"),
    case(lambda tmp: (tmp / "data").mkdir() or cifar_case(skip=CIFAR_FILES)(tmp), DataNotFound,
         r"^cifar-10 not found \(looked in: data/cifar-10-batches-py, data/cifar-10/cifar-10-batches-py; .*"
         r"to get it: download cifar-10-python.tar.gz from ", "cifar-not-found"),
    # Model files
    case(saved_case(mlp), ConfigError,
         r"model.pth is a pickled Python object \(it names torch.nn.modules.container.Sequential\).*--trust-pickle",
         "pickled-module-untrusted"),
    case(saved_case(lambda: mlp().state_dict(), "--arch", "cw-mnist"), ConfigError,
         r"the weights in model.pth do not fit --arch cw-mnist: missing keys \(14\): 0.weight, 0.bias, .*; "
         r"unexpected keys \(2\): 1.weight, 1.bias", "state-dict-of-another-architecture"),
    case(saved_case(lambda: mlp().state_dict()), ConfigError,
         r"model.pth holds only weights \(a state dict\); pass --arch", "state-dict-without-arch"),
    case(saved_case(lambda: {"epoch": 3, "lr": 0.1}), ConfigError,
         r"model.pth holds a dict that is not a state dict \(keys: 'epoch', 'lr'\)", "checkpoint-without-weights"),
    case(model_case(outputs=9), ConfigError, r"model outputs 9 classes, but the dataset has 10", "model-9-outputs"),
    case(model_case(outputs=11), ConfigError, r"model outputs 11 classes, but the dataset has 10", "model-11-outputs"),
    case(model_case(poison=math.nan), ConfigError, r"model returned non-finite logits \(NaN/inf\) for 8 of 8 rows",
         "model-nan-logits"),
    case(model_case(poison=math.inf), ConfigError, r"model returned non-finite logits \(NaN/inf\) for 8 of 8 rows",
         "model-inf-logits"),
    case(model_case(pixels=32 * 32), ConfigError, r"model rejected input of shape \(8, 1, 28, 28\)",
         "model-wrong-input-shape"),
    case(raw_model_case(b""), ConfigError, r"model.pt is an empty file; accepted formats: ", "model-empty-file"),
    case(raw_model_case(HTML_PAGE), ConfigError, r"model.pt is not a model file; accepted formats: ",
         "model-not-a-model"),
    case(raw_model_case(b"PK\x03\x04" + b"\0" * 40), ConfigError, r"model.pt is a damaged zip archive",
         "model-damaged-zip"),
    case(argv_only(attack_argv("--model", "missing.pt")), ConfigError, r"model file missing.pt does not exist",
         "model-missing"),
    case(with_dir("weights", attack_argv("--model", "weights")), ConfigError,
         r"model path weights is a directory, not a model file", "model-is-a-directory"),
    case(model_case("--device", "tpu"), ConfigError, r"device", "unknown-device"),
    # Output directory
    case(with_file("out", "keep me", attack_argv()), ConfigError, r"output path out exists and is not a directory",
         "out-is-a-file"),
    case(with_file("taken", "keep me", attack_argv(out="taken/run1")), ConfigError,
         r"output directory taken/run1 cannot be created: .*taken is not a directory", "out-below-a-file"),
    case(argv_only(attack_argv(out=UNWRITABLE)), ConfigError, NOT_WRITABLE, "out-not-writable"),
    case(argv_only(NOISE[:-1] + [UNWRITABLE]), ConfigError, NOT_WRITABLE, "noise-out-not-writable"),
    # --param
    case(argv_only(attack_argv("--param", "steps")), ConfigError, r"--param needs NAME=VALUE, got 'steps'",
         "param-without-value"),
    case(argv_only(attack_argv("--param", "=3")), ConfigError, r"--param needs NAME=VALUE, got '=3'",
         "param-without-name"),
    case(argv_only(attack_argv("--param", "steps=3")), ConfigError,
         r"attack 'fgsm' has no parameter 'steps'; its parameters are: random_start", "param-unknown"),
    case(argv_only(attack_argv("--param", "steps=0", attack="linf-pgd")), ConfigError,
         r"attack 'linf-pgd': steps must be a whole number >= 1, got 0", "param-out-of-range"),
    case(argv_only(attack_argv("--param", "steps=2.5", attack="linf-pgd")), ConfigError,
         r"attack 'linf-pgd': steps must be a whole number >= 1, got 2.5", "param-not-whole"),
    case(argv_only(attack_argv("--param", "random_start=maybe")), ConfigError,
         r"attack 'fgsm': random_start must be true or false, got 'maybe'", "param-wrong-type"),
    case(argv_only(attack_argv("--engine", "native", attack="l1-bb", epsilon=None)), ConfigError,
         r"engine 'native' has no kernel for this attack; use --engine reference or auto", "engine-without-kernel"),
    # A user's own test set (--dataset PATH)
    *OWN_DATA_CASES,
    # report
    case(with_dir("runs", ["report", "runs", "--out", "out"]), ConfigError,
         r"no result.json or noise.json in runs or its sub-directories", "report-without-runs"),
    case(argv_only(["report", "nowhere", "--out", "out"]), ConfigError, r"run path nowhere does not exist",
         "report-missing-dir"),
    case(with_file("runs/a/result.json", '{"schema": "labelflip.result/1", ', ["report", "runs", "--out", "out"]),
         ConfigError, r"runs/a/result.json is not valid JSON", "report-broken-json"),
    case(with_file("runs/a/result.json", '{"schema": "other/1"}', ["report", "runs", "--out", "out"]),
         ConfigError, r"runs/a/result.json: schema 'other/1' is neither 'labelflip.result/2' nor",
         "report-foreign-json"),
]


# --------------------------------------------------------------------------------------------------
# The CLI corpus
# --------------------------------------------------------------------------------------------------

def snapshot(root: Path) -> dict[str, tuple[bool, int, int]]:
    """Every path under `root` with (is dir, size, mtime): a file written, removed or rewritten changes it."""
    return {str(p.relative_to(root)): (p.is_dir(), p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh model cache: a case that trained (or cached) anything would leave it non-empty."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("LABELFLIP_CACHE_DIR", str(cache))
    monkeypatch.delenv("LABELFLIP_DATA_DIR", raising=False)
    return cache


@pytest.mark.parametrize("setup, error, message", CLI_CASES)
def test_bad_input_is_refused_cleanly(setup: Setup, error: type[BaseException], message: str, tmp_path: Path,
                                      cache_dir: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    argv = setup(tmp_path)
    before = snapshot(tmp_path), snapshot(cache_dir)

    with pytest.raises(error) as raised:
        cli.run(argv)
    assert type(raised.value) is error
    if error is SystemExit:
        assert raised.value.code == 2
        text = capsys.readouterr().err  # argparse prints its usage error itself
    else:
        text = raised.value.phrased(cli.OPTION_NAMES)  # what the command line says of it
        assert "\n" not in text, "one line"
    assert re.search(message, text), text

    status, out, err = run_cli(capsys, argv)
    assert status == 2
    assert "Traceback" not in err and out == ""
    if error is SystemExit:
        assert err.startswith("usage: labelflip") and re.search(message, err)
    else:
        assert err == f"labelflip: error: {text}\n"

    assert (snapshot(tmp_path), snapshot(cache_dir)) == before


# --------------------------------------------------------------------------------------------------
# The real console script, in a process of its own
# --------------------------------------------------------------------------------------------------

def _console_script() -> list[str]:
    script = Path(sys.executable).with_name("labelflip")
    return [str(script)] if script.exists() else [sys.executable, "-m", "labelflip_models.cli"]


@pytest.mark.parametrize("setup, message", [
    pytest.param(argv_only(attack_argv(epsilon="-0.1")), r"epsilon must be a positive finite number", id="epsilon"),
    pytest.param(argv_only(NOISE + ["--n", "0"]), r"--n must be a positive number of images", id="noise-n"),
    pytest.param(with_dir("runs", ["report", "runs", "--out", "out"]), r"no result.json or noise.json in runs",
                 id="report-empty"),
])
def test_console_script_exits_2_with_one_error_line(setup: Setup, message: str, tmp_path: Path,
                                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    argv = setup(tmp_path)
    cache = tmp_path_factory.mktemp("cache")
    before = snapshot(tmp_path)
    env = {**os.environ, "LABELFLIP_CACHE_DIR": str(cache)}
    proc = subprocess.run(_console_script() + argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("labelflip: error: "), proc.stderr
    assert re.search(message, lines[0])
    assert snapshot(tmp_path) == before and snapshot(cache) == {}


# --------------------------------------------------------------------------------------------------
# Baseline files, as the pytest gate reads them
# --------------------------------------------------------------------------------------------------

FGSM = Case("quick", "mnist-5k", "fgsm", 0.1)
DEEPFOOL = Case("quick", "mnist-5k", "l2-deepfool", None)
DIGITS = [str(d) for d in range(10)]
Damage = Callable[[Path], None]


def edit_json(case: Case, change: Callable[[dict[str, Any]], Any]) -> Damage:
    """Rewrite the case's baseline JSON after `change` edited it in place."""
    def damage(root: Path) -> None:
        path = case.baseline_path(root, ".json")
        baseline = json.loads(path.read_text())
        change(baseline)
        path.write_text(json.dumps(baseline, indent=1))
    return damage


def write_text(case: Case, suffix: str, text: Callable[[str], str]) -> Damage:
    def damage(root: Path) -> None:
        path = case.baseline_path(root, suffix)
        path.write_text(text(path.read_text()))
    return damage


def copy_from(other: Case, to: Case) -> Damage:
    def damage(root: Path) -> None:
        shutil.copy(other.baseline_path(root, ".json"), to.baseline_path(root, ".json"))
    return damage


def bump_first_cell(csv: str) -> str:
    header, first, *rest = csv.splitlines()
    name, count, *others = first.split(",")
    return "\n".join([header, ",".join([name, str(int(count) + 1), *others]), *rest]) + "\n"


def baseline_case(damage: Damage, message: str, id: str, case: Case = FGSM, n: int = 1000,
                  class_names: list[str] = DIGITS) -> Any:
    return pytest.param(damage, case, n, class_names, message, id=id)


BASELINE_CASES = [
    baseline_case(edit_json(FGSM, lambda b: b.update(schema="labelflip.baseline/1")),
                  r"fgsm-eps0.1.json: schema 'labelflip.baseline/1', expected 'labelflip.baseline/3'; "
                  r"regenerate it with: pytest robustness_tests --labelflip-regen --labelflip-profile quick",
                  "wrong-schema-version"),
    baseline_case(write_text(FGSM, ".json", lambda text: "[1, 2]"), r"schema 'list', expected", "not-an-object"),
    baseline_case(edit_json(FGSM, lambda b: b["gate"]["max_flip_rate"].pop("7")),
                  r"baseline classes \['0', '1', '2', '3', '4', '5', '6', '8', '9'\] differ from the model's",
                  "missing-class"),
    baseline_case(lambda root: None, r"baseline classes .* differ from the model's \['zero', ",
                  "other-class-names", class_names=["zero", *DIGITS[1:]]),
    baseline_case(edit_json(FGSM, lambda b: b["gate"]["max_flip_rate"].update({"3": math.nan})),
                  r"max_flip_rate\['3'\] must be a number in \[0, 1\], got nan", "nan-threshold"),
    baseline_case(edit_json(FGSM, lambda b: b["gate"]["max_flip_rate"].update({"3": 1.5})),
                  r"max_flip_rate\['3'\] must be a number in \[0, 1\], got 1.5", "threshold-above-1"),
    baseline_case(edit_json(FGSM, lambda b: b["gate"].update(min_attack_success="high")),
                  r"min_attack_success must be a number in \[0, 1\], got 'high'", "success-floor-not-a-number"),
    baseline_case(edit_json(FGSM, lambda b: b.pop("gate")), r"malformed baseline \(missing 'gate'\); regenerate it",
                  "missing-gate-section"),
    baseline_case(edit_json(FGSM, lambda b: b["gate"].pop("symmetry")),
                  r"malformed baseline \(missing gate.symmetry.entrywise.score, .*\); regenerate it",
                  "missing-gate-symmetry"),
    baseline_case(edit_json(DEEPFOOL, lambda b: b["gate"].pop("min_norm_floor")),
                  r"malformed baseline \(missing gate.min_norm_floor\)", "minimal-without-norm-floor",
                  case=DEEPFOOL, n=300),
    baseline_case(write_text(FGSM, ".json", lambda text: text[: len(text) // 2]),
                  r"fgsm-eps0.1.json: unreadable baseline \(.*\); regenerate it with: ", "unparsable-json"),
    baseline_case(write_text(FGSM, ".csv", bump_first_cell),
                  r"fgsm-eps0.1.csv does not match fgsm-eps0.1.json; regenerate both with: ", "csv-does-not-match"),
    baseline_case(write_text(FGSM, ".csv", lambda text: text[: len(text) // 2]),
                  r"fgsm-eps0.1.csv: flip matrix must have one row per class and 11 columns; regenerate both with: ",
                  "csv-unparsable"),
    baseline_case(copy_from(Case("quick", "mnist-5k", "linf-pgd", 0.1), FGSM),
                  r"baseline is for case mnist-5k-linf-pgd-eps0.1, not mnist-5k-fgsm-eps0.1",
                  "baseline-of-another-case"),
    baseline_case(lambda root: None, r"baseline evaluated 1000 images, this run 500; regenerate it with: ",
                  "other-image-count", n=500),
    baseline_case(write_text(FGSM, ".images.csv", lambda text: text.replace("\n0,0,", "\n1,0,", 1)),
                  r"fgsm-eps0.1.images.csv does not match fgsm-eps0.1.json \(sha256\); regenerate both with: ",
                  "outcomes-edited"),
    baseline_case(lambda root: FGSM.baseline_path(root, ".images.csv").unlink(),
                  r"fgsm-eps0.1.json: its per-image outcomes cannot be read \(.*No such file.*\); regenerate it with",
                  "outcomes-missing"),
    baseline_case(lambda root: FGSM.baseline_path(root, ".json").unlink(),
                  r"no baseline for mnist-5k-fgsm-eps0.1 at .*; create it with: .* -k 'mnist-5k-fgsm-eps0.1'",
                  "missing-baseline"),
]


@pytest.mark.parametrize("damage, case, n, class_names, message", BASELINE_CASES)
def test_bad_baseline_is_refused_and_left_alone(damage: Damage, case: Case, n: int, class_names: list[str],
                                                 message: str, tmp_path: Path) -> None:
    root = tmp_path / "baselines"
    shutil.copytree(REFERENCE_BASELINES / "quick", root / "quick")
    damage(root)
    before = snapshot(root)

    with pytest.raises(BaselineError, match=message) as raised:
        load_baseline(case, root, class_names, n)
    assert type(raised.value) is BaselineError and "\n" not in str(raised.value)
    assert snapshot(root) == before


def test_baseline_of_another_model() -> None:
    path, recorded, current = "quick/mnist-5k/fgsm-eps0.1.json", "ab" * 32, "cd" * 32
    with pytest.raises(BaselineError, match=r"fgsm-eps0.1.json: baseline was recorded with model abababababab, "
                                            r"this run's model is cdcdcdcdcdcd .*--labelflip-model-mismatch warn"):
        check_same_model(path, recorded, current, "error")
    note = check_same_model(path, recorded, current, "warn")
    assert note == f"{path}: baseline was recorded with model abababababab, this run's model is cdcdcdcdcdcd"
    assert check_same_model(path, recorded, recorded, "error") is None


def test_the_corpus_is_large_and_its_ids_unique() -> None:
    assert len(CLI_CASES) >= 30 and len(BASELINE_CASES) >= 10
    for group in (CLI_CASES, BASELINE_CASES):
        assert len({p.id for p in group}) == len(group)
