"""Run the paper's comparison on your data: its six configurations, one table, plots, feature metrics.

    synermix-compare                                                 # built-in digits, six methods, seed 123
    synermix-compare --seeds 1 2 3 --methods wo-RA\\&ER w-RA "w-RA&ER(MM)"
    python -m synermix_hf.cli.compare -ds cifar100 -mn resnet18 --seeds 1 2 --output_dir runs/compare-cifar100

Every flag that is not one of the comparison's own (`--methods`, `--seeds`, `--output_dir`, `--cpu_epochs`,
`--keep_checkpoints`, `--show_run_output`) goes to `synermix-train` (`synermix_hf.cli.train`) unchanged, so the data,
model and training flags are the script's. Each (method, seed) is one run of the script, in this process, into
`<output_dir>/<method>/seed<k>` (`<method>`: the file-name form a single run's directory uses too, `baseline`,
`synermix-b0.5`, ..., `synermix-b0.1-manifold_mixup`), with the method's flags, `--seed k` and `--feature_metrics`.
Then the comparison writes `results.md` (the table), `results.json`, `accuracy.png` and `loss.png` into `<output_dir>`
(`synermix_hf.cli.report`).

* Resumable: a run whose directory holds `all_results.json` is finished and skipped; an interrupted run continues
  from its last checkpoint (the comparison saves one per epoch unless `--save_strategy` is given); a run interrupted
  before its first checkpoint starts again. The flags given to the script are recorded in `comparison.json`, and a
  later call with other flags into the same `--output_dir` is refused (methods and seeds may change).
* Sizing: without a GPU, and unless `--num_train_epochs` or `--max_steps` is given, every run is trained for
  `--cpu_epochs` (6) epochs; the command prints it. With a GPU nothing is added: the script's defaults (the paper's
  recipe, or the built-in dataset's preset) apply.
* The runs happen in this process (no re-import of torch per run; the script seeds the model from `--seed`, so a run
  does not depend on what ran before it). Each run's console output goes to `<output_dir>/logs/<method>-seed<k>.log`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import logging
import os
import platform
import shlex
import shutil
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..resume import last_complete_checkpoint
from . import train
from .arguments import ScriptArgumentParser, is_builtin_default
from .errors import UsageError
from .methods import METHODS, Method, resolve_methods
from .output_dir import slug

from .report import format_number, write_outputs
from .stats import aggregate, gains, read_run

__all__ = ["Plan", "build_report", "compare", "main", "make_plan"]


def _parser() -> argparse.ArgumentParser:
    class _Parser(argparse.ArgumentParser):
        def error(self, message: str):
            raise UsageError(f"{message}. Run with --help to list the arguments.")

    parser = _Parser(
        prog="synermix-compare",
        description="Train the paper's six configurations (or --methods) over --seeds with synermix-train and write "
        "results.md, results.json, accuracy.png and loss.png. Every other flag goes to synermix-train (see "
        "synermix-train --help).",
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
    given = ScriptArgumentParser().given_on_command_line(passthrough)
    explicit = set(given)
    for key, why in _FORBIDDEN.items():
        if key in explicit:
            raise UsageError(f"--{key} cannot be given to the comparison: {why}.")
    methods = resolve_methods(options.methods)
    if options.cpu_epochs < 0:
        raise UsageError(f"--cpu_epochs must be >= 0, got {options.cpu_epochs}.")

    gpu = _cuda() and not given.get("use_cpu")
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
    seed = ["--seed", str(options.seeds[0])] if options.seeds else []
    first_run = ScriptArgumentParser().parse(script_args + methods[0].flags() + seed + ["--output_dir", "x"])
    seeds = list(dict.fromkeys(options.seeds)) if options.seeds else [first_run.training.seed]

    folder = given.get("train_dir") or given.get("validation_dir")
    if folder:
        dataset, data_slug = f"image folder {folder}", "imagefolder-" + slug(folder)
    elif is_builtin_default(given):
        dataset, data_slug = "digits (built-in)", "digits"
    else:
        dataset, data_slug = str(given["dataset_name"]), slug(given["dataset_name"])
    model = str(first_run.model.model_name_or_path or first_run.model.model_name)
    output_dir = Path(options.output_dir) if options.output_dir else \
        Path("runs") / f"compare-{data_slug}-{slug(model)}"
    return Plan(methods=methods, seeds=seeds, output_dir=output_dir, script_args=script_args, added=added,
                dataset=dataset, model=model, device=_machine(gpu), alpha_given="alpha" in explicit,
                disable_tqdm="disable_tqdm" in explicit and bool(given.get("disable_tqdm")))


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


def _train_one(plan: Plan, method: Method, seed: int, show_output: bool, keep_checkpoints: bool) -> str:
    """Train one run (resuming it if it has a checkpoint). Returns its status."""
    run_dir = _run_directory(plan, method, seed)
    argv = plan.script_args + method.flags(None if plan.alpha_given else 1.0) + ["--seed", str(seed),
                                                                                "--output_dir", str(run_dir)]
    status = "trained"
    last, _ = last_complete_checkpoint(str(run_dir))  # the run removes the incomplete ones it skips
    if last is not None:
        argv += ["--resume_from_checkpoint", last, "--overwrite_output_dir"]
        status = f"resumed from {Path(last).name}"
    elif run_dir.exists():
        shutil.rmtree(run_dir)  # interrupted before its first checkpoint: nothing to resume
    log_path = None if show_output else plan.output_dir / "logs" / f"{method.slug}-seed{seed}.log"
    with _run_output(log_path):
        print(f"synermix-train {shlex.join(argv)}", flush=True)
        try:
            train.run(argv, program="synermix-train")
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

    # One bar over the runs, above the Trainer's own; tqdm estimates the time left from the runs done so far.
    progress = tqdm(total=len(runs), initial=len(finished), position=0, desc="comparison", unit="run", leave=True,
                    dynamic_ncols=True, disable=plan.disable_tqdm)
    statuses = {(m.name, s): "finished earlier (skipped)" for m, s in runs if (m.name, s) in finished}
    try:
        for method, seed in todo:
            progress.set_postfix_str(f"{method.name} seed {seed}", refresh=True)
            started = time.time()
            status = _train_one(plan, method, seed, options.show_run_output, options.keep_checkpoints)
            statuses[(method.name, seed)] = status
            progress.update(1)
            summary = read_run(_run_directory(plan, method, seed))
            if summary is not None:
                progress.write(
                    f"{method.name} seed {seed}: final {100 * summary['final_accuracy']:.2f}%, best "
                    f"{100 * summary['best_accuracy']:.2f}%, cohesion {format_number({'mean': summary['cohesion']}, 4)}, "
                    f"separability {format_number({'mean': summary['separability']}, 4)} ({status}, "
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
            "command": "synermix-compare " + shlex.join(argv),
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


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: 0 when every run finished, 1 when some failed, 2 on bad input."""
    try:
        report = compare(argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    return 1 if any(r["status"].startswith(("failed", "missing")) for r in report["runs"]) else 0


def console_main() -> None:
    """`synermix-compare`."""
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
