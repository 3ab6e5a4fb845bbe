"""Whether gradient attacks can evaluate a model at all: cheap checks, run once per model on some of the dataset's
images before any attack. Each failure makes a model look more robust than it is, or its flips meaningless
(Carlini et al. 2019, "On Evaluating Adversarial Robustness", sections 3 and 5; AutoAttack's `checks.py`):

- accuracy: clean accuracy clearly above chance, and no class classified clearly below chance (wrong class order,
  normalisation or input bounds);
- preprocessing: no common input convention (0-255, [-1, 1], MNIST or ImageNet normalisation, or undoing one)
  makes the model clearly more accurate than the inputs it is given;
- deterministic: two forward passes on the same images agree (noise or dropout at inference);
- batch independent: an image's output does not depend on the other images of its batch;
- logits: the outputs are not softmax probabilities (they saturate, and their gradients vanish); a user's model
  file whose outputs are (`models/io.logits_adapter`) is attacked through their log, with a warning, and outputs
  all in [0, 1] (a sigmoid?) get a warning;
- gradients: the logit margin has a finite, nonzero input gradient at almost every image (non-differentiable
  preprocessing such as input quantisation, a detached input).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from scipy.stats import binomtest
from torch import nn

from ..analysis.stats import one_sided_wilson
from ..attacks import Bounds
from ..data import Dataset, balanced_subset
from ..devices import ieee_fp32
from ..models.architectures import logits
from ..models.io import SOFTMAX, UNIT_VALUES, LogOfProbabilities, probability_kind
from .evaluate import pixel_images

CONFIDENCE = 0.99
# Largest difference between two outputs for the same image, relative to the outputs' scale, that still reads as
# the same output: floating-point differences between kernels (another batch shape, GPU kernels) stay below it.
SAME_OUTPUT = 1e-3
# Share of images whose input gradient (of the logit margin) may be zero or non-finite: ReLU networks have
# dead regions, rarely.
MAX_DEAD_GRADIENTS = 0.02
# Images checked for batch independence one at a time.
ALONE = 16
BATCH = 256
# Test images the checks take: this many per class (enough for a class at 0% to lie clearly below chance at K = 10),
# at most CHECK_IMAGES in all.
CHECK_PER_CLASS, CHECK_IMAGES = 100, 10_000


def images_per_class(num_classes: int) -> int:
    """How many test images of each class the checks take."""
    return max(1, min(CHECK_PER_CLASS, CHECK_IMAGES // num_classes))


@dataclass(frozen=True)
class ModelCheck:
    name: str
    passed: bool
    # One line: what is wrong and what to do (or what was found).
    message: str
    figures: dict[str, Any] = field(default_factory=dict)
    # Passed, but with something the user should fix (e.g. probabilities attacked through their log).
    warning: bool = False


def _relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp_min(1.0)) if len(a) else 0.0


def check_accuracy(outputs: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> ModelCheck:
    """Clean accuracy's lower bound above chance (1/K), and no class whose accuracy's upper bound lies below it
    (Bonferroni across the classes): a class whose images mostly go to one other class points at the class order."""
    k = len(class_names)
    pred = outputs.argmax(1)
    correct = pred == labels
    n, right = len(labels), int(correct.sum())
    lower = float(one_sided_wilson(right, n, CONFIDENCE, "lower"))
    chance = 1 / k
    wrong_classes = []
    for c, name in enumerate(class_names):
        mine = labels == c
        m = int(mine.sum())
        if m and one_sided_wilson(int(correct[mine].sum()), m, 1 - (1 - CONFIDENCE) / k, "upper") < chance:
            went = int(torch.bincount(pred[mine], minlength=k).argmax())
            wrong_classes.append(f"{name!r} ({int(correct[mine].sum())}/{m} right, most as {class_names[went]!r})")
    figures = {"accuracy": right / n if n else None, "lower_bound": lower, "chance": chance, "n": n}
    if lower <= chance or wrong_classes:
        found = (f"clean accuracy {right}/{n} ({CONFIDENCE:.0%} lower bound {lower:.3f}) vs chance {chance:.3f}"
                 if lower <= chance else f"classes classified below chance: {', '.join(wrong_classes[:5])}")
        return ModelCheck("accuracy", False, f"{found}: the model does not read this data as it was trained to; "
                                             "check the class order (class names), the normalisation (mean, std) "
                                             "and the input bounds", figures)
    return ModelCheck("accuracy", True, f"clean accuracy {right}/{n} ({CONFIDENCE:.0%} lower bound {lower:.3f}) above "
                                        f"chance {chance:.3f}, every class above it", figures)


# Input conventions a model may expect instead of the one it is given: a mapping of the given images, each the
# fix of a common mistake (scaling, normalising twice or not at all).
_MNIST, _IMAGENET_MEAN, _IMAGENET_STD = (0.1307, 0.3081), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CONVENTIONS = {
    "times 255": lambda x: x * 255,
    "divided by 255": lambda x: x / 255,
    "mapped to [-1, 1]": lambda x: 2 * x - 1,
    "mapped back from [-1, 1]": lambda x: (x + 1) / 2,
    "MNIST-normalised": lambda x: (x - _MNIST[0]) / _MNIST[1],
    "MNIST-normalisation undone": lambda x: x * _MNIST[1] + _MNIST[0],
    "ImageNet-normalised": lambda x: (x - _channels(_IMAGENET_MEAN, x)) / _channels(_IMAGENET_STD, x),
    "ImageNet-normalisation undone": lambda x: x * _channels(_IMAGENET_STD, x) + _channels(_IMAGENET_MEAN, x),
}
# How much more accurate another convention must be, at least, to be reported (besides being significant).
BETTER_BY = 0.05


def _channels(values: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
    """Per-channel constants shaped for (N, C, H, W); one channel takes their mean."""
    v = torch.tensor(values if x.shape[1] == len(values) else (sum(values) / len(values),) * x.shape[1])
    return v.view(1, -1, 1, 1).to(x)


def check_preprocessing(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                        outputs: torch.Tensor) -> ModelCheck:
    """No convention in CONVENTIONS may make the model clearly more accurate than the given images (`outputs`):
    by BETTER_BY at least, and significantly (one-sided exact McNemar test on the images right in only one, at
    level 1 - CONFIDENCE over all the conventions: Bonferroni)."""
    given = outputs.argmax(1) == labels
    best: tuple[float, str, float] | None = None
    for name, convert in CONVENTIONS.items():
        other = logits(model, convert(images), BATCH).argmax(1) == labels
        gain, up, down = float(other.float().mean() - given.float().mean()), int((other & ~given).sum()), \
            int((given & ~other).sum())
        if gain >= BETTER_BY and up + down:
            p = binomtest(up, up + down, 0.5, alternative="greater").pvalue
            if p < (1 - CONFIDENCE) / len(CONVENTIONS) and (best is None or gain > best[0]):
                best = (gain, name, p)
    accuracy = float(given.float().mean())
    if best is not None:
        gain, name, p = best
        message = (f"the model is more accurate with its inputs {name} ({accuracy + gain:.3f} vs {accuracy:.3f}, "
                   f"p={p:.2g}): it probably expects other inputs; check the input bounds and the normalisation "
                   "(mean, std)")
        return ModelCheck("preprocessing", False, message, {"accuracy": accuracy, "better": name,
                                                            "better_accuracy": accuracy + gain, "p_value": p})
    return ModelCheck("preprocessing", True, f"no common input convention is clearly more accurate than the given one "
                                             f"({accuracy:.3f})", {"accuracy": accuracy})


def check_deterministic(model: nn.Module, images: torch.Tensor, first: torch.Tensor) -> ModelCheck:
    """A second forward pass on the same images must give the same outputs as `first`."""
    again = logits(model, images, BATCH)
    diff = _relative_difference(first, again)
    changed = int((first.argmax(1) != again.argmax(1)).sum())
    figures = {"relative_difference": diff, "predictions_changed": changed, "n": len(images)}
    if diff > SAME_OUTPUT:
        return ModelCheck("deterministic", False, f"two forward passes on the same {len(images)} images differ (by "
                                                  f"{diff:.2g} of the outputs' scale; {changed} predictions changed): "
                                                  "the forward pass is random (noise or dropout at inference?), "
                                                  "which makes attacks look weaker than they are; evaluate the model "
                                                  "deterministically", figures)
    return ModelCheck("deterministic", True, f"two forward passes agree (difference {diff:.2g} of the scale)", figures)


def check_batch_independent(model: nn.Module, images: torch.Tensor, in_batch: torch.Tensor) -> ModelCheck:
    """The first ALONE images' outputs one at a time must be their outputs in the batch (`in_batch`)."""
    alone = logits(model, images[:ALONE], 1)
    diff = _relative_difference(in_batch[:ALONE], alone)
    changed = int((in_batch[:ALONE].argmax(1) != alone.argmax(1)).sum())
    figures = {"relative_difference": diff, "predictions_changed": changed, "n": len(alone)}
    if diff > SAME_OUTPUT:
        return ModelCheck("batch independent", False, f"{len(alone)} images classified one at a time differ from "
                                                      f"the same images in a batch (by {diff:.2g} of the outputs' "
                                                      f"scale; {changed} predictions changed): the output depends on "
                                                      "the other images of the batch (batch norm in training mode?)",
                          figures)
    return ModelCheck("batch independent", True, f"outputs alone and in a batch agree (difference {diff:.2g})",
                      figures)


def check_logits(model: nn.Module, outputs: torch.Tensor) -> ModelCheck:
    """`outputs` (the model's, on the checked images) must be logits, not probabilities (`probability_kind`). A
    model wrapped in `LogOfProbabilities` passes with a warning, its softmax attacked through its log; so do
    outputs that all lie in [0, 1] without summing to 1 (a sigmoid, or small logits: their log is not taken)."""
    figures = {"probabilities": "no", "min": float(outputs.min()), "max": float(outputs.max())}
    if isinstance(model, LogOfProbabilities):
        return ModelCheck("logits", True, f"the model returns probabilities ({model.kind}); the attacks use their "
                                          "log, whose gradients still vanish where the softmax saturates (the "
                                          "gradients check counts those): return the logits to be sure",
                          {**figures, "probabilities": "yes, attacked through their log"}, warning=True)
    kind = probability_kind(outputs)
    if kind == SOFTMAX:
        return ModelCheck("logits", False, f"the model returns probabilities ({kind}): the loss of softmax outputs "
                                           "saturates and its gradients vanish; return the logits (drop the final "
                                           "softmax) or wrap the model in labelflip_models.models.io."
                                           "LogOfProbabilities", {**figures, "probabilities": "yes"})
    if kind == UNIT_VALUES:
        return ModelCheck("logits", True, f"the outputs look like probabilities ({kind}, e.g. a sigmoid): if they "
                                          "are, the attacks' losses saturate; return the logits",
                          {**figures, "probabilities": "maybe"}, warning=True)
    return ModelCheck("logits", True, f"outputs are logits (range {figures['min']:.3g} to {figures['max']:.3g})",
                      figures)


def _margin(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each image's true-class logit minus its largest other logit (Carlini-Wagner's and DLR's numerator)."""
    others = outputs.scatter(1, labels[:, None], float("-inf"))
    return outputs.gather(1, labels[:, None]).squeeze(1) - others.max(1).values


def check_gradients(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> ModelCheck:
    """The logit margin's input gradient must be finite and nonzero at all but MAX_DEAD_GRADIENTS of the images.

    The margin, not the cross-entropy: a confident honest model's cross-entropy underflows to a zero gradient in
    float32 on some images (a margin above ~100), which is the loss saturating, not the model hiding its gradient;
    the large-ε probe (gate/evaluation_checks.py) catches saturation that defeats the attacks."""
    device = next(model.parameters()).device
    dead = saturated = 0
    with ieee_fp32():
        for i in range(0, len(images), BATCH):
            x = images[i:i + BATCH].to(device).requires_grad_(True)
            y = labels[i:i + BATCH].to(device)
            out = model(x).float()
            (grad,) = torch.autograd.grad(_margin(out, y).sum(), x)
            dead += int(_dead(grad).sum())
            # The cross-entropy's gradient in the logits, softmax - one-hot, is exactly zero: saturated.
            saturated += int((F.softmax(out.detach(), 1) == F.one_hot(y, out.shape[1])).all(1).sum())
    share = dead / len(images) if len(images) else 0.0
    figures = {"dead": dead, "n": len(images), "share": share, "cross_entropy_saturated": saturated}
    if share > MAX_DEAD_GRADIENTS:
        return ModelCheck("gradients", False, f"the model has no usable input gradient at {dead} of {len(images)} "
                                              f"images ({share:.0%}; zero or not finite): gradient attacks cannot "
                                              "move them (preprocessing that cannot be differentiated, such as "
                                              "rounding the input, or a detached input?); give the attacks a "
                                              "differentiable model", figures)
    return ModelCheck("gradients", True, f"usable input gradients at {len(images) - dead} of {len(images)} images",
                      figures)


def _dead(grad: torch.Tensor) -> torch.Tensor:
    flat = grad.flatten(1)
    return ~torch.isfinite(flat).all(1) | (flat == 0).all(1)


def model_checks(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 class_names: list[str]) -> list[ModelCheck]:
    """Every check, on `images` (pixel space, as the attacks see them) and their `labels`."""
    if model.training:
        raise ValueError("the model is in training mode; call model.eval() before checking it")
    if len(images) != len(labels) or not len(images):
        raise ValueError(f"need images with one label each, got {len(images)} images and {len(labels)} labels")
    if int(labels.max()) >= len(class_names) or int(labels.min()) < 0:
        raise ValueError(f"labels must lie in [0, {len(class_names)}), got {int(labels.min())}..{int(labels.max())}")
    outputs = logits(model, images, BATCH)
    return [check_accuracy(outputs, labels, class_names), check_preprocessing(model, images, labels, outputs),
            check_deterministic(model, images, outputs),
            check_batch_independent(model, images, outputs), check_logits(model, outputs),
            check_gradients(model, images, labels)]


def checks_on_test_images(model: nn.Module, data: Dataset, bounds: Bounds,
                          at_most: int | None = None) -> list[ModelCheck]:
    """Every check on the first images_per_class(K) test images of each class of `data`, in pixel space; with
    `at_most`, on about that many images in all (a quick look at a large model costs no more than its attack)."""
    per_class = images_per_class(data.num_classes)
    if at_most is not None:
        per_class = max(1, min(per_class, -(-at_most // data.num_classes)))
    indices = balanced_subset(data.test_labels, per_class, data.num_classes, at_most=True)
    images, labels = pixel_images(data, indices, bounds)
    return model_checks(model, images, labels, list(data.class_names))


def failed_summary(checks: list[ModelCheck]) -> str:
    """The failed checks' one-line messages, joined: "name: message; ..." (empty when all passed)."""
    return "; ".join(f"{c.name}: {c.message}" for c in checks if not c.passed)


def warning_summary(checks: list[ModelCheck]) -> str:
    """The passed checks' warnings, joined like failed_summary's messages (empty when there are none)."""
    return "; ".join(f"{c.name}: {c.message}" for c in checks if c.passed and c.warning)
