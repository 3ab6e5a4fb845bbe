"""A user's own test set, from a path: an ImageFolder tree, an `.npz`, or a Hugging Face `datasets` folder saved
with `save_to_disk`. The kind is judged by content, never by name.

Class order is the model's, not the listing's. Without `class_names`, the source's own order applies (sorted folder
names, as torchvision's ImageFolder; the ClassLabel's names; the `.npz`'s `class_names`, else 0..K-1). With
`class_names` (the model's output order), folders and ClassLabel/`.npz` names are matched to classes by name, and
a name without data or data without a name is an error listing both.

Only the test split is read: a user's model is gated, not trained. Files in an ImageFolder without an image
extension are ignored and counted in the dataset's note; a file with one that does not decode is an error naming it.
`describe_source` reads only names (no torch, no images beyond one), for the pytest plugin at collection time.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from ..errors import ConfigError, DataError
from .names import dataset_key

if TYPE_CHECKING:
    import torch

# torchvision.datasets.folder.IMG_EXTENSIONS, without importing torchvision at collection time.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
MAX_LISTED = 5
GREY_MODES = ("1", "L", "LA", "P")
# 16-bit and float images: converting them to 8 bits would clip them, silently.
DEEP_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
NPZ_KEYS = ("x", "y")


@dataclass(frozen=True)
class Source:
    """What a path holds, known without decoding the images."""

    path: Path
    kind: str  # "imagefolder", "npz", "hf"
    class_names: tuple[str, ...]  # in the source's own order
    class_order: str  # how that order came about, for result.json

    @property
    def name(self) -> str:
        """The dataset's name in case ids and baseline folders."""
        return dataset_key(str(self.path))


@dataclass(frozen=True)
class Preprocess:
    """What a user declares about turning their images into the model's input (torchvision semantics)."""

    resize: int | None = None  # the shorter side becomes this many pixels
    center_crop: int | None = None  # then a centred square of this side


def _listed(items: list[str] | tuple[str, ...]) -> str:
    shown = ", ".join(map(repr, items[:MAX_LISTED]))
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def describe_source(path: str | os.PathLike) -> Source:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"`dataset` {path} does not exist")
    if path.is_file():
        return _describe_npz(path)
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return _describe_hf(path)
    return _describe_folder(path)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _class_dirs(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def _test_root(root: Path) -> Path:
    """root/test (else root/val, as ImageNet's) when the tree is split into train/ and test/ or val/, else root."""
    dirs = _class_dirs(root)
    held_out = "test" if "test" in dirs else "val" if "val" in dirs else None
    if held_out is None or not set(dirs) <= {"train", "test", "val"}:
        return root
    train, test = root / "train", root / held_out
    if train.is_dir() and _class_dirs(train) != _class_dirs(test):
        only_train = sorted(set(_class_dirs(train)) - set(_class_dirs(test)))
        only_test = sorted(set(_class_dirs(test)) - set(_class_dirs(train)))
        raise DataError(f"{root}: train/ and {held_out}/ hold different class folders (only in train/: "
                        f"{_listed(only_train) or 'none'}; only in {held_out}/: {_listed(only_test) or 'none'}); "
                        "class indices would differ between the splits")
    return test


def _describe_folder(root: Path) -> Source:
    test = _test_root(root)
    names = _class_dirs(test)
    if not names:
        raise DataError(f"{test} holds no class folders: expected an ImageFolder tree {test}/<class>/<image> "
                        "(or a .npz file, or a folder written by datasets' save_to_disk)")
    _check_names(tuple(names), str(root))
    return Source(root, "imagefolder", tuple(names), "sorted folder names")


def _describe_npz(path: Path) -> Source:
    with _open_npz(path) as npz:
        missing = [k for k in NPZ_KEYS if k not in npz.files]
        if missing:
            raise DataError(f"{path}: a .npz dataset needs arrays {', '.join(NPZ_KEYS)}; missing "
                            f"{', '.join(missing)} (found: {', '.join(npz.files) or 'none'})")
        if "class_names" in npz.files:
            stored = _array(npz, "class_names", path).reshape(-1)
            names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in stored)
            order = "class_names in the .npz"
        else:
            y = _array(npz, "y", path)
            if y.size == 0:
                raise DataError(f"{path}: `y` is empty")
            names = tuple(str(i) for i in range(int(y.max()) + 1))
            order = "label values 0..K-1 (no class_names in the .npz)"
    _check_names(names, str(path))
    return Source(path, "npz", names, order)


def _open_npz(path: Path) -> np.lib.npyio.NpzFile:
    try:
        # allow_pickle=False: an object array in a data file would execute code on load.
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npz file (nor an ImageFolder or datasets folder): "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _array(npz: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        return npz[key]
    except ValueError:  # an object array: unpickling it would run code from the file
        raise DataError(f"{path}: `{key}` holds Python objects (a pickled array); labelflip reads only numeric "
                        "arrays") from None


def _hf_split_dir(root: Path) -> Path:
    if not (root / "dataset_dict.json").is_file():
        return root
    splits = json.loads((root / "dataset_dict.json").read_text())["splits"]
    if "test" not in splits:
        raise DataError(f"{root}: the saved DatasetDict has no 'test' split (splits: {', '.join(splits)})")
    return root / "test"


def _hf_columns(split_dir: Path) -> tuple[str, str, tuple[str, ...]]:
    """(image column, label column, label names) from the saved features, without importing `datasets`."""
    try:
        features = json.loads((split_dir / "dataset_info.json").read_text())["features"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{split_dir}: cannot read the features of a saved datasets folder ({exc})") from None
    images = [k for k, f in features.items() if isinstance(f, dict) and f.get("_type") == "Image"]
    labels = [k for k, f in features.items() if isinstance(f, dict) and f.get("_type") == "ClassLabel"]
    if not images or not labels:
        found = ", ".join(f"{k} ({f.get('_type') if isinstance(f, dict) else f})" for k, f in features.items())
        raise DataError(f"{split_dir}: a datasets folder needs an Image column and a ClassLabel column; found {found}")
    if len(labels) > 1:
        raise DataError(f"{split_dir}: several ClassLabel columns ({', '.join(labels)}); keep the one your model "
                        "predicts (e.g. dataset.remove_columns) and save it again")
    return images[0], labels[0], tuple(features[labels[0]]["names"])


def _describe_hf(root: Path) -> Source:
    _, _, names = _hf_columns(_hf_split_dir(root))
    _check_names(names, str(root))
    return Source(root, "hf", names, "the ClassLabel's names")


def _check_names(names: tuple[str, ...], where: str) -> None:
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"{where}: duplicate class names: {_listed(duplicates)}")
    if len(names) < 2:
        raise DataError(f"{where}: {len(names)} class ({_listed(list(names))}); a flip needs at least 2 classes")


def source_channels(source: Source, preprocess: Preprocess) -> int:
    """1 or 3: the channels the model will see (an .npz: from its array's shape; images: from their headers)."""
    if source.kind == "npz":
        with _open_npz(source.path) as npz:
            x = _array(npz, "x", source.path)
        return 3 if x.ndim == 4 and 3 in (x.shape[1], x.shape[3]) else 1
    images, _, _ = (_read_hf if source.kind == "hf" else _read_folder)(source.path, preprocess)
    return 1 if images.ndim == 3 else 3


def model_order(source: Source, class_names: tuple[str, ...] | None) -> tuple[tuple[str, ...], np.ndarray, str]:
    """(class names in the model's order, source index -> model index, how the order came about)."""
    if class_names is None:
        return source.class_names, np.arange(len(source.class_names)), source.class_order
    no_data = [n for n in class_names if n not in source.class_names]
    no_name = [n for n in source.class_names if n not in class_names]
    if no_data or no_name:
        raise DataError(f"`class_names` and the classes of {source.path} differ: names without data: "
                        f"{_listed(no_data) or 'none'}; data without a name: {_listed(no_name) or 'none'}")
    index = {n: i for i, n in enumerate(class_names)}
    return class_names, np.array([index[n] for n in source.class_names]), "`class_names` (the model's order)"


def load_own_test_set(path: str | os.PathLike, class_names: tuple[str, ...] | None = None,
                      preprocess: Preprocess = Preprocess()) -> tuple[Source, tuple[str, ...], str,
                                                                       np.ndarray | LazyImages, np.ndarray, str]:
    """(source, class names, class order, images, labels, note). Images: an ImageFolder's decoded lazily
    (`LazyImages`, uint8); otherwise uint8 (N,H,W) or (N,H,W,C), or float32 in [0,1] from an .npz."""
    source = describe_source(path)
    names, to_model, order = model_order(source, class_names)
    if source.kind == "npz":
        images, labels, note = _read_npz(source.path, preprocess)
    elif source.kind == "hf":
        images, labels, note = _read_hf(source.path, preprocess)
    else:
        images, labels, note = _read_folder(source.path, preprocess)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(source.class_names)):
        raise DataError(f"{source.path}: labels must lie in 0..{len(source.class_names) - 1} (one per class name), "
                        f"found {int(labels.min())}..{int(labels.max())}")
    return source, names, order, images, to_model[labels].astype(np.int64), note


def _read_npz(path: Path, preprocess: Preprocess) -> tuple[np.ndarray, np.ndarray, str]:
    with _open_npz(path) as npz:
        x, y = (_array(npz, key, path) for key in NPZ_KEYS)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: `y` must be a 1-D integer array of labels, got {y.dtype} of shape {y.shape}")
    if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[3] not in (1, 3):
        x = x.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[3] not in (1, 3)):
        raise DataError(f"{path}: `x` must hold images NHW, NHWC or NCHW with 1 or 3 channels, got shape {x.shape}")
    if x.ndim == 4 and x.shape[3] == 1:
        x = x[..., 0]
    if len(x) != len(y):
        raise DataError(f"{path}: {len(x)} images in `x` but {len(y)} labels in `y`")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.floating):
            raise DataError(f"{path}: `x` must be uint8 (0..255) or float in [0, 1], got {x.dtype}")
        if not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
            raise DataError(f"{path}: float images must lie in [0, 1], found {float(np.nanmin(x))}.."
                            f"{float(np.nanmax(x))} (or non-finite values)")
        x = x.astype(np.float32)
    if preprocess.resize or preprocess.center_crop:
        x = _preprocess_arrays(x, preprocess)
        if x.dtype != np.uint8:
            x = np.clip(x, 0, 1)  # antialiased resizing overshoots [0, 1] by rounding
    return np.ascontiguousarray(x), y.astype(np.int64), ""


def _preprocess_arrays(x: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    import torch

    t = torch.from_numpy(np.array(x))  # a writable copy: PIL hands out read-only arrays
    t = t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)
    t = _apply(t, preprocess)
    t = t[:, 0] if x.ndim == 3 else t.permute(0, 2, 3, 1)
    return t.contiguous().numpy()


def _apply(t: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as TF

    if preprocess.resize:
        t = TF.resize(t, [preprocess.resize], antialias=True)
    if preprocess.center_crop:
        t = TF.center_crop(t, [preprocess.center_crop])
    return t


def _decode(item: Path | BinaryIO, name: str, preprocess: Preprocess, mode: str | None = None) -> np.ndarray:
    """One image as uint8 (H, W) or (H, W, 3); any problem is a DataError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(item) as image:
            image.load()
            to = mode or ("L" if image.mode in GREY_MODES else "RGB")
            array = np.asarray(image.convert(to))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image {name}: {exc}") from None
    if preprocess.resize or preprocess.center_crop:
        array = _preprocess_arrays(array[None], preprocess)[0]
    return array


def _read_folder(root: Path, preprocess: Preprocess) -> tuple[LazyImages, np.ndarray, str]:
    test = _test_root(root)
    files: list[Path] = []
    labels: list[int] = []
    ignored = 0
    for label, name in enumerate(_class_dirs(test)):
        found = 0
        for dirpath, dirnames, filenames in os.walk(test / name):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                if f.startswith("."):
                    continue
                if _is_image(f):
                    files.append(Path(dirpath) / f)
                    found += 1
                else:
                    ignored += 1
        if not found:
            raise DataError(f"class folder {test / name} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        labels.extend([label] * found)
    note = f"{ignored} files without an image extension ignored" if ignored else ""
    return _lazy(files, preprocess), np.array(labels, dtype=np.int64), note


def _lazy(items: Any, preprocess: Preprocess) -> LazyImages:
    """`items` (files, or a split's encoded images) as LazyImages, after checking from the headers alone that they
    come out in one size."""
    names = [_name(items, i) for i in range(len(items))]
    headers = [_header(items[i], names[i]) for i in range(len(items))]
    _check_same_shape([_output_size(size, preprocess) for size, _ in headers], names, preprocess)
    # Grey images among colour ones become colour, as PIL's convert("RGB") would make them.
    mode = "L" if all(m in GREY_MODES for _, m in headers) else "RGB"
    first = _decode(items[0], names[0], preprocess, mode)
    return LazyImages(items, mode, preprocess, first.shape)


def _name(items: Any, i: int) -> str:
    return items.name(i) if hasattr(items, "name") else str(items[i])


def _header(item: Path | BinaryIO, name: str) -> tuple[tuple[int, int], str]:
    """(height, width) and mode, from the image's header alone; one PIL cannot identify is an error naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(item) as image:
            size, mode = (image.height, image.width), image.mode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image {name}: {exc}") from None
    if mode in DEEP_MODES:
        raise DataError(f"image {name} has {mode} pixels (16-bit or float); labelflip reads 8-bit images: convert "
                        "it, or give the set as an .npz of floats in [0, 1]")
    return size, mode


def _output_size(size: tuple[int, int], preprocess: Preprocess) -> tuple[int, int]:
    """The size torchvision's Resize([n]) then CenterCrop(c) give an image of `size`."""
    if preprocess.center_crop:
        return preprocess.center_crop, preprocess.center_crop
    if not preprocess.resize:
        return size
    h, w = size
    short, long = sorted(size)
    new_long = int(preprocess.resize * long / short)
    return (preprocess.resize, new_long) if h <= w else (new_long, preprocess.resize)


class LazyImages:
    """Test images decoded when indexed (an ImageFolder's files, a datasets split's encoded images); array-like
    (shape, ndim, dtype, `[indices]`), so the rest of labelflip treats them like the in-memory uint8 arrays of other
    datasets, without holding the set."""

    dtype = np.dtype(np.uint8)

    def __init__(self, items: Any, mode: str, preprocess: Preprocess, shape: tuple[int, ...]) -> None:
        self.items, self.mode, self.preprocess = items, mode, preprocess
        self.shape = (len(items), *shape)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, indices: np.ndarray | slice | int) -> np.ndarray:
        if isinstance(indices, (int, np.integer)):
            return self.decode(int(indices))
        chosen = np.arange(len(self))[indices]
        return np.stack([self.decode(int(i)) for i in chosen]) if len(chosen) else np.zeros((0, *self.shape[1:]),
                                                                                           np.uint8)

    def decode(self, i: int) -> np.ndarray:
        return _decode(self.items[i], _name(self.items, i), self.preprocess, self.mode)

    def digest(self, h: Any) -> None:
        """Feed how images are decoded and every image's encoded bytes (no need to decode them) into the hash `h`."""
        h.update(repr((self.mode, self.preprocess)).encode())
        for i in range(len(self.items)):
            item = self.items[i]
            h.update(Path(_name(self.items, i)).name.encode())
            with item.open("rb") if isinstance(item, Path) else item as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    h.update(block)


def _check_same_shape(shapes: list[tuple[int, ...]], files: list[str], preprocess: Preprocess) -> None:
    """`shapes`: each image's (height, width, ...) after preprocessing."""
    sizes: dict[tuple[int, int], list[Path]] = {}
    for shape, f in zip(shapes, files):
        sizes.setdefault(tuple(shape[:2]), []).append(f)
    if len(sizes) <= 1:
        return
    common = max(sizes, key=lambda s: len(sizes[s]))
    others = [(s, fs) for s, fs in sizes.items() if s != common]
    listed = "; ".join(f"{h}x{w}: {', '.join(str(f) for f in fs[:3])}" + (f" and {len(fs) - 3} more" if len(fs) > 3
                                                                          else "") for (h, w), fs in others[:3])
    hint = ("resize/center-crop leave sizes that differ" if preprocess.resize or preprocess.center_crop
            else "declare `resize` and/or `center_crop` to bring them to the model's input size")
    raise DataError(f"images differ in size: most are {common[0]}x{common[1]} ({len(sizes[common])} files), but "
                    f"{listed}; {hint}")


def _read_hf(root: Path, preprocess: Preprocess) -> tuple[LazyImages, np.ndarray, str]:
    image_col, label_col, _ = _hf_columns(_hf_split_dir(root))
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"{root} is a Hugging Face datasets folder; reading it needs the `datasets` package: "
                          'pip install "labelflip[datasets]"') from None
    split = datasets.load_from_disk(str(_hf_split_dir(root)))
    if not len(split):
        raise DataError(f"{root}: the test split is empty")
    # Encoded bytes, decoded by labelflip when an image is needed: the Arrow table stays memory-mapped.
    images = HFImages(root, split.cast_column(image_col, datasets.Image(decode=False)), image_col)
    labels = np.asarray(split[label_col], dtype=np.int64)
    return _lazy(images, preprocess), labels, ""


class HFImages:
    """The encoded images of a saved datasets split, as files would give them: a readable item per row."""

    def __init__(self, root: Path, split: Any, column: str) -> None:
        self.root, self.split, self.column = root, split, column

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> Any:
        import io

        item = self.split[i][self.column]
        return io.BytesIO(item["bytes"]) if item.get("bytes") is not None else Path(item["path"])

    def name(self, i: int) -> str:
        return f"{self.root}[row {i}]"


