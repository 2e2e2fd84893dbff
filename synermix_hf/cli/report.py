"""A comparison's outputs: `results.md` (the table), `results.json`, `accuracy.png` and `loss.png`."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .methods import BASELINE, METHODS, METHODS_BY_NAME
from .stats import aggregate_curves

__all__ = ["format_number", "plot_curves", "render_markdown", "write_outputs"]


def _pct(stat: Mapping[str, Any] | None, digits: int = 2) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    text = f"{100 * stat['mean']:.{digits}f}"
    return text + (f" ± {100 * stat['std']:.{digits}f}" if stat.get("std") is not None else "")


def format_number(stat: Mapping[str, Any] | None, digits: int = 3) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    if math.isinf(stat["mean"]):
        return "inf"
    text = f"{stat['mean']:.{digits}f}"
    return text + (f" ± {stat['std']:.{digits}f}" if stat.get("std") is not None else "")


def _points(value: float | None) -> str:
    if value is None:
        return "-"
    points = round(100 * value, 2)
    return f"{points + 0.0:+.2f}" if points != 0 else "+0.00"  # no "-0.00" from rounding


def render_markdown(report: Mapping[str, Any]) -> str:
    """`results.md`: the comparison table (the paper's form), the gains on best accuracy, and one row per run."""
    config, stats = report["config"], report["methods"]
    gain_final, gain_best = report["gains"]["final_accuracy"], report["gains"]["best_accuracy"]
    lines = [
        f"# SynerMix comparison: {config['dataset']}, {config['model']}",
        "",
        f"{config['scale_note']}",
        "",
        f"* Command: `{config['command']}`",
        (f"* Runs: {len(report['runs'])} ({len(stats)} methods x seeds {', '.join(map(str, config['seeds']))}), "
         f"each `synermix-train {config['script_args_text']}` + the method's flags + `--seed k`"),
        f"* Machine: {config['machine']}",
        f"* Written {config['written']}",
        "",
        ("Accuracy on the evaluation split in %, mean ± sample std over seeds (no ± with one seed). *Final*: after the "
         "last epoch; *best*: the highest of the per-epoch evaluations. Gains are in points, differences of the means: "
         "over the baseline wo-RA&ER, and for the combined methods over the better of their two components (w-RA and "
         "w-ER(M) or w-ER(MM)), as in the paper's abstract. Cohesion and separability are those of the penultimate "
         "features of the evaluation split after training (definitions below)."),
        "",
        ("| method | beta | inter-class | seeds | final acc. (%) | best acc. (%) | gain over baseline | "
         "gain over better component | cohesion | separability |"),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, stat in stats.items():
        method = METHODS_BY_NAME[name]
        entry = gain_final.get(name, {})
        if method.components:
            better = entry.get("better_component")
            over = _points(entry.get("over_components")) + (f" (vs {better})" if better else "")
        else:
            over = ""
        label = f"{name} (baseline)" if name == BASELINE else name
        lines.append(
            f"| {label} | {method.beta:g} | {method.inter_label} | {len(stat['seeds'])} | "
            f"{_pct(stat['final_accuracy'])} | {_pct(stat['best_accuracy'])} | "
            f"{'' if name == BASELINE else _points(entry.get('over_baseline'))} | {over} | "
            f"{format_number(stat['cohesion'])} | {format_number(stat['separability'])} |"
        )
    lines += ["", "Gains computed on the best accuracy instead of the final one:", "",
              "| method | gain over baseline | gain over better component |", "| --- | --- | --- |"]
    for name in stats:
        if name == BASELINE:
            continue
        entry = gain_best.get(name, {})
        over = ""
        if METHODS_BY_NAME[name].components:
            better = entry.get("better_component")
            over = _points(entry.get("over_components")) + (f" (vs {better})" if better else "")
        lines.append(f"| {name} | {_points(entry.get('over_baseline'))} | {over} |")
    lines += [
        "",
        "![accuracy per epoch](accuracy.png)",
        "",
        "![loss per epoch](loss.png)",
        "",
        "## Runs",
        "",
        ("| method | seed | final acc. (%) | best acc. (%) (epoch) | eval loss | cohesion | separability "
         "| train time (s) | status | directory |"),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in report["runs"]:
        if run.get("final_accuracy") is None:
            lines.append(f"| {run['method']} | {run['seed']} | - | - | - | - | - | - | {run['status']} | "
                         f"`{run['directory']}` |")
            continue
        best_epoch = run.get("best_epoch")
        lines.append(
            f"| {run['method']} | {run['seed']} | {100 * run['final_accuracy']:.2f} | "
            f"{100 * run['best_accuracy']:.2f} ({'-' if best_epoch is None else f'{round(best_epoch, 2):g}'}) | "
            f"{format_number({'mean': run.get('eval_loss')}, 4)} | {format_number({'mean': run.get('cohesion')}, 4)} | "
            f"{format_number({'mean': run.get('separability')}, 4)} | {format_number({'mean': run.get('train_runtime')}, 1)} | "
            f"{run['status']} | `{run['directory']}` |"
        )
    lines += [
        "",
        "## Definitions",
        "",
        ("Features h_i: the input of the final classification layer (penultimate features) for every evaluation "
         "image (original view, model in eval mode), y_i its class, mu_c the mean feature of class c (n_c images), mu "
         "the mean of all N features."),
        "",
        "* cohesion = (1/N) sum_i cos(h_i, mu_{y_i}); a class with one image counts cos = 1.",
        ("* separability = tr(S_B) / tr(S_W), tr(S_B) = sum_c n_c ||mu_c - mu||^2, "
         "tr(S_W) = sum_i ||h_i - mu_{y_i}||^2; 0 with one class, inf when tr(S_W) = 0 < tr(S_B)."),
        "",
    ]
    return "\n".join(lines)


# ---- The plots ----

_COLORS = dict(zip((m.name for m in METHODS), ("black", "tab:blue", "tab:orange", "tab:green", "tab:red",
                                                 "tab:purple")))


def plot_curves(report: Mapping[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """`accuracy.png` (evaluation accuracy per epoch) and `loss.png` (training and evaluation loss per epoch): one
    line per method, the mean over seeds, with a band of ± one sample std."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    by_method: dict[str, list[Mapping[str, Any]]] = {}
    for run in report["runs"]:
        if run.get("curves") is not None:
            by_method.setdefault(run["method"], []).append(run["curves"])
    seeds = len(report["config"]["seeds"])
    subtitle = f"mean over {seeds} seed{'s' if seeds != 1 else ''}" + (", band ± 1 std" if seeds > 1 else "")

    def draw(axis, part: str, key: str, scale: float = 1.0):
        for name, curves in by_method.items():
            series = aggregate_curves([c[part] for c in curves], key)
            if not series["epoch"]:
                continue
            mean = [scale * v for v in series["mean"]]
            std = [scale * v for v in series["std"]]
            style = "--" if name in ("w-ER(M)", "w-ER(MM)", "w-RA") else "-"
            axis.plot(series["epoch"], mean, style, color=_COLORS.get(name), label=name, linewidth=1.5, marker="o",
                      markersize=2.5)
            if any(std):
                axis.fill_between(series["epoch"], [m - s for m, s in zip(mean, std)],
                                  [m + s for m, s in zip(mean, std)], color=_COLORS.get(name), alpha=0.15, linewidth=0)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)

    title = f"{report['config']['dataset']}, {report['config']['model']}"
    paths = []
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    draw(axis, "eval", "accuracy", 100.0)
    axis.set_ylabel("evaluation accuracy (%)")
    axis.set_title(f"{title}: accuracy ({subtitle})", fontsize=10)
    axis.legend(fontsize=8)
    figure.tight_layout()
    paths.append(out_dir / "accuracy.png")
    figure.savefig(paths[-1], dpi=80, pil_kwargs={"optimize": True})
    plt.close(figure)

    figure, axes = plt.subplots(1, 2, figsize=(10, 4.0))
    draw(axes[0], "train", "loss")
    axes[0].set_ylabel("training loss (each method's own objective)")
    axes[0].set_title("training loss", fontsize=10)
    draw(axes[1], "eval", "loss")
    axes[1].set_ylabel("evaluation loss (cross-entropy)")
    axes[1].set_title("evaluation loss", fontsize=10)
    axes[1].legend(fontsize=8)
    figure.suptitle(f"{title} ({subtitle})", fontsize=10)
    figure.tight_layout()
    paths.append(out_dir / "loss.png")
    figure.savefig(paths[-1], dpi=80, pil_kwargs={"optimize": True})
    plt.close(figure)
    return paths


def write_outputs(report: Mapping[str, Any], out_dir: str | os.PathLike) -> None:
    """results.json, results.md, accuracy.png, loss.png in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "results.md").write_text(render_markdown(report))
    plot_curves(report, out_dir)
