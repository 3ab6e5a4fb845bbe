"""What every attack definition shares: its identity (name, norm, kind) and parameters that check themselves.

Parameters are validated when the attack is built, so a bad value from a profile or the command line is one
ConfigError naming the attack and the parameter, not a Foolbox traceback in the middle of a run.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from ..errors import ConfigError

with warnings.catch_warnings():
    # foolbox 3.3.4 imports scipy.ndimage.filters, a namespace scipy deprecated: not the user's to act on.
    warnings.filterwarnings("ignore", "Please import `gaussian_filter`", DeprecationWarning)
    import foolbox  # noqa: F401  (the first import, so that it happens under this filter)


@dataclass(frozen=True)
class Rule:
    """What a parameter value must be: `text` completes "must be …" in the error message."""

    text: str
    ok: Callable[[Any], bool]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def at_least(low: int) -> Rule:
    return Rule(f"a whole number >= {low}", lambda v: _whole(v) and v >= low)


POSITIVE = Rule("a positive finite number", lambda v: _number(v) and v > 0)
NON_NEGATIVE = Rule("a finite number >= 0", lambda v: _number(v) and v >= 0)
FLAG = Rule("true or false", lambda v: isinstance(v, bool))


def one_of(*choices: str) -> Rule:
    return Rule(f"one of {', '.join(map(repr, choices))}", lambda v: v in choices)


def param(default: Any, rule: Rule) -> Any:
    """A dataclass field with Foolbox's default and the rule its values must follow."""
    return field(default=default, metadata={"rule": rule})


class AttackBase(ABC):
    """Base of the attack dataclasses; subclasses set the ClassVars and declare fields with `param`."""

    name: ClassVar[str]
    norm: ClassVar[str]  # a key of bounds.NORMS: the norm the attack bounds or minimises
    minimal: ClassVar[bool]  # True: finds the smallest adversarial it can (no ε); False: stays within a given ε
    # The implementation the attack is defined by (engine "reference"), and whether labelflip has its own kernel.
    reference: ClassVar[str] = "foolbox"
    native_kernel: ClassVar[bool] = False

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            value, rule = getattr(self, f.name), f.metadata["rule"]
            if not rule.ok(value):
                raise ConfigError(f"attack {self.name!r}: {f.name} must be {rule.text}, got {value!r}")

    def settings(self) -> dict[str, Any]:
        """Everything that determines the attack's output besides the model and the inputs."""
        return asdict(self)  # type: ignore[call-overload]
