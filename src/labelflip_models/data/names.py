"""The datasets labelflip knows, with their class names and channels: known without loading any data (and without
torch), so that the pytest plugin can parameterise tests per class at collection time."""

from __future__ import annotations

DATASETS = ("fashion-mnist", "mnist", "mnist-5k", "cifar-10")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGITS = tuple(str(d) for d in range(10))
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "fashion-mnist": FASHION_MNIST_CLASSES, "mnist": DIGITS, "mnist-5k": DIGITS, "cifar-10": CIFAR10_CLASSES,
}
CHANNELS: dict[str, int] = {"fashion-mnist": 1, "mnist": 1, "mnist-5k": 1, "cifar-10": 3}
