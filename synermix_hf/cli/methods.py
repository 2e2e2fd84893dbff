"""The paper's six configurations: names, directory names, SynerMix flags and the methods each combines.

| name | beta | inter-class mixup |
| --- | --- | --- |
| wo-RA&ER (the baseline) | 0 | none |
| w-RA | 0.5 | none |
| w-ER(M) | 0 | MixUp |
| w-ER(MM) | 0 | Manifold MixUp |
| w-RA&ER(M) | 0.1 | MixUp (combines w-RA and w-ER(M)) |
| w-RA&ER(MM) | 0.1 | Manifold MixUp (combines w-RA and w-ER(MM)) |

Every configuration uses alpha 1 (lambda ~ Beta(1, 1)).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .errors import UsageError

__all__ = ["BASELINE", "METHODS", "METHODS_BY_NAME", "Method", "resolve_methods"]

@dataclass(frozen=True)
class Method:
    """One configuration of the paper: its name, directory name, SynerMix flags and the two methods it combines."""

    name: str
    slug: str
    beta: float
    inter_mixup: str
    components: tuple[str, ...] = ()

    @property
    def inter_label(self) -> str:
        return {"none": "none", "mixup": "MixUp", "manifold_mixup": "Manifold MixUp"}[self.inter_mixup]

    def flags(self, alpha: float | None = 1.0) -> list[str]:
        flags = ["--beta", f"{self.beta:g}", "--inter_mixup", self.inter_mixup]
        return flags + (["--alpha", f"{alpha:g}"] if alpha is not None else [])


BASELINE = "wo-RA&ER"
METHODS: tuple[Method, ...] = (
    Method("wo-RA&ER", "wo-RA-ER", 0.0, "none"),
    Method("w-RA", "w-RA", 0.5, "none"),
    Method("w-ER(M)", "w-ER-M", 0.0, "mixup"),
    Method("w-ER(MM)", "w-ER-MM", 0.0, "manifold_mixup"),
    Method("w-RA&ER(M)", "w-RA-ER-M", 0.1, "mixup", components=("w-RA", "w-ER(M)")),
    Method("w-RA&ER(MM)", "w-RA-ER-MM", 0.1, "manifold_mixup", components=("w-RA", "w-ER(MM)")),
)
METHODS_BY_NAME: dict[str, Method] = {m.name: m for m in METHODS}


def _key(text: str) -> str:
    return "".join(c for c in str(text).lower() if c.isalnum())


_ALIASES = {**{_key(m.name): m.name for m in METHODS}, **{_key(m.slug): m.name for m in METHODS},
            "baseline": BASELINE}


def resolve_methods(names: Iterable[str] | None) -> list[Method]:
    """Methods by name (the paper's, case and punctuation ignored: `w-RA&ER(MM)`, `w-ra-er-mm`, `baseline`), in the
    paper's order. None: all six."""
    if not names:
        return list(METHODS)
    chosen = set()
    for name in names:
        key = _key(name)
        if key not in _ALIASES:
            raise UsageError(f"--methods: unknown method {name!r}. Valid: {', '.join(m.name for m in METHODS)} "
                             "(quote the names in a shell; case and punctuation are ignored, so w-ra-er-mm works too; "
                             "'baseline' means wo-RA&ER).")
        chosen.add(_ALIASES[key])
    return [m for m in METHODS if m.name in chosen]
