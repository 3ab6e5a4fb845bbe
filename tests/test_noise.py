"""White-noise probe: seeded noise, prediction histograms, and the homogeneity test between two runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import binomtest, chi2
from torch import nn

from labelflip_models.analysis.noise import compare_histograms, noise_probe, noise_summary, uniform_noise
from labelflip_models.analysis.stats import wilson_interval
from labelflip_models.errors import ConfigError, DataError
from labelflip_models.models.architectures import predict

SHAPE = (1, 8, 8)


class MeanThreshold(nn.Module):
    """Three classes: 1 if the mean pixel exceeds `cut`, else 0; class 2 is never predicted."""

    def __init__(self, cut: float = 0.5) -> None:
        super().__init__()
        self.cut = nn.Parameter(torch.tensor(cut), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean((1, 2, 3))
        return torch.stack([self.cut - m, m - self.cut, torch.full_like(m, -1e9)], 1)


def test_uniform_noise_is_seeded_and_bounded():
    a = uniform_noise(500, SHAPE, (-0.5, 0.5), seed=3)
    assert torch.equal(a, uniform_noise(500, SHAPE, (-0.5, 0.5), seed=3))
    assert not torch.equal(a, uniform_noise(500, SHAPE, (-0.5, 0.5), seed=4))
    assert a.shape == (500, *SHAPE) and a.dtype == torch.float32
    assert a.min() >= -0.5 and a.max() <= 0.5
    assert a.mean().item() == pytest.approx(0.0, abs=0.01)  # sd of the mean of 32000 pixels: 0.0016
    with pytest.raises(ConfigError):
        uniform_noise(0, SHAPE, (0, 1), seed=0)
    with pytest.raises(ConfigError):
        uniform_noise(5, SHAPE, (1, 0), seed=0)


def test_probe_counts_known_histogram():
    model = MeanThreshold().eval()
    assert noise_probe(model, 300, SHAPE, (0.6, 1.0)).tolist() == [0, 300, 0]  # every mean exceeds 0.5
    assert noise_probe(model, 300, SHAPE, (0.0, 0.4)).tolist() == [300, 0, 0]
    counts = noise_probe(model, 2000, SHAPE, (0.0, 1.0), seed=1)
    assert counts[2] == 0 and counts.sum() == 2000
    assert binomtest(int(counts[1]), 2000, 0.5).pvalue > 0.001  # the mean is symmetric about 0.5


def test_probe_does_not_depend_on_batch_size():
    model = MeanThreshold(0.51).eval()
    noise = uniform_noise(1000, SHAPE, (0.0, 1.0), seed=5)
    expected = np.bincount(predict(model, noise).numpy(), minlength=3)
    for batch_size in (7, 128, 1000, 5000):
        assert noise_probe(model, 1000, SHAPE, (0.0, 1.0), seed=5, batch_size=batch_size).tolist() == \
            expected.tolist()


def test_probe_rejects_training_mode():
    with pytest.raises(ConfigError, match="training mode"):
        noise_probe(MeanThreshold().train(), 10, SHAPE, (0.0, 1.0))


def test_noise_summary():
    names = ["a", "b", "c", "d"]
    out = noise_summary(np.array([5, 20, 0, 20]), names)
    assert out["n"] == 45 and out["top"] == ["b", "d", "a", "c"]  # ties keep class order
    b = out["histogram"]["b"]
    assert b["count"] == 20 and b["share"] == pytest.approx(20 / 45)
    assert b["ci"] == pytest.approx([float(v) for v in wilson_interval(20, 45)])
    json.dumps(out, allow_nan=False)
    with pytest.raises(DataError):
        noise_summary(np.zeros(4), names)
    with pytest.raises(DataError):
        noise_summary(np.ones(3), names)


def reference_chi2(a: np.ndarray, b: np.ndarray) -> tuple[float, int, float]:
    table = np.array([a, b], dtype=float)
    table = table[:, table.sum(0) > 0]
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    stat = float(((table - expected) ** 2 / expected).sum())
    dof = table.shape[1] - 1
    return stat, dof, float(chi2.sf(stat, dof))


@pytest.mark.parametrize("a,b", [([50, 30, 0, 20], [40, 45, 0, 15]), ([10, 90], [20, 80]), ([5, 5, 5], [5, 5, 5])])
def test_compare_histograms_matches_pearson(a, b):
    out = compare_histograms(np.array(a), np.array(b))
    stat, dof, p = reference_chi2(np.array(a), np.array(b))
    assert out["test"] == "chi-square homogeneity"
    assert out["statistic"] == pytest.approx(stat) and out["dof"] == dof and out["p_value"] == pytest.approx(p)
    json.dumps(out, allow_nan=False)


def test_compare_histograms_detects_shift_and_handles_one_class():
    assert compare_histograms(np.array([500, 500, 0]), np.array([300, 700, 0]))["p_value"] < 1e-10
    assert compare_histograms(np.array([0, 40, 0]), np.array([0, 70, 0])) == {
        "test": "chi-square homogeneity", "statistic": 0.0, "dof": 0, "p_value": 1.0}
    with pytest.raises(DataError):
        compare_histograms(np.array([1, 2]), np.array([1, 2, 3]))
    with pytest.raises(DataError):
        compare_histograms(np.array([0, 0]), np.array([1, 2]))
