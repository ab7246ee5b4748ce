"""`transfer ablate`: study files, run folders, execution (resume, retries, Ctrl-C), aggregation, plots,
the W&B sweep export and the submitit executor.

Most runs here go through a stand-in for `transfer fit` (FAKE_FIT below, a few milliseconds per run)
that honours the runner's contract: it writes results.json, last.ckpt and the recorder's history, and
fails, dies or presses Ctrl-C when told to. The study's arguments are still checked by the real parser.
One real tiny study (tiny_cnn on synthetic data) runs end to end in the slow tier.
"""

import json
import math
import os
import shlex
import signal
import sys
from pathlib import Path

import pytest
import torch
import yaml
from config_checks import check_monitors, stand_in_teacher
from image_trees import imagenet_tree
from lightning import LightningModule
from rich.console import Console
from support import GLUE_FIXTURES, quiet_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from datamodules.imagenet_classes import IMAGENETTE
from experiments import ablate
from experiments.ablation import stats
from experiments.ablation.execute import Outcome
from experiments.ablation.plan import WANDB_LOGGER, config_hash, plan_study, resolve, runtime_args
from experiments.ablation.progress import Display
from experiments.ablation.recorder import RunRecorder
from experiments.ablation.report import aggregate, markdown_table
from experiments.ablation.runs import read_history
from experiments.ablation.study import StudyError, load_study
from experiments.ablation.wandb_table import log_summary_table
from experiments.cli import CONFIGS, cli_main

STUDIES = Path(__file__).resolve().parents[2] / "experiments" / "studies"
CSV = str(CONFIGS / "logger" / "csv.yaml")
TINY = {
    "model": "FineTuning",
    "model.init_args.backbone": "tiny_cnn",
    "model.init_args.pretrained": False,
    "data": "SyntheticDataModule",
    "trainer.max_epochs": 2,
}

# A stand-in for `transfer fit`: what it does per try comes from FAKE_PLAN {"<head_lr>:<seed>": [action, ...]}.
FAKE_FIT = r"""
import json, os, signal, sys, time
from pathlib import Path

args = sys.argv[1:]
value = lambda flag: args[args.index(flag) + 1] if flag in args else None
run, checkpoints = Path(value("--trainer.default_root_dir")), Path(value("--checkpoint.dirpath"))
seed, lr = int(value("--seed_everything")), float(value("--model.init_args.head_lr") or 0.0)
with (run / "calls.jsonl").open("a") as calls:
    calls.write(json.dumps({"args": args, "threads": os.environ.get("OMP_NUM_THREADS")}) + "\n")
tries = len((run / "calls.jsonl").read_text().splitlines())
actions = json.loads(os.environ.get("FAKE_PLAN", "{}")).get(f"{lr}:{seed}", [])
action = actions[tries - 1] if tries <= len(actions) else "ok"
with (run / "history.jsonl").open("a") as history:
    for epoch in range(2):
        history.write(json.dumps({"epoch": epoch, "val/acc": 0.4 + 0.1 * epoch + lr}) + "\n")
if action == "fail":
    sys.exit(3)
checkpoints.mkdir(parents=True, exist_ok=True)
(checkpoints / "last.ckpt").write_text(f"try {tries}")
if action == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
if action == "interrupt":  # Ctrl-C reaches the runner (the test process) while this run is in progress
    os.kill(os.getppid(), signal.SIGINT)
    time.sleep(60)
(run / "csv").mkdir(exist_ok=True)
results = {"test": {"test/acc": 0.5 + lr + seed / 100 + (0.004 if seed == 1 and lr else 0.0)}, "fit_seconds": 1.0}
(run / "csv" / "results.json").write_text(json.dumps(results))
"""


def write_study(path: Path, **study) -> Path:
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """(study file, `--program` for the stand-in, its runs folder); arms base (head_lr unset) and fast."""
    program = tmp_path / "fake_fit.py"
    program.write_text(FAKE_FIT)
    monkeypatch.delenv("FAKE_PLAN", raising=False)
    study = write_study(
        tmp_path / "tiny.yaml",
        config=CSV,
        overrides=TINY,
        arms={"base": {}, "fast": {"model.init_args.head_lr": 0.01}},
        seeds=[0, 1],
        metrics=["test/acc", "fit_seconds"],
        baseline="base",
    )
    return study, f"{shlex.quote(sys.executable)} {program}", tmp_path / "out"


def run_fake(fake, *extra, plan=None, monkeypatch=None) -> int:
    study, program, out = fake
    if plan is not None:
        monkeypatch.setenv("FAKE_PLAN", json.dumps(plan))
    return ablate.main([str(study), "--out", str(out), "--program", program, *map(str, extra)])


def calls(out: Path) -> dict[str, list[list[str]]]:
    """Each run's tries: the argument lists the stand-in was called with, per run folder."""
    found = {}
    for path in (out / "runs").glob("*/calls.jsonl"):
        found[path.parent.name] = [json.loads(line)["args"] for line in path.read_text().splitlines()]
    return found


def folder(out: Path, arm: str, seed: int) -> Path:
    runs = json.loads((out / "results.json").read_text())["runs"]
    return Path(next(r["folder"] for r in runs if r["arm"] == arm and r["seed"] == seed))


# ------------------------------------------------------------------------------------ study files


def test_axes_cross_in_order_named_arms_stack_files_and_extra_arms_sit_outside_the_grid(tmp_path):
    piece = tmp_path / "piece.yaml"
    piece.write_text("trainer:\n  max_epochs: 1\n")
    study = load_study(
        write_study(
            tmp_path / "grid.yaml",
            config=CSV,
            overrides={"trainer.max_epochs": 2},
            axes={
                "model.init_args.head_lr": [0.01, 0.1],
                "data": {"small": {"data.init_args.num_samples": 32}, "large": {"config": "piece.yaml"}},
            },
            arms={"control": {"model.init_args.head_lr": None}},
            seeds=[3, 4],
            baseline={"data": "small"},
        )
    )
    names = ["head_lr=0.01,small", "head_lr=0.01,large", "head_lr=0.1,small", "head_lr=0.1,large", "control"]
    assert [arm.name for arm in study.arms] == names and study.seeds == (3, 4)
    large = study.arm("head_lr=0.1,large")
    assert large.labels == ["head_lr=0.1", "large"]
    assert study.config_args(large, sets=[("data.init_args.root", "/data")]) == [
        "-c", CSV, "-c", str(piece.resolve()),
        "--trainer.max_epochs", "2", "--model.init_args.head_lr", "0.1", "--data.init_args.root", "/data",
    ]  # fmt: skip
    assert study.config_args(study.arm("control"))[-2:] == ["--model.init_args.head_lr", "null"]
    assert study.baseline_of(large).name == "head_lr=0.1,small"
    assert study.baseline_of(study.arm("head_lr=0.1,small")) is None  # a baseline itself
    assert study.baseline_of(study.arm("control")) is None  # outside the grid
    two_axes = {"s": {"a": {}, "b": {}}, "t": {"x": {}, "y": {}}}
    assert load_study(write_study(tmp_path / "b.yaml", axes=two_axes, baseline="a")).baseline == {"s": "a"}


@pytest.mark.parametrize(
    ("study", "named"),
    [
        ({"arms": {"a": {}}, "seed": [0]}, "seed: unknown key"),
        ({"seeds": [0]}, "axes/arms"),
        ({"arms": {"a": {}}, "baseline": "b"}, "baseline: 'b' is neither an arm (a)"),
        ({"arms": {"a": {"config": "no/such.yaml"}}}, "arms.a.config: config file no/such.yaml not found"),
        ({"arms": {"a": {}}, "seeds": [0, "one"]}, "seeds: expected a non-empty list of integers"),
        ({"axes": {"model.init_args.head_lr": []}}, "axes.model.init_args.head_lr: needs at least one value"),
        ({"axes": {"x": [1, 1]}}, "axes.x: values repeat"),
        (
            {"arms": {"a": {}, "b": {}}, "weight_space": {"w": {"wise_ft": ["a"]}}},
            "weight_space.w.wise_ft: expected two",
        ),
        ({"arms": {"a": {}, "b": {}}, "weight_space": {"w": {"greedy_soup": ["a", "c"]}}}, "greedy_soup: no arm c"),
        ({"arms": {"a": {}, "b": {}}, "weight_space": {"a": {"greedy_soup": ["a", "b"]}}}, "weight_space.a: an arm"),
        ({"arms": {"a": {}, "b": {}}, "weight_space": {"w": {"soup": ["a", "b"]}}}, "weight_space.w: expected one of"),
        (
            {"arms": {"a": {}, "b": {}}, "weight_space": {"w": {"uniform_soup": ["a", "b"], "alphas": [0.5]}}},
            "weight_space.w.alphas: wise_ft's",
        ),  # fmt: skip
        ({"arms": {"a": {}, "b": {}}, "weight_space": {"w": {"wise_ft": ["a", "b"], "alphas": [2]}}}, "w.alphas"),
        (
            {"arms": {"a": {}, "b": {}}, "weight_space": {"w": {"wise_ft": ["a", "b"], "metric": "test/acc"}}},
            "weight_space.w.metric: expected a validation metric",
        ),  # fmt: skip
    ],
)
def test_study_file_errors_name_the_key(study, named, tmp_path, capsys):
    path = write_study(tmp_path / "bad.yaml", **study)
    with pytest.raises(StudyError, match="bad.yaml"):
        load_study(path)
    assert ablate.main([str(path), "--dry-run"]) == 2
    assert named in capsys.readouterr().err


def test_a_key_the_cli_rejects_fails_before_anything_runs(fake, capsys):
    study, program, out = fake
    write_study(study, config=CSV, overrides=TINY, arms={"ok": {}, "typo": {"model.init_args.head_lrr": 0.1}})
    assert ablate.main([str(study), "--out", str(out), "--program", program]) == 2
    error = capsys.readouterr().err
    assert "arm 'typo'" in error and "head_lrr" in error
    assert not (out / "runs").exists()


# --------------------------------------------------------------------------------- run folders


def test_a_run_folder_is_a_hash_of_resolved_config_and_seed(tmp_path):
    piece = tmp_path / "head.yaml"
    piece.write_text("model:\n  class_path: lightning_modules.FineTuning\n  init_args:\n    head_lr: 0.01\n")
    arms = {
        "override": {"model.init_args.head_lr": 0.01},
        "same_from_a_file": {"config": str(piece)},
        "same_plus_bookkeeping": {"model.init_args.head_lr": 0.01, "trainer.enable_progress_bar": False},
        # Init arguments at their defaults, written out: how a run looks after its class gained an argument.
        "same_with_defaults": {
            "model.init_args.head_lr": 0.01,
            "model.init_args.pair_scale": 5.0,
            "model.init_args.lr_decay": 1.0,
            "data.init_args.augment": True,
        },  # fmt: skip
        "other_value": {"model.init_args.head_lr": 0.02},
        "other_than_a_default": {"model.init_args.head_lr": 0.01, "model.init_args.pair_scale": 4.0},
    }
    study = load_study(write_study(tmp_path / "s.yaml", config=CSV, overrides=TINY, arms=arms, seeds=[0, 1]))
    plans = plan_study(study, tmp_path / "out")
    digests = {plan.arm.name: [spec.digest for spec in plan.runs] for plan in plans}
    assert digests["override"] == digests["same_from_a_file"] == digests["same_plus_bookkeeping"]
    assert digests["override"] == digests["same_with_defaults"]
    hashed = resolve(study.config_args(study.arm("same_with_defaults")))[1]
    init_args = hashed["model"]["init_args"]  # the values at their defaults are out, the others in
    assert {"pair_scale", "lr_decay", "head_init", "label_smoothing"}.isdisjoint(init_args)
    assert init_args["head_lr"] == 0.01 and init_args["backbone"] == "tiny_cnn" and "augment" not in hashed["data"]
    assert digests["override"][0] != digests["override"][1]  # another seed, another folder
    assert digests["other_value"][0] not in digests["override"]
    assert digests["other_than_a_default"][0] not in digests["override"]
    # Where data and runs live is no part of the hash; planning again gives the same folders.
    again = plan_study(study, tmp_path / "elsewhere", sets=[("data.init_args.num_workers", "0")])
    assert [spec.digest for plan in again for spec in plan.runs] == [d for ds in digests.values() for d in ds]
    spec = plans[0].runs[1]
    assert spec.directory == (tmp_path / "out" / "runs" / spec.digest).absolute()
    assert spec.command(["transfer"])[:2] == ["transfer", "fit"] and "--seed_everything" in spec.command(["x"])


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_studies_dry_run_without_data(path, in_tmp, capsys):
    study = load_study(path)
    assert ablate.main([str(path), "--dry-run", "--set", "data.init_args.root=/no/data/here"]) == 0
    out = capsys.readouterr().out
    runs = len({tuple(study.config_args(arm)) for arm in study.arms}) * len(study.seeds)  # multi-task arms share
    assert f"{runs} runs" in out and "transfer fit" in out
    assert all(arm.name in out for arm in study.arms)
    assert not (in_tmp / "runs").exists()  # a dry run writes nothing
    assert study.baseline is not None and len(study.seeds) >= 2


def arm_instance(study, arm, tmp: Path):
    """`transfer fit` of one arm, instantiated (not run) with the study's files and keys, on stand-in data: the
    GLUE fixtures, a tiny ImageNet tree, a randomly initialised teacher of the right shape."""
    files, _ = study.files_and_keys(arm)
    extra: list[str] = []
    for file in (f for f in files if f.stem.startswith("distill")):
        extra += stand_in_teacher(file, tmp)
    if any(f.parent.name == "glue" for f in files):
        extra += ["--data.init_args.root", str(GLUE_FIXTURES)]
        if not any(f.stem.startswith("multitask") for f in files):
            extra += ["--data.init_args.cache_dir", str(tmp / "cache")]
    if any(f.parent.name == "imagenette" for f in files):
        extra += ["--data.init_args.root", str(imagenet_tree(tmp / "imagenette", {"val": 1}, IMAGENETTE))]
    logs = ["-c", str(CONFIGS / "logger" / "csv.yaml"), "--trainer.logger.init_args.save_dir", str(tmp)]
    return cli_main([*study.config_args(arm), *logs, *extra], run=False)


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_arm_of_every_shipped_study_instantiates_and_monitors_a_logged_metric(path, in_tmp):
    study = load_study(path)
    for arm in study.arms:
        cli = arm_instance(study, arm, in_tmp)
        check_monitors(cli)
        if not hasattr(cli.datamodule, "task_specs"):  # multi-task: checked per task by check_monitors
            assert cli.model.hparams.num_classes == cli.datamodule.num_classes, arm.name


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_demo_study_runs_one_seed_of_one_epoch_end_to_end(in_tmp, capsys):
    """`make demo`'s study, every arm for real (one seed, one epoch, 32 px, 20 images per class), into a report."""
    study = STUDIES / "demo.yaml"
    sets = ["trainer.max_epochs=1", "data.init_args.image_size=32", "trainer.enable_progress_bar=false",
            "data.init_args.train_per_class=20", "data.init_args.test_per_class=10"]  # fmt: skip
    args = [str(study), "--seeds", "0", "--out", str(in_tmp / "demo"), *[a for s in sets for a in ("--set", s)]]
    assert ablate.main(args) == 0
    report = json.loads((in_tmp / "demo" / "results.json").read_text())
    accuracy = {row["arm"]: row["values"] for row in report["rows"] if row["metric"] == "test/acc"}
    assert accuracy.keys() == {"feature_extraction", "fine_tuning", "gradual_unfreezing", "scratch"}
    assert all(values.keys() == {"0"} and 0 <= values["0"] <= 1 for values in accuracy.values())


def test_transfer_entry_point_dispatches_ablate_before_lightning_cli(fake, monkeypatch, capsys):
    from experiments import entry

    study, _, out = fake
    monkeypatch.setattr(sys, "argv", ["transfer", "ablate", str(study), "--dry-run", "--out", str(out)])
    with pytest.raises(SystemExit) as raised:
        entry.main()
    assert raised.value.code == 0 and "4 runs" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["transfer", "--help"])
    with pytest.raises(SystemExit) as raised:
        entry.main()
    text = capsys.readouterr().out
    assert raised.value.code == 0 and all(f"transfer {name} --help" in text for name in entry.COMMANDS)
    assert "{fit,validate,test,predict}" in text


# ----------------------------------------------------------------------------------- execution


def test_finished_runs_are_never_rerun_and_killed_runs_resume_from_last_checkpoint(fake, monkeypatch):
    _, _, out = fake
    # base seed 1 is killed after saving last.ckpt; fast seed 0 resumes, dies again without a newer
    # checkpoint, and so starts afresh on its third try.
    plan = {"0.0:1": ["kill"], "0.01:0": ["kill", "fail"]}
    assert run_fake(fake, "--retries", 2, plan=plan, monkeypatch=monkeypatch) == 0
    tries = calls(out)
    killed, twice = folder(out, "base", 1).name, folder(out, "fast", 0).name
    assert len(tries[killed]) == 2 and "--ckpt_path" not in tries[killed][0]
    assert tries[killed][1][tries[killed][1].index("--ckpt_path") + 1] == str(
        out / "runs" / killed / "checkpoints" / "last.ckpt"
    )
    assert ["--ckpt_path" in t for t in tries[twice]] == [False, True, False]
    assert (out / "runs" / twice / "checkpoints.failed-2" / "last.ckpt").is_file()
    assert sorted(p.name for p in (out / "runs" / twice).glob("attempt-*.log")) == [
        f"attempt-{i}.log" for i in (1, 2, 3)
    ]

    monkeypatch.delenv("FAKE_PLAN")
    assert run_fake(fake) == 0
    assert calls(out) == tries  # nothing ran twice
    (out / "runs" / killed / "result.json").unlink()  # as if it had been killed after its checkpoint
    assert run_fake(fake) == 0
    assert len(calls(out)[killed]) == 3 and "--ckpt_path" in calls(out)[killed][2]


def test_one_failing_run_does_not_stop_the_others_and_is_reported(fake, monkeypatch, capsys):
    _, _, out = fake
    assert run_fake(fake, "--retries", 1, plan={"0.01:0": ["fail", "fail"]}, monkeypatch=monkeypatch) == 1
    results = json.loads((out / "results.json").read_text())
    status = {(r["arm"], r["seed"]): r["status"] for r in results["runs"]}
    assert status == {("base", 0): "done", ("base", 1): "done", ("fast", 0): "failed", ("fast", 1): "done"}
    failed = next(r for r in results["runs"] if r["status"] == "failed")
    assert failed["attempts"] == 2 and failed["log"].endswith("attempt-2.log") and "code 3" in failed["error"]
    report = (out / "results.md").read_text()
    assert "## Runs not finished" in report and failed["log"] in report
    # Reports name paths relative to the folder the study ran from, never this machine's absolute paths.
    assert not any(Path(r[key]).is_absolute() for r in results["runs"] for key in ("folder", "log") if r[key])
    runs_line = next(line for line in report.splitlines() if line.startswith("Runs: `"))
    assert not Path(runs_line.removeprefix("Runs: `").rstrip("`.")).is_absolute()
    assert not Path(results["study_file"]).is_absolute()
    fast = next(r for r in results["rows"] if r["arm"] == "fast" and r["metric"] == "test/acc")
    assert fast["n"] == 1 and fast["test"]["n"] == 1  # aggregated over what finished
    assert "1 runs did not finish" in capsys.readouterr().out

    monkeypatch.delenv("FAKE_PLAN")
    assert run_fake(fake) == 0  # re-running retries it
    assert len(calls(out)[folder(out, "fast", 0).name]) == 3


@pytest.fixture
def terminal_sigint():
    """Ctrl-C raises KeyboardInterrupt, as in a terminal (a pytest started in the background with `&`
    inherits SIGINT ignored, and the runner would never see the interruption)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_stops_the_study_and_rerunning_continues_where_it_stopped(fake, monkeypatch, capsys, terminal_sigint):
    _, _, out = fake
    assert run_fake(fake, plan={"0.01:0": ["interrupt"]}, monkeypatch=monkeypatch) == 130
    assert "interrupted" in capsys.readouterr().out
    done = [p.parent.name for p in (out / "runs").glob("*/result.json")]
    assert len(done) == 2 and len(calls(out)) == 3  # base finished, fast seed 0 stopped, fast seed 1 not begun
    assert len(list((out / "runs").glob("*/run.json"))) == 3  # the queued run was neither announced nor touched
    monkeypatch.delenv("FAKE_PLAN")
    assert run_fake(fake) == 0
    tries = calls(out)
    assert all(len(tries[name]) == 1 for name in done)
    assert "--ckpt_path" in tries[folder(out, "fast", 0).name][-1]


def test_parallel_workers_split_the_cpu_threads(fake):
    _, _, out = fake
    assert run_fake(fake, "--workers", 2) == 0
    threads = {json.loads(path.read_text())["threads"] for path in (out / "runs").glob("*/calls.jsonl")}
    assert threads == {str(max(1, len(os.sched_getaffinity(0)) // 2))} and len(calls(out)) == 4


def test_submitit_local_executor_runs_the_study(fake, capsys):
    _, _, out = fake
    assert run_fake(fake, "--executor", "submitit-local", "--seeds", 0, "--slurm", "no_such=1") == 2
    assert "--slurm: Unknown executor 'no' in parameter 'no_such'" in capsys.readouterr().err
    assert run_fake(fake, "--executor", "submitit-local", "--seeds", 0, "--slurm", "timeout_min=5") == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["status"] for r in results["runs"]] == ["done", "done"]
    assert list((out / "submitit").rglob("*_log.out"))  # submitit's own job logs


# ------------------------------------------------------------------------- aggregation and plots


def test_statistics_match_hand_computed_values():
    summary = stats.summarize([0.80, 0.82, 0.84])
    assert summary.mean == pytest.approx(0.82) and summary.std == pytest.approx(0.02)
    half = 4.302652729911275 * 0.02 / math.sqrt(3)  # t(0.975, df=2) * s / sqrt(n)
    assert (summary.ci_low, summary.ci_high) == (pytest.approx(0.82 - half), pytest.approx(0.82 + half))
    test = stats.paired_test({0: 0.80, 1: 0.82, 2: 0.84}, {0: 0.78, 1: 0.79, 2: 0.83, 3: 0.5})
    # diffs 0.02, 0.03, 0.01: t = 0.02 / (0.01 / sqrt 3) = 2 sqrt 3; with 2 degrees of freedom the
    # two-sided p is 1 - |t| / sqrt(t^2 + 2).
    assert test.n == 3 and test.diff == pytest.approx(0.02)
    assert test.p_ttest == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(14))
    assert test.p_sign_flip == pytest.approx(2 / 8)  # only all-plus and all-minus are as extreme
    assert stats.sign_flip_p([0.1, -0.1, 0.2, 0.3]) == pytest.approx(6 / 16)
    assert stats.summarize([0.5]).ci_low is None and stats.paired_test({0: 1.0}, {1: 1.0}) is None
    assert stats.paired_test({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0}).p_ttest == 1.0


def test_results_tables_and_plots_are_written(fake):
    study, _, out = fake
    assert run_fake(fake) == 0
    results = json.loads((out / "results.json").read_text())
    fast = next(r for r in results["rows"] if r["arm"] == "fast" and r["metric"] == "test/acc")
    assert fast["values"] == {"0": pytest.approx(0.51), "1": pytest.approx(0.524)}
    assert fast["mean"] == pytest.approx(0.517) and fast["baseline"] == "base"
    assert fast["test"]["diff"] == pytest.approx(0.012) and fast["test"]["n"] == 2
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("arm,metric,n,mean,std,ci95_low,ci95_high,baseline") and len(rows) == 1 + 2 * 2
    report = (out / "results.md").read_text()
    assert "| **fast** | 2 | 0.5170 ± 0.0099 |" in report and "| base (baseline) | 2 |" in report
    for link in ("plots/test_acc.png", "plots/fit_seconds.png", "plots/curves_val_acc.png"):
        assert f"]({link})" in report and (out / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_history(folder(out, "base", 0)) == [{"epoch": 0, "val/acc": 0.4}, {"epoch": 1, "val/acc": 0.5}]
    assert "transfer ablate" in report and str(study) in report


def test_aggregate_compares_each_task_with_its_own_baseline(tmp_path):
    study = load_study(
        write_study(
            tmp_path / "g.yaml",
            config=CSV,
            overrides=TINY,
            seeds=[0, 1],
            axes={
                "task": {"a": {}, "b": {"data.init_args.num_samples": 32}},
                "strategy": {"ft": {}, "fe": {"model.init_args.head_lr": 0.1}},
            },
            baseline="ft",
        )  # fmt: skip
    )
    plans = plan_study(study, tmp_path / "out")
    values = {
        ("a,ft", 0): 0.7,
        ("a,ft", 1): 0.8,
        ("a,fe", 0): 0.6,
        ("a,fe", 1): 0.65,
        ("b,ft", 0): 0.5,
        ("b,fe", 0): 0.9,
    }
    outcomes = {
        spec.digest: Outcome("done", {"test/acc": values[plan.arm.name, spec.seed]})
        for plan in plans
        for spec in plan.runs
        if (plan.arm.name, spec.seed) in values
    }
    result = aggregate(study, plans, outcomes)
    rows = {row.arm: row for row in result.rows}
    assert rows["a,fe"].baseline == "a,ft" and rows["a,fe"].test.diff == pytest.approx(-0.125)
    assert rows["b,fe"].baseline == "b,ft" and rows["b,fe"].test.n == 1 and rows["b,ft"].summary.n == 1
    assert rows["a,ft"].baseline is None and len(result.failed) == 2  # b seed 1 never ran
    table = markdown_table(result, "test/acc")  # the best of each task in bold
    assert "| **a,ft** (baseline) | 2 | 0.7500 ± 0.0707 |" in table and "| **b,fe** | 1 | 0.9000 ± - |" in table
    assert "| a,fe | 2 |" in table and "| b,ft (baseline) |" in table


def test_a_value_that_covers_an_axis_runs_once_for_all_its_values_and_reports_each_task(tmp_path):
    """A multi-task arm: one run per seed serves every task; `test/acc` of `b,mt` is its `test/b/acc`."""
    study = load_study(
        write_study(
            tmp_path / "mt.yaml",
            config=CSV,
            overrides=TINY,
            seeds=[0, 1],
            axes={
                "task": {"a": {}, "b": {"data.init_args.num_samples": 32}},
                # a mapping as a value (the tasks of a multi-task datamodule), as in glue_small_tasks
                "strategy": {"ft": {}, "mt": {"covers": "task", "model.init_args.optimizer": {"lr": 0.1}}},
            },
            baseline="ft",
            curves=["val/acc"],
        )  # fmt: skip
    )
    plans = {plan.arm.name: plan for plan in plan_study(study, tmp_path / "out")}
    digests = {task: [spec.digest for spec in plans[f"{task},mt"].runs] for task in "ab"}
    assert digests["a"] == digests["b"]  # the task's keys are not applied: one shared run per seed
    assert "--data.init_args.num_samples" not in plans["b,mt"].config_args
    assert plans["a,ft"].runs[0].digest != plans["b,ft"].runs[0].digest
    assert plans["b,mt"].arm.run_name == "mt" and plans["b,mt"].arm.labels == ["mt"]
    wandb = {"trainer": {"logger": {"class_path": WANDB_LOGGER, "init_args": {"tags": ["x"]}}}}
    logged = " ".join(runtime_args(wandb, tmp_path, "mt", plans["b,mt"].arm, 0))
    assert '"job_type": "mt"' in logged and '"tags": ["x", "mt"]' in logged
    ft = {("a", 0): 0.7, ("a", 1): 0.8, ("b", 0): 0.5, ("b", 1): 0.6}
    outcomes = {plans[f"{t},ft"].runs[seed].digest: Outcome("done", {"test/acc": v}) for (t, seed), v in ft.items()}
    for seed in (0, 1):  # what a multi-task run logs: one value per task, plus its whole fit time
        metrics = {"test/a/acc": 0.75 + seed / 10, "test/b/acc": 0.4, "fit_seconds": 9.0}
        outcomes[plans["a,mt"].runs[seed].digest] = Outcome("done", metrics)
        history = {"epoch": 0, "val/a/acc": 0.3, "val/b/acc": 0.2}
        plans["a,mt"].runs[seed].directory.mkdir(parents=True)
        (plans["a,mt"].runs[seed].directory / "history.jsonl").write_text(json.dumps(history) + "\n")
    result = aggregate(study, list(plans.values()), outcomes)
    rows = {row.arm: row for row in result.rows_of("test/acc")}
    assert rows["a,mt"].values == {0: 0.75, 1: 0.85} and rows["a,mt"].test.diff == pytest.approx(0.05)
    assert rows["b,mt"].values == {0: 0.4, 1: 0.4} and rows["b,mt"].baseline == "b,ft"
    assert result.unknown_metrics == []
    assert result.curves["val/acc"]["b,mt"] == [[(0, 0.2)], [(0, 0.2)]]


@pytest.mark.parametrize(
    ("axes", "arms", "named"),
    [
        ({"task": {"a": {}}, "strategy": {"mt": {"covers": "tasks"}}}, None, "axes.strategy.mt.covers"),
        ({"task": {"a": {}}, "strategy": {"mt": {"covers": "strategy"}}}, None, "axes.strategy.mt.covers"),
        ({"task": {"a": {"covers": "strategy"}}, "strategy": {"mt": {"covers": "task"}}}, None, "covers"),
        ({"task": {"a": {}}}, {"mt": {"covers": "task"}}, "arms.mt.covers"),
    ],
)
def test_covers_must_name_another_axis(tmp_path, axes, arms, named):
    path = write_study(tmp_path / "bad.yaml", axes=axes, **({"arms": arms} if arms else {}))
    with pytest.raises(StudyError, match=named.replace(".", r"\.")):
        load_study(path)


def test_sweep_export_lists_every_arm_and_seed_and_each_piece_resolves_to_the_same_run(fake, in_tmp):
    study, _, out = fake
    assert ablate.main([str(study), "--out", str(out), "--export-wandb-sweep"]) == 0
    sweep = yaml.safe_load((out / "sweep.yaml").read_text())
    assert sweep["method"] == "grid" and sweep["metric"] == {"name": "test/acc", "goal": "maximize"}
    assert sweep["parameters"]["seed_everything"] == {"values": [0, 1]}
    assert sweep["command"] == ["${env}", "${interpreter}", "-m", "experiments.cli", "fit", "${args}"]
    pieces = sweep["parameters"]["config"]["values"]
    assert [Path(p).name for p in pieces] == ["base.yaml", "fast.yaml"]
    assert "wandb sweep" in (out / "sweep.yaml").read_text()
    plans = plan_study(load_study(study), out)
    for piece, plan in zip(pieces, plans, strict=True):
        assert "seed_everything" not in yaml.safe_load(Path(piece).read_text())  # a sweep parameter
        _, hashed = resolve(["-c", piece])
        assert config_hash(hashed, 1) == plan.runs[1].digest  # the very run the study makes
    assert not (out / "runs").exists()


# ---------------------------------------------------------------------- recorder, display, W&B


class TinyModule(LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 2)

    def training_step(self, batch, _):
        return nn.functional.cross_entropy(self.layer(batch[0]), batch[1])

    def validation_step(self, batch, _):
        self.log("val/acc", (self.layer(batch[0]).argmax(1) == batch[1]).float().mean())
        self.log("train_only", 1.0)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_recorder_writes_progress_and_one_history_row_per_validation(tmp_path):
    data = DataLoader(TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,))), batch_size=8)
    trainer = quiet_trainer(RunRecorder(str(tmp_path)), max_epochs=3)
    (tmp_path / "history.jsonl").write_text(json.dumps({"epoch": 7, "val/acc": 0.0}) + "\n")  # an earlier try's
    trainer.fit(TinyModule(), data, data)
    rows = read_history(tmp_path)
    assert [row["epoch"] for row in rows] == [0, 1, 2] and all(set(row) == {"epoch", "step", "val/acc"} for row in rows)
    assert json.loads((tmp_path / "progress.json").read_text()) == {"epoch": 2, "max_epochs": 3, "step": 4}


def test_display_shows_counts_epochs_and_an_eta(fake):
    study, _, out = fake
    spec = plan_study(load_study(study), out)[0].runs[0]
    console = Console(record=True, width=200, force_terminal=False)
    display = Display("tiny", total=4, workers=1, console=console)
    display.started(spec, 1, None)
    spec.directory.mkdir(parents=True)
    (spec.directory / "progress.json").write_text(json.dumps({"epoch": 1, "max_epochs": 5, "step": 9}))
    console.print(display.render())
    display.finished(spec, Outcome("done", {"test/acc": 0.5}, seconds=100.0, attempts=1))
    console.print(display.render())
    text = console.export_text()
    assert "epoch 2/5" in text and "ETA ?" in text and "done base seed 0" in text
    assert "1/4 · 1 done · 0 failed · 0 earlier · 3 to go · ETA 5 min 00 s" in text


def test_wandb_summary_table_is_logged_offline_and_never_raises(fake, tmp_path, monkeypatch):
    assert run_fake(fake) == 0
    study, _, out = fake
    result = aggregate(load_study(study), plan_study(load_study(study), out), {})
    message = log_summary_table(result, "transfer", tmp_path / "wb")
    assert "offline" in message and list((tmp_path / "wb" / "wandb").rglob("*.wandb"))
    import wandb

    monkeypatch.setattr(wandb, "init", lambda **kwargs: (_ for _ in ()).throw(RuntimeError("no service")))
    assert "not logged (RuntimeError: no service)" in log_summary_table(result, "transfer", tmp_path / "wb2")


# ------------------------------------------------------------------------------- a real study


@pytest.mark.slow
def test_a_real_tiny_study_end_to_end_with_a_killed_run_resumed(tmp_path):
    study = write_study(
        tmp_path / "real.yaml",
        config=CSV,
        overrides={**TINY, "trainer.max_epochs": 3},
        arms={"base": {}, "fast": {"model.init_args.head_lr": 0.01}},
        seeds=[0, 1],
        metrics=["test/acc"],
        baseline="base",
    )
    out = tmp_path / "out"
    assert ablate.main([str(study), "--out", str(out), "--workers", "2"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["status"] for r in results["runs"]] == ["done"] * 4
    assert all(0 <= r["metrics"]["test/acc"] <= 1 for r in results["runs"])
    run = folder(out, "fast", 1)
    assert [row["epoch"] for row in read_history(run)] == [0, 1, 2] and (run / "checkpoints" / "last.ckpt").is_file()
    assert (out / "plots" / "curves_val_acc.png").is_file()
    first = json.loads((run / "result.json").read_text())["metrics"]["test/acc"]
    (run / "result.json").unlink()  # killed after its last checkpoint: the re-run resumes it
    assert ablate.main([str(study), "--out", str(out)]) == 0
    log = (run / "attempt-2.log").read_text()
    assert "Restored all states from the checkpoint" in log and not (folder(out, "base", 0) / "attempt-2.log").exists()
    assert json.loads((run / "result.json").read_text())["metrics"]["test/acc"] == pytest.approx(first)


@pytest.mark.slow
def test_weight_space_arms_are_made_from_each_seeds_checkpoints_and_reported_beside_the_runs(tmp_path):
    study = write_study(
        tmp_path / "ws.yaml",
        config=CSV,
        overrides={**TINY, "data.init_args.num_samples": 64, "data.init_args.batch_size": 16},
        arms={"start": {"model.init_args.optimizer.init_args.lr": 1e-4}, "end": {"model.init_args.head_lr": 0.05}},
        weight_space={
            "wise_ft": {"wise_ft": ["start", "end"], "alphas": [0, 1], "metric": "val/acc"},
            "greedy_soup": {"greedy_soup": ["start", "end"], "metric": "val/acc"},
            "uniform_soup": {"uniform_soup": ["start", "end"], "metric": "val/acc"},
        },
        seeds=[0],
        metrics=["test/acc", "best_score"],
        baseline="end",
    )
    out = tmp_path / "out"
    assert ablate.main([str(study), "--out", str(out), "--dry-run"]) == 0
    assert ablate.main([str(study), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    runs = {run["arm"]: run for run in results["runs"]}
    assert {arm: run["status"] for arm, run in runs.items() if run["status"] != "done"} == {
        "uniform_soup": "finished earlier"  # the greedy soup's command made it
    }
    made = {arm: runs[arm]["metrics"] for arm in ("wise_ft", "greedy_soup", "uniform_soup")}
    ends = {arm: runs[arm]["metrics"] for arm in ("start", "end")}
    # WiSE-FT at alpha 0 or 1 is one of its end points, tested again: the one better on validation.
    chosen = "end" if made["wise_ft"]["alpha"] == 1.0 else "start"
    assert made["wise_ft"]["test/acc"] == pytest.approx(ends[chosen]["test/acc"], abs=1e-6)
    assert made["wise_ft"]["best_score"] == pytest.approx(max(e["best_score"] for e in ends.values()), abs=1e-6)
    # One soup command serves both soups; its report says which rows they are.
    reports = list((out / "weight_space").glob("*/results.json"))
    assert len(reports) == 2 and len(list((out / "weight_space").glob("*/command.log"))) == 2
    soup = next(json.loads(r.read_text()) for r in reports if "greedy_soup" in json.loads(r.read_text())["selected"])
    rows = {row["name"]: row["metrics"] for row in soup["rows"]}
    assert made["uniform_soup"]["test/acc"] == rows[soup["selected"]["uniform_soup"]]["test/acc"]
    assert made["greedy_soup"]["best_score"] >= max(e["best_score"] for e in ends.values()) - 1e-6
    table = {row["arm"]: row for row in results["rows"] if row["metric"] == "test/acc"}
    assert table["wise_ft"]["baseline"] == "end" and table["wise_ft"]["values"] == {"0": made["wise_ft"]["test/acc"]}
    stamps = [p.stat().st_mtime for p in reports]
    assert ablate.main([str(study), "--out", str(out)]) == 0  # read again, not made again
    assert [p.stat().st_mtime for p in reports] == stamps
