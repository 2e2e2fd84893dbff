"""Run the paper's comparison on your data: the six configurations of METHOD.md, one table, plots, feature metrics.

    python -m synermix_hf.compare                                    # built-in digits, six methods, seed 123
    python -m synermix_hf.compare --seeds 1 2 3 --methods wo-RA\\&ER w-RA "w-RA&ER(MM)"
    python -m synermix_hf.compare -ds cifar100 -mn resnet18 --seeds 1 2 --output_dir runs/compare-cifar100

Every flag that is not one of the comparison's own (`--methods`, `--seeds`, `--output_dir`, `--cpu_epochs`,
`--keep_checkpoints`, `--show_run_output`) goes to `run_image_classification.py` unchanged, so the data, model and
training flags are the script's. Each (method, seed) is one run of the script, in this process, into
`<output_dir>/<method>/seed<k>`, with the method's flags, `--seed k` and `--feature_metrics`. Then the comparison writes
`results.md` (the table), `results.json`, `accuracy.png` and `loss.png` into `<output_dir>`.

* Resumable: a run whose directory holds `all_results.json` is finished and skipped; an interrupted run continues
  from its last checkpoint (the comparison saves one per epoch unless `--save_strategy` is given); a run interrupted
  before its first checkpoint starts again. The flags given to the script are recorded in `comparison.json`, and a
  later call with other flags into the same `--output_dir` is refused (methods and seeds may change).
* Sizing: without a GPU, and unless `--num_train_epochs` or `--max_steps` is given, every run is trained for
  `--cpu_epochs` (6) epochs; the command prints it. With a GPU nothing is added: the script's defaults (the paper's
  recipe, or the built-in dataset's preset) apply.
* The runs happen in this process (no re-import of torch per run; the script seeds the model from `--seed`, so a run
  does not depend on what ran before it). Each run's console output goes to `<output_dir>/logs/<method>-seed<k>.log`.

Aggregation, gains, the table and the plots are small pure functions of the runs' `all_results.json` and
`trainer_state.json` (`summarize_run`, `aggregate`, `gains`, `render_markdown`, `plot_curves`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.util
import json
import logging
import math
import os
import platform
import shlex
import shutil
import sys
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError

__all__ = [
    "BASELINE",
    "METHODS",
    "Method",
    "aggregate",
    "aggregate_curves",
    "compare",
    "gains",
    "main",
    "mean_std",
    "plot_curves",
    "render_markdown",
    "resolve_methods",
    "summarize_run",
]

# ---- The six configurations ----


@dataclass(frozen=True)
class Method:
    """One configuration of METHOD.md: its name, directory name, SynerMix flags and the two methods it combines."""

    name: str
    slug: str
    beta: float
    inter_mixup: str
    components: tuple[str, ...] = ()

    @property
    def cost(self) -> float:
        """Relative training time: beta > 0 adds a forward and backward pass over the original view."""
        return 2.0 if self.beta > 0 else 1.0

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
_BY_NAME = {m.name: m for m in METHODS}


def _key(text: str) -> str:
    return "".join(c for c in str(text).lower() if c.isalnum())


_ALIASES = {**{_key(m.name): m.name for m in METHODS}, **{_key(m.slug): m.name for m in METHODS},
            "baseline": BASELINE}


def resolve_methods(names: Iterable[str] | None) -> list[Method]:
    """Methods by name (METHOD.md's, case and punctuation ignored: `w-RA&ER(MM)`, `w-ra-er-mm`, `baseline`), in the
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


# ---- One run: what its files say ----


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
        method = _BY_NAME.get(name)
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


# ---- The table ----


def _pct(stat: Mapping[str, Any] | None, digits: int = 2) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    text = f"{100 * stat['mean']:.{digits}f}"
    return text + (f" ± {100 * stat['std']:.{digits}f}" if stat.get("std") is not None else "")


def _num(stat: Mapping[str, Any] | None, digits: int = 3) -> str:
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
         f"each `run_image_classification.py {config['script_args_text']}` + the method's flags + `--seed k`"),
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
        method = _BY_NAME[name]
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
            f"{_num(stat['cohesion'])} | {_num(stat['separability'])} |"
        )
    lines += ["", "Gains computed on the best accuracy instead of the final one:", "",
              "| method | gain over baseline | gain over better component |", "| --- | --- | --- |"]
    for name in stats:
        if name == BASELINE:
            continue
        entry = gain_best.get(name, {})
        over = ""
        if _BY_NAME[name].components:
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
            f"{_num({'mean': run.get('eval_loss')}, 4)} | {_num({'mean': run.get('cohesion')}, 4)} | "
            f"{_num({'mean': run.get('separability')}, 4)} | {_num({'mean': run.get('train_runtime')}, 1)} | "
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


# ---- Command line ----


def _load_script() -> Any:
    """`run_image_classification.py` of this checkout, imported as a module (once)."""
    module = sys.modules.get("run_image_classification")
    if module is not None and hasattr(module, "run"):
        return module
    path = Path(__file__).resolve().parent.parent / "run_image_classification.py"
    if not path.is_file():
        raise UsageError(f"The comparison runs run_image_classification.py, which should be at {path} (next to the "
                         "synermix_hf package, as in a checkout of the repository); it is not there.")
    spec = importlib.util.spec_from_file_location("run_image_classification", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_image_classification"] = module
    spec.loader.exec_module(module)
    return module


def _parser() -> argparse.ArgumentParser:
    class _Parser(argparse.ArgumentParser):
        def error(self, message: str):
            raise UsageError(f"{message}. Run with --help to list the arguments.")

    parser = _Parser(
        prog="python -m synermix_hf.compare",
        description="Train the paper's six configurations (or --methods) over --seeds with run_image_classification.py "
        "and write results.md, results.json, accuracy.png and loss.png. Every other flag goes to the script (see "
        "python run_image_classification.py --help).",
        allow_abbrev=False,
    )
    parser.add_argument("--methods", nargs="+", metavar="METHOD",
                        help=f"Methods to run (default: all six): {', '.join(m.name for m in METHODS)}.")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                        help="Seeds; every method runs once per seed (default: the script's --seed default, 123).")
    parser.add_argument("--output_dir", help="Where the runs and the results go (default: "
                        "runs/compare-<dataset>-<model>). Run the same command again to resume.")
    parser.add_argument("--cpu_epochs", type=int, default=6,
                        help="Without a GPU, and unless --num_train_epochs or --max_steps is given, train every run "
                        "for this many epochs (default 6; 0 keeps the script's default).")
    parser.add_argument("--keep_checkpoints", action="store_true",
                        help="Keep the checkpoint-* directories of finished runs (deleted by default; they only "
                        "serve to resume).")
    parser.add_argument("--show_run_output", action="store_true",
                        help="Print each run's console output instead of writing it to <output_dir>/logs/.")
    return parser


# Flags the comparison sets itself (explicit values would contradict it).
_FORBIDDEN = {
    "seed": "use --seeds",
    "beta": "each method sets it; choose methods with --methods",
    "inter_mixup": "each method sets it; choose methods with --methods",
    "do_train": "every run trains and evaluates",
    "do_eval": "every run trains and evaluates",
    "overwrite_output_dir": "finished runs are skipped and interrupted ones resumed; use another --output_dir to "
    "start afresh",
    "resume_from_checkpoint": "interrupted runs are resumed from their last checkpoint by themselves",
}


@dataclass
class Plan:
    methods: list[Method]
    seeds: list[int]
    output_dir: Path
    script_args: list[str]  # the pass-through flags plus what the comparison adds, the same for every run
    added: list[tuple[str, str]]  # (flags, why) added by the comparison
    dataset: str
    model: str
    device: str
    alpha_given: bool
    disable_tqdm: bool


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _machine(gpu: bool) -> str:
    import torch

    if gpu:
        return f"GPU {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return (f"CPU only, {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
            f"torch {torch.__version__}, torch threads: {torch.get_num_threads()}")


def make_plan(argv: Sequence[str]) -> Plan:
    """Split and check the arguments; decide the flags every run gets."""
    options, passthrough = _parser().parse_known_args(list(argv))
    if passthrough and passthrough[0].endswith(".json") and not passthrough[0].startswith("-"):
        raise UsageError("The comparison takes the script's flags on the command line, not a JSON argument file.")
    script = _load_script()
    values, explicit = script.ScriptArgumentParser().values_from_command_line(passthrough)
    for key, why in _FORBIDDEN.items():
        if key in explicit:
            raise UsageError(f"--{key} cannot be given to the comparison: {why}.")
    methods = resolve_methods(options.methods)
    seeds = list(dict.fromkeys(options.seeds)) if options.seeds else [int(values["seed"])]
    if options.cpu_epochs < 0:
        raise UsageError(f"--cpu_epochs must be >= 0, got {options.cpu_epochs}.")

    gpu = _cuda() and not values.get("use_cpu")
    added: list[tuple[str, str]] = []
    if not gpu and options.cpu_epochs and not {"num_train_epochs", "max_steps"} & explicit:
        added.append((f"--num_train_epochs {options.cpu_epochs}",
                      ("no GPU: a reduced epoch count (--cpu_epochs; give --num_train_epochs or --max_steps to "
                       "choose, --cpu_epochs 0 for the script's default)")))
    if "save_strategy" not in explicit:
        added.append(("--save_strategy epoch", "a checkpoint per epoch, so that an interrupted run resumes"))
    if "feature_metrics" not in explicit:
        added.append(("--feature_metrics", "cohesion and separability of the penultimate features"))
    script_args = list(passthrough) + [word for flags, _ in added for word in flags.split()]
    # The complete argument list of one run must parse (bad values stop everything now, before any training).
    script.ScriptArgumentParser().parse(script_args + methods[0].flags() + ["--seed", str(seeds[0]),
                                                                            "--output_dir", "x"])

    folder = values.get("train_dir") or values.get("validation_dir")
    if folder:
        dataset, slug = f"image folder {folder}", "imagefolder-" + script._slug(folder)
    elif script.is_builtin_default(values):
        dataset, slug = "digits (built-in)", "digits"
    else:
        dataset, slug = str(values["dataset_name"]), script._slug(values["dataset_name"])
    model = str(values.get("model_name_or_path") or values["model_name"])
    output_dir = Path(options.output_dir) if options.output_dir else \
        Path("runs") / f"compare-{slug}-{script._slug(model)}"
    return Plan(methods=methods, seeds=seeds, output_dir=output_dir, script_args=script_args, added=added,
                dataset=dataset, model=model, device=_machine(gpu), alpha_given="alpha" in explicit,
                disable_tqdm="disable_tqdm" in explicit and bool(values.get("disable_tqdm")))


def _check_recorded(plan: Plan) -> None:
    """Refuse to mix runs made with other script flags into one comparison directory; record the flags."""
    record = plan.output_dir / "comparison.json"
    if record.is_file():
        previous = json.loads(record.read_text()).get("script_args")
        if previous != plan.script_args:
            raise UsageError(
                f"{plan.output_dir} holds a comparison run with other script flags ({shlex.join(previous or [])!r}; "
                f"now {shlex.join(plan.script_args)!r}). Its finished runs would not be comparable: use another "
                "--output_dir, or the same flags to resume it."
            )
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"script_args": plan.script_args}, indent=2) + "\n")


class _Progress:
    """One bar over the runs (position 0, above the Trainer's own bar), with an estimate of the time left.

    The estimate: seconds per unit of cost (a beta > 0 run costs 2, others 1) from the runs trained in this call, or,
    before any has finished, from the running one's own progress; times the cost still to go. A resumed run counts
    only the part it trains.
    """

    def __init__(self, total: int, done: int, disable: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=done, position=0, desc="comparison", unit="run", leave=True,
                        dynamic_ncols=True, disable=disable,
                        bar_format="{desc}: {n_fmt}/{total_fmt} runs |{bar}| {elapsed} elapsed{postfix}")
        self.spent_seconds = 0.0
        self.spent_cost = 0.0
        self.label, self.cost, self.after, self.started = "", 0.0, 0.0, 0.0
        self.fraction = 0.0  # of the current run's training done in this call
        self.resumed_at = 0.0  # fraction of the current run's steps done before this call (a resumed run)
        self._shown = 0.0

    def start(self, label: str, cost: float, cost_after: float) -> None:
        self.label, self.cost, self.after = label, cost, cost_after
        self.started, self.fraction, self.resumed_at = time.time(), 0.0, 0.0
        self.show(force=True)

    def steps(self, done: int, total: int, beginning: bool = False) -> None:
        """The Trainer's position: `done` of `total` optimizer steps."""
        if beginning:
            self.resumed_at = min(done / total, 1.0)
        left = 1.0 - self.resumed_at
        self.fraction = (done / total - self.resumed_at) / left if left > 0 else 1.0
        self.show()

    def remaining(self) -> float | None:
        elapsed = time.time() - self.started
        cost = self.cost * (1.0 - self.resumed_at)
        if self.spent_cost:
            unit = self.spent_seconds / self.spent_cost
        elif self.fraction >= 0.05 and cost > 0:
            unit = elapsed / self.fraction / cost
        else:
            return None
        current = elapsed / self.fraction * (1 - self.fraction) if self.fraction >= 0.05 else \
            max(unit * cost - elapsed, 0.0)
        return current + unit * self.after

    def show(self, force: bool = False) -> None:
        if not force and time.time() - self._shown < 1.0:
            return
        self._shown = time.time()
        left = self.remaining()
        eta = "?" if left is None else str(datetime.timedelta(seconds=int(left)))
        self.bar.set_postfix_str(f"{self.label}, about {eta} left", refresh=True)

    def finish(self, trained: bool) -> None:
        if trained:
            self.spent_seconds += time.time() - self.started
            self.spent_cost += self.cost * (1.0 - self.resumed_at)
        self.bar.update(1)

    def write(self, text: str) -> None:
        self.bar.write(text, file=sys.stdout)

    def close(self) -> None:
        self.bar.set_postfix_str("done", refresh=False)
        self.bar.close()


def _progress_callback(progress: _Progress) -> Any:
    from transformers import TrainerCallback

    class ComparisonProgress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if state.max_steps:
                progress.steps(state.global_step, state.max_steps, beginning=True)

        def on_step_end(self, args, state, control, **kwargs):
            if state.max_steps:
                progress.steps(state.global_step, state.max_steps)

    return ComparisonProgress()


@contextlib.contextmanager
def _run_output(path: Path | None):
    """Send a run's stdout and the logging it sets up to `path` (or leave them alone), and restore logging after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        if path is None:
            yield
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle, contextlib.redirect_stdout(handle):
            yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)


def _run_directory(plan: Plan, method: Method, seed: int) -> Path:
    return plan.output_dir / method.slug / f"seed{seed}"


def _train_one(plan: Plan, method: Method, seed: int, progress: _Progress, show_output: bool,
               keep_checkpoints: bool) -> str:
    """Train one run (resuming it if it has a checkpoint). Returns its status."""
    from transformers.trainer_utils import get_last_checkpoint

    script = _load_script()
    run_dir = _run_directory(plan, method, seed)
    argv = plan.script_args + method.flags(None if plan.alpha_given else 1.0) + ["--seed", str(seed),
                                                                                "--output_dir", str(run_dir)]
    status = "trained"
    last = get_last_checkpoint(str(run_dir)) if run_dir.is_dir() else None
    if last is not None:
        argv += ["--resume_from_checkpoint", last, "--overwrite_output_dir"]
        status = f"resumed from {Path(last).name}"
    elif run_dir.exists():
        shutil.rmtree(run_dir)  # interrupted before its first checkpoint: nothing to resume
    log_path = None if show_output else plan.output_dir / "logs" / f"{method.slug}-seed{seed}.log"
    with _run_output(log_path):
        print(f"python run_image_classification.py {shlex.join(argv)}", flush=True)
        try:
            script.run(argv, callbacks=[_progress_callback(progress)])
        except UsageError:
            raise
        except Exception as error:  # noqa: BLE001 - one failed run (e.g. a diverged loss) must not stop the others
            traceback.print_exc(file=sys.stdout)
            status = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
    gc.collect()
    if not status.startswith("failed") and not keep_checkpoints:
        for checkpoint in run_dir.glob("checkpoint-*"):
            shutil.rmtree(checkpoint, ignore_errors=True)
    if log_path is not None and status.startswith("failed"):
        status += f" (see {log_path})"
    return status


def compare(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run (or resume) the comparison and write its outputs. Returns the report (the content of `results.json`).

    Raises:
        UsageError: bad flags or data (before any training, where they can be seen then).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    options, _ = _parser().parse_known_args(argv)
    plan = make_plan(argv)
    _check_recorded(plan)

    runs = [(m, s) for s in plan.seeds for m in plan.methods]  # seed by seed: each seed completes a table
    finished = {(m.name, s) for m, s in runs if (_run_directory(plan, m, s) / "all_results.json").is_file()}
    todo = [(m, s) for m, s in runs if (m.name, s) not in finished]
    print(f"Comparison of {len(plan.methods)} methods x {len(plan.seeds)} seed(s) on {plan.dataset}, {plan.model}, "
          f"into {plan.output_dir}", flush=True)
    print(f"  device: {plan.device}", flush=True)
    for flags, why in plan.added:
        print(f"  every run gets {flags}: {why}", flush=True)
    print(f"  script flags of every run: {shlex.join(plan.script_args) or '(none)'}", flush=True)
    print(f"  {len(finished)} run(s) already finished (skipped), {len(todo)} to train", flush=True)

    progress = _Progress(total=len(runs), done=len(finished), disable=plan.disable_tqdm)
    statuses = {(m.name, s): "finished earlier (skipped)" for m, s in runs if (m.name, s) in finished}
    try:
        for index, (method, seed) in enumerate(todo):
            progress.start(f"{method.name} seed {seed}", method.cost, sum(m.cost for m, _ in todo[index + 1:]))
            started = time.time()
            status = _train_one(plan, method, seed, progress, options.show_run_output, options.keep_checkpoints)
            statuses[(method.name, seed)] = status
            progress.finish(trained=not status.startswith("failed"))
            summary = read_run(_run_directory(plan, method, seed))
            if summary is not None:
                progress.write(
                    f"{method.name} seed {seed}: final {100 * summary['final_accuracy']:.2f}%, best "
                    f"{100 * summary['best_accuracy']:.2f}%, cohesion {_num({'mean': summary['cohesion']}, 4)}, "
                    f"separability {_num({'mean': summary['separability']}, 4)} ({status}, "
                    f"{time.time() - started:.0f} s)")
            else:
                progress.write(f"{method.name} seed {seed}: {status}")
    finally:
        progress.close()

    report = build_report(plan, argv, statuses)
    write_outputs(report, plan.output_dir)
    print(f"Results: {plan.output_dir / 'results.md'} (table), results.json, accuracy.png, loss.png", flush=True)
    return report


def build_report(plan: Plan, argv: Sequence[str], statuses: Mapping[tuple[str, int], str]) -> dict[str, Any]:
    """The content of `results.json`, from the runs' own files."""
    runs = []
    for method in plan.methods:
        for seed in plan.seeds:
            run_dir = _run_directory(plan, method, seed)
            summary = read_run(run_dir) or {}
            status = statuses.get((method.name, seed), "missing")
            if not summary and not status.startswith("failed"):
                status = "missing"
            runs.append({"method": method.name, "seed": seed, "directory": str(run_dir), "status": status,
                         **summary})
    stats = aggregate(runs)
    stats = {m.name: stats.get(m.name, aggregate([{"method": m.name}])[m.name]) for m in plan.methods}
    epochs = next((flags.split()[1] for flags, _ in plan.added if flags.startswith("--num_train_epochs")), None)
    scale = (f"Small scale: {plan.dataset}, {plan.model}, "
             + (f"{epochs} epochs (reduced for a CPU), " if epochs else "")
             + f"{len(plan.seeds)} seed{'s' if len(plan.seeds) != 1 else ''}, on {plan.device.split(',')[0]}.")
    return {
        "config": {
            "command": "python -m synermix_hf.compare " + shlex.join(argv),
            "dataset": plan.dataset,
            "model": plan.model,
            "methods": [m.name for m in plan.methods],
            "seeds": plan.seeds,
            "script_args": plan.script_args,
            "script_args_text": shlex.join(plan.script_args),
            "added_by_comparison": [{"flags": f, "why": w} for f, w in plan.added],
            "method_flags": {m.name: m.flags(None if plan.alpha_given else 1.0) for m in plan.methods},
            "machine": plan.device,
            "scale_note": scale,
            "written": datetime.datetime.now().isoformat(timespec="seconds"),
        },
        "methods": stats,
        "gains": {key: gains(stats, key) for key in ("final_accuracy", "best_accuracy")},
        "runs": runs,
    }


def write_outputs(report: Mapping[str, Any], out_dir: str | os.PathLike) -> None:
    """results.json, results.md, accuracy.png, loss.png in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "results.md").write_text(render_markdown(report))
    plot_curves(report, out_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: 0 when every run finished, 1 when some failed, 2 on bad input."""
    try:
        report = compare(argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    return 1 if any(r["status"].startswith(("failed", "missing")) for r in report["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
