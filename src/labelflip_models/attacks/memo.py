"""What several runs on one model share: its predictions on a set of clean images, and a single-step attack's loss
gradient at them. The gate's FGSM cases attack the same images at four ε; FGSM's step is ε times the sign of one
gradient, so that gradient, and the clean predictions every run starts from, are computed once.

A Memo belongs to one model, which must not change while the memo is in use (the gate's models under test, one
model of the zoo). Entries are keyed by the images' content and the settings that change the numbers, so other
images or settings never hit, and a hit returns what the computation would return, bit for bit.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch

# At most this much is held at once, oldest out first. An entry larger than this is computed and not kept, so large
# images (ImageNet-sized chunks) cost only their fingerprint.
MAX_BYTES = 64 * 2**20


def fingerprint(*tensors: torch.Tensor) -> str:
    """A digest of the tensors' dtypes, shapes and values (whatever their memory layout)."""
    digest = hashlib.sha256()
    for t in tensors:
        flat = t.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{flat.dtype} {tuple(t.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class Memo:
    """Tensors computed on one model, by key, up to `max_bytes` in all."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self.hits = self.misses = 0

    def holds(self, like: torch.Tensor) -> bool:
        """Whether a value of this tensor's size would be kept (else a caller can spare the key's fingerprint)."""
        return _size(like) <= self.max_bytes

    def get(self, key: Hashable, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """compute(), or what an earlier call with the same key computed. Callers must not change the result in
        place: a later hit returns the same tensor."""
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
            return self._entries[key]
        self.misses += 1
        value = compute()
        if self.holds(value):
            self._entries[key] = value
            while sum(map(_size, self._entries.values())) > self.max_bytes:
                self._entries.popitem(last=False)
        return value


def _size(t: torch.Tensor) -> int:
    return t.element_size() * t.nelement()


class Memos:
    """One Memo per model object, for a caller that runs several models. Each model is held here, so that no other
    model can take its id while the memo is in use."""

    def __init__(self) -> None:
        self._held: dict[int, tuple[object, Memo]] = {}

    def __call__(self, model: object) -> Memo:
        held = self._held.get(id(model))
        if held is None or held[0] is not model:
            held = self._held[id(model)] = (model, Memo())
        return held[1]
