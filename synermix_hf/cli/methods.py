"""The paper's six configurations: names, SynerMix flags and the methods each combines; and the one file-name form
of a method, for directory names, log names, the run log and the model card.

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

from ..mixup import INTER_MIXUPS
from .errors import UsageError

__all__ = ["BASELINE", "METHODS", "METHODS_BY_NAME", "Method", "describe_method", "method_slug", "resolve_methods"]


def method_slug(beta: float, inter_mixup: str) -> str:
    """The file-name form of a method, for any `beta` and inter-class mixup: `baseline`, `synermix-b0.5`, `mixup`,
    `manifold_mixup`, `synermix-b0.1-mixup`, `synermix-b0.1-manifold_mixup`, `cutmix`, ...

    It names a run's default output directory (`runs/<dataset>-<model>-<method>-<id>`: changing it would stop a rerun
    from finding an interrupted run), a comparison's run directories and log files, and the method in the run log and
    the model card's tags.
    """
    if beta > 0:
        return f"synermix-b{beta:g}" + ("" if inter_mixup == "none" else f"-{inter_mixup}")
    return "baseline" if inter_mixup == "none" else inter_mixup


# The label of each inter-class mixup in a sentence ("" when there is none), from `INTER_MIXUPS`.
_INTER_LABELS = {name: entry.label if entry.mixes_batch else "" for name, entry in INTER_MIXUPS.items()}


def describe_method(beta: float, inter_mixup: str, alpha: float) -> str:
    """What a run trains, in one sentence for the console: the loss, the paper's name of the configuration when it is
    one, and, when SynerMix is off, how to turn it on."""
    inter = _INTER_LABELS.get(inter_mixup, inter_mixup)
    paper = next((m.name for m in METHODS if m.beta == beta and m.inter_mixup == inter_mixup), None)
    named = f" (the paper's {paper})" if paper else ""
    if beta > 0:
        inter_part = (f"{1 - beta:g} x {inter} of the augmented view (alpha {alpha:g})" if inter else
                      f"{1 - beta:g} x cross-entropy of the augmented view")
        return (f"SynerMix{named}: {beta:g} x intra-class mixup of the unaugmented images' penultimate features + "
                f"{inter_part}.")
    if inter:
        return (f"{inter} only (alpha {alpha:g}){named}, SynerMix off (--beta 0). Add --beta 0.1 to combine it with "
                "SynerMix's intra-class mixup.")
    return ("the plain baseline (cross-entropy of the augmented view)" + named + ", SynerMix off: --beta 0 and "
            "--inter_mixup none are the authors' defaults. Add --beta 0.1 --inter_mixup manifold_mixup for SynerMix "
            "(w-RA&ER(MM)).")


@dataclass(frozen=True)
class Method:
    """One configuration of the paper: its name (the paper's label), SynerMix flags and the two methods it combines."""

    name: str
    beta: float
    inter_mixup: str
    components: tuple[str, ...] = ()

    @property
    def slug(self) -> str:
        """The file-name form (`method_slug`): `w-RA&ER(MM)` -> `synermix-b0.1-manifold_mixup`."""
        return method_slug(self.beta, self.inter_mixup)

    @property
    def inter_label(self) -> str:
        """The inter-class mixup's label ("none", "MixUp", "Manifold MixUp", "CutMix"), from `INTER_MIXUPS`."""
        return INTER_MIXUPS[self.inter_mixup].label

    def flags(self, alpha: float | None = 1.0) -> list[str]:
        flags = ["--beta", f"{self.beta:g}", "--inter_mixup", self.inter_mixup]
        return flags + (["--alpha", f"{alpha:g}"] if alpha is not None else [])


BASELINE = "wo-RA&ER"
METHODS: tuple[Method, ...] = (
    Method("wo-RA&ER", 0.0, "none"),
    Method("w-RA", 0.5, "none"),
    Method("w-ER(M)", 0.0, "mixup"),
    Method("w-ER(MM)", 0.0, "manifold_mixup"),
    Method("w-RA&ER(M)", 0.1, "mixup", components=("w-RA", "w-ER(M)")),
    Method("w-RA&ER(MM)", 0.1, "manifold_mixup", components=("w-RA", "w-ER(MM)")),
)
METHODS_BY_NAME: dict[str, Method] = {m.name: m for m in METHODS}


def _key(text: str) -> str:
    return "".join(c for c in str(text).lower() if c.isalnum())


# The paper's names and the file-name forms (the baseline's is `baseline`).
_ALIASES = {**{_key(m.name): m.name for m in METHODS}, **{_key(m.slug): m.name for m in METHODS}}


def resolve_methods(names: Iterable[str] | None) -> list[Method]:
    """Methods by name (the paper's, case and punctuation ignored: `w-RA&ER(MM)`, `w-ra-er-mm`, `baseline`; or the
    file-name form, `synermix-b0.1-manifold_mixup`), in the paper's order. None: all six."""
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
