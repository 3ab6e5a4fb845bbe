"""The datasets labelflip knows, with their class names and channels: known without loading any data (and without
torch), so that the pytest plugin can parameterise tests per class at collection time."""

from __future__ import annotations

from pathlib import Path

DATASETS = ("fashion-mnist", "mnist", "mnist-5k", "cifar-10")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGITS = tuple(str(d) for d in range(10))
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "fashion-mnist": FASHION_MNIST_CLASSES, "mnist": DIGITS, "mnist-5k": DIGITS, "cifar-10": CIFAR10_CLASSES,
}
CHANNELS: dict[str, int] = {"fashion-mnist": 1, "mnist": 1, "mnist-5k": 1, "cifar-10": 3}


def dataset_key(dataset: str) -> str:
    """How case ids and baseline folders name a dataset: a built-in one by its name, a user's own by its folder's
    or file's name without suffix (./photos -> photos, test.npz -> test)."""
    if dataset in DATASETS:
        return dataset
    path = Path(dataset).resolve()  # "." and ".." name the folder they stand for
    return path.stem if path.is_file() else path.name
