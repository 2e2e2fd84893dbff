"""`synermix-compare` (`synermix_hf.cli.compare`): the runs, the table, the JSON, the plots, skipping and resuming; the pure
aggregation functions; argument errors."""

import json
import math
import shutil
from pathlib import Path

import pytest

from synermix_hf.cli import compare, methods, report, stats
from synermix_hf.cli.arguments import ScriptArgumentParser
from synermix_hf.cli.output_dir import default_output_dir
from synermix_hf.cli.train import main
from synermix_hf.testing import save_tiny_vit

# A tiny local dataset (18 training, 9 evaluation images of 3 classes) and a few steps per run.
FAST = ["-bs", "8", "--image_size", "8", "--max_steps", "4", "--dataloader_num_workers", "0",
        "--per_device_eval_batch_size", "32", "--disable_tqdm", "true"]


def _data(hub_copies, tmp_path):
    return ["-ds", "cifar100", "--dataset_path", str(hub_copies["cifar100"]), "--cache_dir", str(tmp_path / "cache")]


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    """A Hugging Face ViT small enough that a run is mostly overhead (the comparison does not care about the model)."""
    return ["--model_name_or_path", str(save_tiny_vit(tmp_path_factory.mktemp("tiny_vit")))]


def _table_rows(markdown: str, header_start: str) -> dict[str, list[str]]:
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0] if header_start.startswith("| method | beta") else f"{cells[0]} {cells[1]}"] = cells
    return rows


def test_two_methods_two_seeds_then_skip_then_restart(hub_copies, tiny_vit, tmp_path, capsys):
    out = tmp_path / "comparison"
    argv = ["--methods", "baseline", "w-RA", "--seeds", "1", "2", "--output_dir", str(out),
            *_data(hub_copies, tmp_path), *tiny_vit, *FAST]
    assert compare.main(argv) == 0
    printed = capsys.readouterr().out
    assert "0 run(s) already finished (skipped), 4 to train" in printed
    assert "--save_strategy epoch" in printed and "--feature_metrics" in printed
    assert "--num_train_epochs" not in printed  # --max_steps given: no CPU reduction

    for name in ("results.md", "results.json", "accuracy.png", "loss.png", "comparison.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((out / "results.json").read_text())
    markdown = (out / "results.md").read_text()
    summary = _table_rows(markdown, "| method | beta")
    per_run = _table_rows(markdown, "| method | seed")

    # Every number agrees with the runs' own files.
    dirs = {"wo-RA&ER": "baseline", "w-RA": "synermix-b0.5"}  # as a single run names its directory
    finals = {}
    for run in report["runs"]:
        run_dir = out / dirs[run["method"]] / f"seed{run['seed']}"
        assert (out / "logs" / f"{dirs[run['method']]}-seed{run['seed']}.log").is_file()
        assert run["directory"] == str(run_dir) and run["status"] == "trained"
        results = json.loads((run_dir / "all_results.json").read_text())
        history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
        per_epoch = [e["eval_accuracy"] for e in history if "eval_accuracy" in e]
        assert per_epoch, "the recipe evaluates once per epoch"
        assert run["final_accuracy"] == results["eval_accuracy"]
        assert run["best_accuracy"] == max(per_epoch + [results["eval_accuracy"]])
        assert run["cohesion"] == results["eval_cohesion"] and run["separability"] == results["eval_separability"]
        assert run["curves"]["eval"]["accuracy"] == per_epoch
        assert -1 <= results["eval_cohesion"] <= 1 and results["eval_separability"] >= 0
        finals.setdefault(run["method"], []).append(results["eval_accuracy"])
        cells = per_run[f"{run['method']} {run['seed']}"]
        assert cells[2] == f"{100 * results['eval_accuracy']:.2f}"
        assert cells[5] == f"{results['eval_cohesion']:.4f}"
        # The run got the method's flags and the seed.
        log = (run_dir / "training_log.txt").read_text()
        assert f"--seed {run['seed']}" in log
        assert ("--beta 0.5" in log) == (run["method"] == "w-RA")
    for method, values in finals.items():
        mean = sum(values) / 2
        std = abs(values[0] - values[1]) / math.sqrt(2)
        stat = report["methods"][method]["final_accuracy"]
        assert stat["mean"] == pytest.approx(mean) and stat["std"] == pytest.approx(std) and stat["n"] == 2
        label = f"{method} (baseline)" if method == "wo-RA&ER" else method
        assert summary[label][4] == f"{100 * mean:.2f} ± {100 * std:.2f}"
    gain = report["gains"]["final_accuracy"]["w-RA"]["over_baseline"]
    assert gain == pytest.approx(report["methods"]["w-RA"]["final_accuracy"]["mean"]
                                 - report["methods"]["wo-RA&ER"]["final_accuracy"]["mean"])
    assert summary["w-RA"][6] == f"{100 * gain:+.2f}"
    assert "2 seeds" in markdown and "CPU" in markdown

    # Second invocation: everything is finished, nothing is trained again.
    results_files = sorted(out.glob("*/seed*/all_results.json"))
    assert len(results_files) == 4
    stamps = [p.stat().st_mtime_ns for p in results_files]
    assert compare.main(argv) == 0
    assert "4 run(s) already finished (skipped), 0 to train" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in results_files] == stamps
    again = json.loads((out / "results.json").read_text())
    assert {r["status"] for r in again["runs"]} == {"finished earlier (skipped)"}
    assert again["methods"] == report["methods"]

    # A run interrupted before its first checkpoint starts again; the others are left alone.
    (out / "synermix-b0.5" / "seed3").mkdir()
    (out / "synermix-b0.5" / "seed3" / "training_log.txt").write_text("started, no checkpoint yet\n")
    assert compare.main(["--methods", "w-RA", "--seeds", "1", "2", "3"] + argv[6:]) == 0
    third = json.loads((out / "results.json").read_text())
    assert {(r["method"], r["seed"]): r["status"] for r in third["runs"]} == {
        ("w-RA", 1): "finished earlier (skipped)", ("w-RA", 2): "finished earlier (skipped)", ("w-RA", 3): "trained"}
    assert "started, no checkpoint yet" not in (out / "synermix-b0.5" / "seed3" / "training_log.txt").read_text()
    assert [p.stat().st_mtime_ns for p in results_files] == stamps


def test_interrupted_run_resumes_from_its_last_checkpoint(hub_copies, tmp_path):
    """A torchvision ResNet-18 (Hugging Face models with renamed weights do not resume exactly with transformers 5:
    the Trainer loads checkpoints without the weight-name conversion; see the report)."""
    out = tmp_path / "comparison"
    argv = ["--methods", "baseline", "--seeds", "1", "--output_dir", str(out), "--keep_checkpoints",
            *_data(hub_copies, tmp_path), *FAST]
    assert compare.main(argv) == 0
    run_dir = out / "baseline" / "seed1"
    uninterrupted = json.loads((run_dir / "all_results.json").read_text())
    # 18 images in balanced batches of 8 (the last 2 dropped, as the reference does, for every method): 2 steps an
    # epoch, checkpoints after step 2 (epoch 1) and step 4 (the end).
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    # Interrupted after the checkpoint of step 2: no results, no final checkpoint.
    shutil.rmtree(run_dir / "checkpoint-4")
    for name in ("all_results.json", "train_results.json", "eval_results.json", "model.safetensors"):
        (run_dir / name).unlink()
    assert compare.main([a for a in argv if a != "--keep_checkpoints"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["runs"][0]["status"] == "resumed from checkpoint-2"
    assert "(resumed)" in (run_dir / "training_log.txt").read_text()
    resumed = json.loads((run_dir / "all_results.json").read_text())
    assert json.loads((run_dir / "trainer_state.json").read_text())["global_step"] == 4
    for key in ("eval_loss", "eval_accuracy", "eval_cohesion", "eval_separability"):
        assert resumed[key] == pytest.approx(uninterrupted[key], rel=1e-5), key
    assert not list(run_dir.glob("checkpoint-*"))  # without --keep_checkpoints they go once the run has finished


def test_argument_errors(hub_copies, tmp_path, capsys):
    common = ["--output_dir", str(tmp_path / "c"), *_data(hub_copies, tmp_path), *FAST]
    for extra, message in ((["--seed", "3"], "use --seeds"), (["--beta", "0.3"], "--methods"),
                           (["--methods", "cutmix"], "unknown method"), (["--no_such_flag"], "unrecognized arguments: --no_such_flag"),
                           (["-itrm", "Mixup"], "--methods")):
        assert compare.main(common + extra) == 2
        assert message in capsys.readouterr().err
    # Another set of script flags into a directory that holds a comparison is refused.
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "comparison.json").write_text(json.dumps({"script_args": ["-bs", "16"]}))
    assert compare.main(common + ["--methods", "baseline"]) == 2
    assert "other script flags" in capsys.readouterr().err


def test_cpu_sizing_and_method_flags(monkeypatch):
    monkeypatch.setattr(compare, "_cuda", lambda: False)
    plan = compare.make_plan([])
    assert "--num_train_epochs" in plan.script_args and plan.script_args[
        plan.script_args.index("--num_train_epochs") + 1] == "6"
    assert plan.dataset == "digits (built-in)" and str(plan.output_dir) == "runs/compare-digits-resnet18"
    assert [m.name for m in plan.methods] == [m.name for m in methods.METHODS] and plan.seeds == [123]
    explicit = compare.make_plan(["-ep", "3"]).script_args
    assert explicit[:2] == ["-ep", "3"] and "--num_train_epochs" not in explicit
    assert "--num_train_epochs" not in compare.make_plan(["--cpu_epochs", "0"]).script_args
    monkeypatch.setattr(compare, "_cuda", lambda: True)
    monkeypatch.setattr(compare, "_machine", lambda gpu: "GPU")
    assert "--num_train_epochs" not in compare.make_plan([]).script_args  # the script's own recipe on a GPU
    flags = {m.name: m.flags() for m in methods.METHODS}
    assert flags["wo-RA&ER"] == ["--beta", "0", "--inter_mixup", "none", "--alpha", "1"]
    assert flags["w-RA"][:2] == ["--beta", "0.5"]
    assert flags["w-RA&ER(MM)"] == ["--beta", "0.1", "--inter_mixup", "manifold_mixup", "--alpha", "1"]
    assert [m.name for m in methods.resolve_methods(["W-RA&ER(MM)", "baseline", "w-er-m"])] == [
        "wo-RA&ER", "w-ER(M)", "w-RA&ER(MM)"]


def test_each_method_has_one_file_name_for_a_single_run_and_the_comparison():
    # A single run's default directory is runs/<dataset>-<model>-<method>-<id> (a rerun finds an interrupted run by
    # it); a comparison's runs are <output_dir>/<method>/seed<k> (checked above) and --methods takes the name too.
    expected = {"wo-RA&ER": "baseline", "w-RA": "synermix-b0.5", "w-ER(M)": "mixup", "w-ER(MM)": "manifold_mixup",
                "w-RA&ER(M)": "synermix-b0.1-mixup", "w-RA&ER(MM)": "synermix-b0.1-manifold_mixup"}
    for method in methods.METHODS:
        model_args, data_args, args, _, _ = ScriptArgumentParser().parse(["-ds", "cifar100", *method.flags()])
        directory = Path(default_output_dir(model_args, data_args, args, {}))
        assert directory.parent == Path("runs") and directory.name.startswith(
            f"cifar100-resnet18-{expected[method.name]}-")
        assert method.slug == expected[method.name]
        assert methods.resolve_methods([expected[method.name]]) == [method]


def _run(method, seed, final, best=None, cohesion=0.5, separability=1.0):
    return {"method": method, "seed": seed, "final_accuracy": final, "best_accuracy": best or final,
            "cohesion": cohesion, "separability": separability, "eval_loss": 0.1, "train_runtime": 1.0}


def test_aggregation_and_gains():
    assert stats.mean_std([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3}
    assert stats.mean_std([0.5]) == {"mean": 0.5, "std": None, "n": 1}
    assert stats.mean_std([None]) == {"mean": None, "std": None, "n": 0}
    assert stats.mean_std([1.0, math.inf])["mean"] == math.inf

    finals = {"wo-RA&ER": (0.90, 0.92), "w-RA": (0.91, 0.93), "w-ER(M)": (0.93, 0.93), "w-ER(MM)": (0.90, 0.90),
              "w-RA&ER(M)": (0.95, 0.95), "w-RA&ER(MM)": (0.91, 0.93)}
    runs = [_run(m, s, v[s - 1]) for m, v in finals.items() for s in (1, 2)]
    table = stats.aggregate(runs)
    assert table["wo-RA&ER"]["final_accuracy"]["mean"] == pytest.approx(0.91)
    assert table["wo-RA&ER"]["final_accuracy"]["std"] == pytest.approx(0.02 / math.sqrt(2))
    assert table["w-RA"]["seeds"] == [1, 2]
    result = stats.gains(table)
    assert "over_baseline" not in result["wo-RA&ER"]
    assert result["w-ER(M)"]["over_baseline"] == pytest.approx(0.02)
    # w-RA&ER(M): 0.95 - max(w-RA 0.92, w-ER(M) 0.93); w-RA&ER(MM): 0.92 - max(w-RA 0.92, w-ER(MM) 0.90).
    assert result["w-RA&ER(M)"]["over_components"] == pytest.approx(0.02)
    assert result["w-RA&ER(M)"]["better_component"] == "w-ER(M)"
    assert result["w-RA&ER(MM)"]["over_components"] == pytest.approx(0.0)
    assert result["w-RA&ER(MM)"]["better_component"] == "w-RA"
    assert "over_components" not in result["w-RA"]
    # A missing component leaves the gain undefined.
    partial = stats.gains(stats.aggregate([r for r in runs if r["method"] != "w-ER(MM)"]))
    assert partial["w-RA&ER(MM)"]["over_components"] is None

    content = {"config": {"dataset": "d", "model": "m", "scale_note": "Small.", "command": "c", "seeds": [1, 2],
                         "script_args_text": "", "machine": "CPU", "written": "now"},
              "methods": table, "gains": {"final_accuracy": result, "best_accuracy": result},
              "runs": [{**r, "status": "trained", "directory": "x", "best_epoch": 2.0} for r in runs]}
    rows = _table_rows(report.render_markdown(content), "| method | beta")
    assert rows["w-RA&ER(M)"][7] == "+2.00 (vs w-ER(M))" and rows["w-RA&ER(M)"][6] == "+4.00"
    assert rows["wo-RA&ER (baseline)"][4] == "91.00 ± 1.41"


def test_summarize_run_reads_final_best_and_curves():
    history = [
        {"loss": 2.0, "epoch": 1.0, "step": 10},
        {"eval_loss": 1.0, "eval_accuracy": 0.6, "epoch": 1.0, "step": 10},
        {"loss": 1.0, "epoch": 2.0, "step": 20},
        {"eval_loss": 0.8, "eval_accuracy": 0.8, "epoch": 2.0, "step": 20},
        {"loss": 0.5, "epoch": 3.0, "step": 30},
        {"eval_loss": 0.9, "eval_accuracy": 0.7, "epoch": 3.0, "step": 30},
        {"train_runtime": 5.0, "train_loss": 1.2, "epoch": 3.0, "step": 30},
    ]
    results = {"eval_accuracy": 0.7, "eval_loss": 0.9, "eval_cohesion": 0.4, "eval_separability": math.inf,
               "train_runtime": 5.0, "epoch": 3.0}
    summary = stats.summarize_run(results, history)
    assert (summary["final_accuracy"], summary["best_accuracy"], summary["best_epoch"]) == (0.7, 0.8, 2.0)
    assert summary["separability"] == math.inf and summary["cohesion"] == 0.4
    assert summary["curves"]["eval"] == {"epoch": [1.0, 2.0, 3.0], "accuracy": [0.6, 0.8, 0.7],
                                         "loss": [1.0, 0.8, 0.9]}
    assert summary["curves"]["train"] == {"epoch": [1.0, 2.0, 3.0], "loss": [2.0, 1.0, 0.5]}
    curves = stats.aggregate_curves([summary["curves"]["eval"], {"epoch": [1.0, 2.0], "accuracy": [0.8, 0.6]}],
                                      "accuracy")
    assert curves["epoch"] == [1.0, 2.0] and curves["mean"] == pytest.approx([0.7, 0.7])
    assert curves["std"][0] == pytest.approx(0.1 * math.sqrt(2))


def test_runs_in_one_process_do_not_depend_on_what_ran_before(hub_copies, tmp_path):
    """The script initialises the model from --seed, so an in-process run does not depend on what ran before it.

    Evaluation-only runs of a freshly initialised ResNet-18: the evaluation loss tells the initial weights apart."""
    import torch

    def initial_eval_loss(name, seed):
        out = tmp_path / name
        argv = [*_data(hub_copies, tmp_path), *FAST, "--do_eval", "--seed", str(seed), "--output_dir", str(out)]
        assert main(argv) == 0
        return json.loads((out / "all_results.json").read_text())["eval_loss"]

    first = initial_eval_loss("a", 5)
    torch.manual_seed(1234)
    torch.randn(1000)
    assert initial_eval_loss("b", 5) == first
    assert initial_eval_loss("c", 6) != first
