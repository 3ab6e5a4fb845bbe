"""What a gate session's result files record of each model it tests, kept beside the models rather than on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..attacks.memo import Memo, Memos
from ..runs.results import model_block


class ModelsUnderTest:
    """Models the session loaded, with where they came from. A model it did not load (a `labelflip_model` fixture
    override) is described by its weights alone."""

    def __init__(self) -> None:
        self._known: dict[int, tuple[nn.Module, dict[str, Any]]] = {}
        self._memos = Memos()

    def add(self, model: nn.Module, *, arch: str | None = None, path: str | Path | None = None,
            reference: dict[str, Any] | None = None) -> nn.Module:
        self._known[id(model)] = (model, {"arch": arch, "path": path, "reference": reference})
        return model

    def memo(self, model: nn.Module) -> Memo:
        """What the model's cases share (attacks/memo.py): a session never changes the models it tests."""
        return self._memos(model)

    def info(self, model: nn.Module) -> dict[str, Any]:
        known = self._known.get(id(model))
        return model_block(model, **known[1]) if known and known[0] is model else model_block(model)
