"""The memo a model's runs share (attacks/memo.py): FGSM at several ε takes one gradient per image, with results
bit-identical to runs without it, and nothing but the same images and settings hits."""

import pytest
import torch
from torch import nn

from labelflip_models.attacks import FGSM, LinfPGD, kernels, run_attack
from labelflip_models.attacks.memo import Memo, Memos, fingerprint

EPSILONS = (0.02, 0.05, 0.1, 0.2)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).eval()


def _images(n: int = 50, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.fixture
def gradients(monkeypatch) -> list[int]:
    """How many batches' loss gradients the kernels computed."""
    calls = []
    real = kernels.loss_gradient

    def counted(*args, **kwargs):
        calls.append(len(args[1]))
        return real(*args, **kwargs)

    monkeypatch.setattr(kernels, "loss_gradient", counted)
    monkeypatch.setattr("labelflip_models.attacks.run.loss_gradient", counted)
    return calls


def _fgsm(model, images, labels, memo, **kwargs):
    return [run_attack(model, images, labels, FGSM(), e, batch_size=16, engine="native-fp32", memo=memo, **kwargs)
            for e in EPSILONS]


def test_fgsm_at_four_epsilons_takes_one_gradient_per_batch_and_the_same_adversarials(gradients):
    model, (images, labels) = _model(), _images()
    plain = _fgsm(model, images, labels, None)
    assert len(gradients) == 4 * 4  # four batches (16, 16, 16, 2) per ε
    gradients.clear()
    memo = Memo()
    shared = _fgsm(model, images, labels, memo)
    assert len(gradients) == 4
    for a, b in zip(plain, shared, strict=True):
        assert torch.equal(a.clipped, b.clipped) and torch.equal(a.adv_pred, b.adv_pred)
        assert torch.equal(a.clean_pred, b.clean_pred)
    assert memo.hits == 3 * 4 + 3  # the gradients of ε 2-4 and their clean predictions


def test_other_images_labels_or_a_multi_step_attack_never_hit(gradients):
    model, (images, labels) = _model(), _images()
    memo = Memo()
    _fgsm(model, images[:20], labels[:20], memo)
    gradients.clear()
    other = images[:20].clone()
    other[0, 0, 0, 0] = 1 - other[0, 0, 0, 0]  # one pixel of one image
    run_attack(model, other, labels[:20], FGSM(), 0.1, batch_size=16, engine="native-fp32", memo=memo)
    assert gradients == [16]  # the first batch's gradient anew; the second batch is unchanged and hits
    gradients.clear()
    relabelled = (labels[:20] + 1) % 10
    run_attack(model, images[:20], relabelled, FGSM(), 0.1, batch_size=16, engine="native-fp32", memo=memo)
    assert gradients == [16, 4]
    gradients.clear()
    # PGD starts from a random point and steps 40 times: no gradient of it is shared.
    before = memo.hits
    run_attack(model, images[:20], labels[:20], LinfPGD(), 0.1, batch_size=16, engine="native-fp32", memo=memo)
    assert len(gradients) == 2 * 40 and memo.hits == before + 1  # only the clean predictions


def test_a_memo_holds_at_most_its_bytes_oldest_out_first():
    memo = Memo(max_bytes=100)
    for key in "abc":
        memo.get(key, lambda: torch.zeros(10))  # 40 bytes each
    assert memo.hits == 0
    memo.get("c", lambda: torch.ones(10))
    memo.get("a", lambda: torch.ones(10))  # evicted: computed again
    assert (memo.hits, memo.misses) == (1, 4)
    big = memo.get("big", lambda: torch.zeros(100))  # larger than the memo: returned, not kept
    assert len(big) == 100 and memo.get("big", lambda: torch.ones(1)).tolist() == [1.0]


def test_fingerprint_sees_values_dtype_shape_and_not_layout():
    x = torch.rand(2, 3, 4, 4)
    assert fingerprint(x) == fingerprint(x.contiguous(memory_format=torch.channels_last))
    assert fingerprint(x) != fingerprint(x.double())
    assert fingerprint(x) != fingerprint(x.reshape(2, 3, 16))
    y = x.clone()
    y[1, 2, 3, 3] += 1e-7
    assert fingerprint(x) != fingerprint(y)


def test_memos_give_each_model_object_its_own():
    memos, a, b = Memos(), _model(0), _model(0)
    assert memos(a) is memos(a) and memos(a) is not memos(b)


def test_batches_too_large_to_keep_are_computed_without_a_fingerprint(gradients, monkeypatch):
    model, (images, labels) = _model(), _images(20)
    memo = Memo(max_bytes=4 * 64 * 4 - 1)  # less than either batch's gradient (16 and 4 images of 8x8)
    hashed = []
    real = fingerprint
    monkeypatch.setattr("labelflip_models.attacks.run.fingerprint", lambda *t: hashed.append(len(t)) or real(*t))
    _fgsm(model, images, labels, memo)
    assert len(gradients) == 4 * 2 and hashed == [1] * 4  # each run's clean predictions only
