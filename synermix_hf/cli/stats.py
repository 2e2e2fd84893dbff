"""What a comparison's runs say: one run's final and best accuracy and curves, and their statistics over seeds.

Small pure functions of the runs' `all_results.json` and `trainer_state.json`: `summarize_run`, `read_run`,
`mean_std`, `aggregate`, `gains`, `aggregate_curves`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .methods import BASELINE, METHODS_BY_NAME

__all__ = ["AGGREGATED", "aggregate", "aggregate_curves", "gains", "mean_std", "read_run", "summarize_run"]


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if not math.isnan(value) else None


def summarize_run(all_results: Mapping[str, Any], log_history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Final and best accuracy, feature metrics and per-epoch curves of one run.

    Args:
        all_results: The run's `all_results.json`.
        log_history: `log_history` of its `trainer_state.json` (one training and one evaluation entry per epoch).

    Returns:
        `final_accuracy` (`eval_accuracy` of the final evaluation), `best_accuracy` (the highest accuracy of any
        evaluation, the per-epoch ones and the final one) and `best_epoch`, `eval_loss`, `cohesion`, `separability`,
        `train_runtime`, and `curves`: `{"eval": {"epoch", "accuracy", "loss"}, "train": {"epoch", "loss"}}`.
    """
    evals = [e for e in log_history if "eval_accuracy" in e]
    trains = [e for e in log_history if "loss" in e and "eval_loss" not in e]
    final = float(all_results["eval_accuracy"])
    best, best_epoch = final, all_results.get("epoch")
    for entry in evals:
        if float(entry["eval_accuracy"]) > best:
            best, best_epoch = float(entry["eval_accuracy"]), entry.get("epoch")
    return {
        "final_accuracy": final,
        "best_accuracy": best,
        "best_epoch": best_epoch,
        "eval_loss": _finite(all_results.get("eval_loss")),
        "cohesion": _finite(all_results.get("eval_cohesion")),
        "separability": None if all_results.get("eval_separability") is None
        else float(all_results["eval_separability"]),
        "train_runtime": _finite(all_results.get("train_runtime")),
        "curves": {
            "eval": {"epoch": [float(e["epoch"]) for e in evals],
                     "accuracy": [float(e["eval_accuracy"]) for e in evals],
                     "loss": [float(e.get("eval_loss", math.nan)) for e in evals]},
            "train": {"epoch": [float(e["epoch"]) for e in trains], "loss": [float(e["loss"]) for e in trains]},
        },
    }


def read_run(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """`summarize_run` of a finished run directory; None when it has no `all_results.json`."""
    run_dir = Path(run_dir)
    results_path = run_dir / "all_results.json"
    if not results_path.is_file():
        return None
    all_results = json.loads(results_path.read_text())
    state_path = run_dir / "trainer_state.json"
    history = json.loads(state_path.read_text()).get("log_history", []) if state_path.is_file() else []
    return summarize_run(all_results, history)


# ---- Aggregation over seeds and gains ----


def mean_std(values: Iterable[float | None]) -> dict[str, Any]:
    """`{"mean", "std", "n"}` of the values that are not None: the sample standard deviation (ddof 1), None for
    fewer than two values. An infinite value makes the mean infinite and the std None."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    mean = math.fsum(xs) / len(xs)
    if len(xs) < 2 or math.isinf(mean):
        return {"mean": mean, "std": None, "n": len(xs)}
    return {"mean": mean, "std": math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)), "n": len(xs)}


AGGREGATED = ("final_accuracy", "best_accuracy", "eval_loss", "cohesion", "separability", "train_runtime")


def aggregate(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method, `mean_std` of each of `AGGREGATED` over its finished runs (`runs`: dicts with `method` and the
    fields of `summarize_run`), and `seeds`: the seeds that entered."""
    table: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        own = [r for r in runs if r["method"] == method and r.get("final_accuracy") is not None]
        table[method] = {key: mean_std(r.get(key) for r in own) for key in AGGREGATED}
        table[method]["seeds"] = [r["seed"] for r in own]
    return table


def gains(stats: Mapping[str, Mapping[str, Any]], key: str = "final_accuracy") -> dict[str, dict[str, Any]]:
    """Gains of the mean `key` over seeds, as the paper's abstract reports them.

    * `over_baseline`: mean(method) - mean(wo-RA&ER), for every method but the baseline;
    * `over_components`: for w-RA&ER(M) / w-RA&ER(MM), mean(method) - max(mean(w-RA), mean(w-ER(M) / w-ER(MM)));
      `better_component` names the larger of the two.
    A gain is None when a method it needs has no finished run.
    """
    def mean(name: str) -> float | None:
        return stats.get(name, {}).get(key, {}).get("mean")

    result: dict[str, dict[str, Any]] = {}
    for name in stats:
        method = METHODS_BY_NAME.get(name)
        value, entry = mean(name), {}
        if name != BASELINE:
            base = mean(BASELINE)
            entry["over_baseline"] = None if value is None or base is None else value - base
        if method is not None and method.components:
            parts = {c: mean(c) for c in method.components}
            if value is None or any(v is None for v in parts.values()):
                entry.update(over_components=None, better_component=None)
            else:
                better = max(parts, key=lambda c: parts[c])
                entry.update(over_components=value - parts[better], better_component=better)
        result[name] = entry
    return result


def aggregate_curves(curves: Sequence[Mapping[str, Sequence[float]]], key: str) -> dict[str, list[float]]:
    """Mean and sample std (0 with one seed) of `key` over seeds, at the epochs every seed has."""
    if not curves:
        return {"epoch": [], "mean": [], "std": []}
    epochs = sorted(set.intersection(*({round(e, 6) for e in c["epoch"]} for c in curves)))
    means, stds = [], []
    for epoch in epochs:
        values = [c[key][[round(e, 6) for e in c["epoch"]].index(epoch)] for c in curves]
        stat = mean_std(values)
        means.append(stat["mean"] if stat["mean"] is not None else math.nan)
        stds.append(stat["std"] or 0.0)
    return {"epoch": epochs, "mean": means, "std": stds}


