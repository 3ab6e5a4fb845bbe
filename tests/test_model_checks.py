"""The model checks (runs/model_checks.py) on the Fashion-MNIST reference model as it is and broken in each of the
ways that make attacks meaningless: each break is flagged by its own check, and the model as it is by none."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labelflip_models.data import balanced_subset, load_dataset
from labelflip_models.models.cache import load_or_train
from labelflip_models.runs.model_checks import check_logits, model_checks

# name: (forward of the broken model around the reference model m, the checks that must fail)
BROKEN = {
    "as it is": (lambda m, x: m(x), set()),
    "input rounded to 8 bits, no straight-through gradient": (lambda m, x: m(torch.round(x * 255) / 255),
                                                              {"gradients"}),
    "softmax outputs": (lambda m, x: F.softmax(m(x), 1), {"logits"}),
    "logits times 1000": (lambda m, x: m(x) * 1000, {"gradients"}),
    "noise at inference": (lambda m, x: m(x + 0.05 * torch.randn_like(x)), {"deterministic", "batch independent"}),
    "dropout at inference": (lambda m, x: m(F.dropout(x, 0.1, training=True)), {"deterministic", "batch independent"}),
    "two classes swapped": (lambda m, x: m(x)[:, [1, 0, *range(2, 10)]], {"accuracy"}),
    "normalised twice": (lambda m, x: m((x - 0.5) / 0.5), {"preprocessing"}),
    "inputs expected in 0-255": (lambda m, x: m(x * 255), {"preprocessing", "gradients"}),
}


class Broken(nn.Module):
    def __init__(self, model: nn.Module, forward) -> None:
        super().__init__()
        self.model, self.broken = model, forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.broken(self.model, x)


@pytest.fixture(scope="module")
def reference():
    data = load_dataset("fashion-mnist")
    images, labels = data.tensors("test", balanced_subset(data.test_labels, 100, data.num_classes))
    return load_or_train(data).model.eval(), images, labels, list(data.class_names)


@pytest.mark.slow
@pytest.mark.parametrize("name", BROKEN)
def test_each_break_is_flagged_by_its_check(reference, name):
    model, images, labels, names = reference
    forward, expected = BROKEN[name]
    checks = model_checks(Broken(model, forward).eval(), images, labels, names)
    assert [c.name for c in checks] == ["accuracy", "preprocessing", "deterministic", "batch independent", "logits",
                                        "gradients"]
    failed = {c.name for c in checks if not c.passed}
    assert failed == expected, [c.message for c in checks if not c.passed]
    for check in checks:
        assert "\n" not in check.message and check.message


def test_a_class_classified_below_chance_is_named_with_where_it_went(reference):
    model, images, labels, names = reference
    swapped = Broken(model, BROKEN["two classes swapped"][0]).eval()
    (accuracy, *_) = model_checks(swapped, images, labels, names)
    assert "'T-shirt/top' (" in accuracy.message and "most as 'Trouser'" in accuracy.message
    assert "class order" in accuracy.message


def test_log_probabilities_are_logits_enough():
    logits = torch.randn(8, 10)
    assert check_logits(F.log_softmax(logits, 1)).passed and check_logits(logits).passed
    assert not check_logits(F.softmax(logits, 1)).passed


def test_bad_input_is_refused(reference):
    model, images, labels, names = reference
    with pytest.raises(ValueError, match="training mode"):
        model_checks(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).train(), images, labels, names)
    with pytest.raises(ValueError, match="one label each"):
        model_checks(model, images, labels[:5], names)
    with pytest.raises(ValueError, match="labels must lie in"):
        model_checks(model, images, labels, names[:5])
