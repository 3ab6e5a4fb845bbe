"""The gate's practical margins: how much less robust a model may get before the gate fails it. Cheap to import
(no numpy, no torch): the settings hold them."""

from __future__ import annotations

import math
from dataclasses import dataclass

# The defaults, chosen from retrains of the reference models with other seeds (docs/gate.md, "Margins").
RATE_MARGIN = 0.05
NORM_MARGIN = 0.10


@dataclass(frozen=True)
class Margins:
    """`rate` is absolute on flip rates (robust accuracy, attack success), `norm` relative on minimal norms."""

    rate: float = RATE_MARGIN
    norm: float = NORM_MARGIN

    def __post_init__(self) -> None:
        for name, value in (("rate", self.rate), ("norm", self.norm)):
            if not (math.isfinite(value) and 0 <= value < 1):
                raise ValueError(f"the {name} margin must lie in [0, 1), got {value}")
