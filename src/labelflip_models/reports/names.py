"""File names of the report's images, relative to the report directory; HTML and report.json refer to them."""

from __future__ import annotations

import re
from typing import Any

from .group import is_minimal, subject


def slug(text: str) -> str:
    """Dataset and attack names as safe file-name parts (no separators, no leading dot)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "unnamed"


def heatmap_name(result: dict[str, Any]) -> str:
    eps = "min" if is_minimal(result) else f"{result['attack']['epsilon']:g}"
    return f"heatmaps/{slug(subject(result))}-{slug(result['attack']['name'])}-eps{eps}.png"


def trend_name(dataset: str, attack: str) -> str:
    return f"trends/{slug(dataset)}-{slug(attack)}.png"


def noise_name(dataset: str) -> str:
    return f"noise/{slug(dataset)}.png"
