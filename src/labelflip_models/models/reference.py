"""labelflip's reference models: which architectures each dataset has. Cheap to import (no torch)."""

# The paper's reference models per dataset. The first is the dataset's default: the one whose cases keep the plain
# ids and baseline folders, and the one a user's own model of that dataset stands in for.
REFERENCE_ARCHS: dict[str, tuple[str, ...]] = {
    "fashion-mnist": ("cw-mnist",), "mnist": ("cw-mnist",), "mnist-5k": ("cw-mnist",),
    "cifar-10": ("cw-cifar", "preact-resnet18"),
}
