"""`transfer tune`: search files, the space, early errors, pruning inside a run, continuing, the report."""

import json

import optuna
import pytest
import torch
import yaml
from lightning.pytorch import Trainer

from datamodules import SyntheticDataModule
from experiments.ablation.study import StudyError
from experiments.cli import CONFIGS
from experiments.search.pruning import PRUNED, TrialPruning, pruned_at
from experiments.search.report import compute
from experiments.search.space import load_search
from experiments.search.trial import CONTINUES, INTERRUPTED, StopAfterFailures, continue_interrupted
from experiments.tune import check_space
from experiments.tune import main as tune_main
from lightning_modules import FineTuning

State = optuna.trial.TrialState
BASE = {
    "model": {"class_path": "lightning_modules.FineTuning", "init_args": {"backbone": "tiny_cnn", "pretrained": False}},
    "data": {"class_path": "datamodules.SyntheticDataModule", "init_args": {"num_classes": 3, "num_samples": 48}},
    "trainer": {"max_epochs": 2, "accelerator": "cpu"},
}
SPACE = {
    "model.init_args.head_lr": {"low": 1.0e-4, "high": 1.0e-1, "log": True},
    "data.init_args.batch_size": {"choices": [8, 16]},
}


def write_search(tmp_path, **keys):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({"config": "base.yaml", "space": SPACE, "trials": 2, **keys}, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"spaces": {}}, "spaces: unknown key"),
        ({"space": {"model.init_args.head_lr": {"low": 1.0, "high": 0.1}}}, "expected numbers low < high"),
        ({"space": {"model.init_args.head_lr": {"low": 0.0, "high": 1.0, "log": True}}}, "needs low > 0"),
        ({"space": {"lr": {"choices": [1, 2]}}}, "space.lr: a list of values needs a config key"),
        ({"space": {"model.init_args.head_lr": {"choices": []}}}, "space.model.init_args.head_lr.choices"),
        ({"space": {"model.init_args.head_lr": {"low": 1, "high": 2, "lg": True}}}, "unknown keys ['lg']"),
        ({"trials": None}, "trials/timeout: give the budget"),
        ({"trials": 0}, "trials: expected a number of trials >= 1"),
        ({"pruner": {"name": "asha"}}, "pruner.name: expected one of"),
        ({"direction": "up"}, "direction: expected maximize or minimize"),
        ({"final_seeds": [0, 0]}, "final_seeds: seeds repeat"),
        ({"space": {"strategy": {"choices": {"lora": {"config": "nope.yaml"}}}}}, "config file nope.yaml not found"),
    ],
)
def test_bad_search_files_are_named(tmp_path, keys, message):
    with pytest.raises(StudyError, match="search.yaml") as raised:
        load_search(write_search(tmp_path, **keys))
    assert message in str(raised.value)


def test_the_space_gives_optuna_its_types_and_the_runs_their_arguments(tmp_path):
    (tmp_path / "lora.yaml").write_text("model: {init_args: {head_lr: 0.5}}\n")
    space = {
        **SPACE,
        "trainer.max_epochs": {"low": 1, "high": 3},
        "strategy": {"choices": {"full": {}, "lora": {"config": "lora.yaml", "trainer.max_epochs": 9}}},
    }
    search = load_search(write_search(tmp_path, space=space, overrides={"data.init_args.num_samples": 30}))
    assert [p.kind for p in search.space] == ["float", "choice", "int", "named"]
    assert search.direction == "maximize" and search.metric == "best_score"
    assert search.grid_size() == 3 * 2 * 3 * 2  # a range's grid: low, middle (geometric for log), high
    assert search.space[0].grid == pytest.approx((1e-4, 1e-4**0.5 * 0.1**0.5, 0.1))
    trial = optuna.trial.FixedTrial(
        {"model.init_args.head_lr": 0.01, "data.init_args.batch_size": 8, "trainer.max_epochs": 2, "strategy": "lora"}
    )
    params = {p.name: p.suggest(trial) for p in search.space}
    assert params == {"model.init_args.head_lr": 0.01, "data.init_args.batch_size": 8, "trainer.max_epochs": 2,
                      "strategy": "lora"}  # fmt: skip
    args = search.config_args(params, (("trainer.max_epochs", 5),))
    files = [args[i + 1] for i, a in enumerate(args) if a == "-c"]
    assert files == [str(tmp_path / "base.yaml"), str(tmp_path / "lora.yaml")]  # files first, in order
    keys = args[2 * len(files) :]
    assert keys[:2] == ["--data.init_args.num_samples", "30"]  # the search's overrides, then the point
    assert keys[-6:] == ["--trainer.max_epochs", "2", "--trainer.max_epochs", "9", "--trainer.max_epochs", "5"]


def test_a_bad_value_in_the_space_stops_before_any_trial(tmp_path, capsys):
    space = {**SPACE, "data.init_args.batch_size": {"choices": [8, "many"]}}
    out = tmp_path / "out"
    assert tune_main([str(write_search(tmp_path, space=space)), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "space.data.init_args.batch_size = 'many'" in error
    assert not out.exists()


def test_a_bad_pruner_option_stops_before_any_trial(tmp_path, capsys):
    path = write_search(tmp_path, pruner={"name": "successive_halving", "reduction_factr": 3})
    assert tune_main([str(path), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "pruner:" in error and "reduction_factr" in error
    assert not (tmp_path / "out").exists()


def fit_with_pruning(tmp_path, storage, study, trial_id, pruner, epochs=3):
    callback = TrialPruning(storage, study.study_name, trial_id, "val/score", pruner, str(tmp_path / "run"))
    torch.manual_seed(0)
    trainer = Trainer(max_epochs=epochs, callbacks=[callback], logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")  # fmt: skip
    trainer.fit(FineTuning(backbone="tiny_cnn", pretrained=False, num_classes=3),
                datamodule=SyntheticDataModule(num_classes=3, num_samples=24, batch_size=8))  # fmt: skip
    return trainer


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_run_reports_each_epoch_and_stops_cleanly_when_its_trial_is_pruned(tmp_path, kind):
    from experiments.search.optuna_parts import make_storage

    storage = f"sqlite:///{tmp_path / 'optuna.db'}" if kind == "sqlite" else f"journal:{tmp_path / 'journal.log'}"
    pruner = {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0}
    study = optuna.create_study(study_name="s", storage=make_storage(storage), direction="maximize")
    alone = study.ask()
    trainer = fit_with_pruning(tmp_path, storage, study, alone._trial_id, pruner)
    assert trainer.current_epoch == 3  # no other trial: nothing to compare with, it ran to the end
    assert sorted(study.get_trials()[0].intermediate_values) == [0, 1, 2]
    assert pruned_at(tmp_path / "run") is None
    study.tell(alone, 0.0)
    study.add_trial(optuna.trial.create_trial(value=1.0, intermediate_values={0: 2.0, 1: 2.0, 2: 2.0}))

    behind = study.ask()  # val/score is at most 1: below the median 2.0 of the finished trials at epoch 0
    trainer = fit_with_pruning(tmp_path, storage, study, behind._trial_id, pruner)
    assert trainer.current_epoch == 1  # stopped after its first epoch, without an exception
    assert pruned_at(tmp_path / "run") == 0
    assert json.loads((tmp_path / "run" / PRUNED).read_text())["message"].startswith("Trial was pruned at epoch 0")
    assert list(study.get_trials()[-1].intermediate_values) == [0]

    last = study.ask()  # as far behind, but its first epoch is its last: reported, and it completes
    trainer = fit_with_pruning(tmp_path / "last", storage, study, last._trial_id, pruner, epochs=1)
    assert trainer.current_epoch == 1 and pruned_at(tmp_path / "last" / "run") is None
    assert list(study.get_trials()[-1].intermediate_values) == [0]


def test_interrupted_trials_are_continued_once_with_the_same_values():
    study = optuna.create_study()
    params = {"x": 0.3}
    distributions = {"x": optuna.distributions.FloatDistribution(0, 1)}
    study.add_trial(optuna.trial.create_trial(state=State.FAIL, params=params, distributions=distributions,
                                              user_attrs={INTERRUPTED: True}))  # fmt: skip
    study.add_trial(optuna.trial.create_trial(state=State.FAIL, params={"x": 0.9}, distributions=distributions))
    assert continue_interrupted(study) == [0]  # the plain failure is not continued
    waiting = study.get_trials(states=(State.WAITING,))
    assert len(waiting) == 1 and waiting[0].user_attrs[CONTINUES] == 0
    assert continue_interrupted(study) == []
    trial = study.ask()
    assert trial.suggest_float("x", 0, 1) == 0.3


def test_the_search_stops_after_three_failures_in_a_row():
    stop = StopAfterFailures(3)
    study = optuna.create_study()
    calls = []
    study.stop = lambda: calls.append(1)
    for state in (State.FAIL, State.FAIL, State.COMPLETE, State.FAIL, State.FAIL):
        stop(study, optuna.trial.create_trial(state=state, value=1.0 if state == State.COMPLETE else None))
    assert calls == [] and not stop.stopped
    stop(study, optuna.trial.create_trial(state=State.FAIL))
    assert calls == [1] and stop.stopped


def test_compute_counts_each_run_once_against_a_grid_at_the_cost_of_a_full_trial(tmp_path):
    search = load_search(write_search(tmp_path))  # grid: 3 head rates x 2 batch sizes

    def trial(state, run, seconds):
        attrs = {"run_seed0": run, "wall_seconds_seed0": seconds}
        return optuna.trial.create_trial(state=state, value=None if state == State.PRUNED else 0.5, user_attrs=attrs)

    trials = [trial(State.COMPLETE, "a", 100.0), trial(State.COMPLETE, "b", 80.0), trial(State.PRUNED, "c", 30.0),
              trial(State.COMPLETE, "a", 100.0)]  # fmt: skip
    cost = compute(search, trials)
    assert cost["runs"] == 3 and cost["spent_seconds"] == 210.0  # run "a" reused by the fourth trial
    assert cost["full_trial_seconds"] == pytest.approx((100 + 80 + 100) / 3, abs=0.1)
    assert cost["grid_seconds"] == pytest.approx(6 * 280 / 3, abs=0.1)
    assert cost["grid_over_search"] == pytest.approx(6 * 280 / 3 / 210, abs=0.05)


def tune_command(path, out, *extra):
    import sys

    return [sys.executable, "-m", "experiments.entry", "tune", str(path), "--out", str(out), *map(str, extra)]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_worker_processes_share_one_database_and_the_final_step_reuses_the_best_run(tmp_path):
    import subprocess

    path = write_search(tmp_path, trials=4, seeds=[0], final_seeds=[0], sampler={"name": "random", "seed": 0},
                        pruner="none")  # fmt: skip
    out = tmp_path / "out"
    workers = [subprocess.Popen(tune_command(path, out, "--no-final"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for _ in range(2)]  # fmt: skip
    logs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], logs
    assert all("best_score" in log for log in logs)  # each worker finished trials of its own
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{out / 'optuna.db'}")
    done = study.get_trials(states=(State.COMPLETE,))
    assert len(done) >= 4 and len({t.number for t in done}) == len(done)

    finish = subprocess.run(tune_command(path, out), capture_output=True, text=True, timeout=600)
    assert finish.returncode == 0, finish.stdout + finish.stderr
    assert "the budget of 4 trials is spent" in finish.stdout
    assert "1 finished earlier" in finish.stdout  # the best trial's run is the `best` arm's seed 0
    report = json.loads((out / "results.json").read_text())
    assert report["best"]["number"] == study.best_trial.number
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["model"]["init_args"]["head_lr"] == pytest.approx(study.best_trial.params["model.init_args.head_lr"])
    assert (out / "final" / "results.md").is_file() and (out / "plots" / "history.png").is_file()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_search_stopped_mid_trial_continues_that_trial_from_its_checkpoint(tmp_path):
    import signal
    import subprocess
    import time

    longer = {"data.init_args.num_samples": 1500, "trainer.max_epochs": 6}  # epochs of seconds: the stop lands mid-run
    path = write_search(tmp_path, trials=1, pruner="none", overrides=longer)
    out = tmp_path / "out"
    first = subprocess.Popen(tune_command(path, out, "--no-final"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not list(out.glob("runs/*/checkpoints/last.ckpt")) and time.monotonic() < deadline:
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    log = first.communicate(timeout=120)[0]
    assert first.returncode == 130, log
    run = next(out.glob("runs/*"))
    assert not (run / "result.json").exists()

    again = subprocess.run(tune_command(path, out, "--no-final"), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "continuing interrupted trials [0]" in again.stdout
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{out / 'optuna.db'}")
    stopped, continued = study.get_trials()
    assert stopped.state == State.FAIL and stopped.user_attrs[INTERRUPTED]
    assert continued.state == State.COMPLETE and continued.user_attrs[CONTINUES] == 0
    assert continued.params == stopped.params and continued.user_attrs["run_seed0"] == stopped.user_attrs["run_seed0"]
    assert json.loads((run / "result.json").read_text())["attempts"] == 1  # this invocation's single try...
    assert len(list(run.glob("attempt-*.log"))) == 2  # ...was the second of the run,
    assert "Restored all states from the checkpoint" in (run / "attempt-2.log").read_text()  # from last.ckpt


@pytest.mark.parametrize("path", sorted(CONFIGS.parent.glob("searches/*.yaml")), ids=lambda p: p.name)
def test_the_shipped_search_files_pass_the_real_parser(path):
    search = load_search(path)
    check_space(search, ())  # every choice and both ends of every range
    assert search.trials and search.final_seeds


def test_a_trial_whose_worker_died_is_failed_by_its_heartbeat_and_retried_with_the_same_values(tmp_path, monkeypatch):
    import time

    from experiments.search import optuna_parts

    monkeypatch.setattr(optuna_parts, "HEARTBEAT_S", 1)
    monkeypatch.setattr(optuna_parts, "GRACE_S", 1)
    search = load_search(write_search(tmp_path))
    storage = optuna_parts.make_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna_parts.load_or_create(search, storage)
    dead = study.ask()
    value = dead.suggest_float("model.init_args.head_lr", 1e-4, 1e-1, log=True)
    storage.record_heartbeat(dead._trial_id)  # then its worker is killed: no more heartbeats
    time.sleep(2.5)
    optuna.storages.fail_stale_trials(study)  # what every worker does before a trial
    failed, retry = study.get_trials()
    assert failed.state == State.FAIL and retry.state == State.WAITING
    assert retry.params == {"model.init_args.head_lr": value}  # same values: same run folder, which resumes


def test_a_worker_joining_a_seeded_search_proposes_values_of_its_own(tmp_path):
    from experiments.search import optuna_parts

    search = load_search(write_search(tmp_path, sampler={"name": "tpe", "seed": 0}))
    storage = optuna_parts.make_storage(f"sqlite:///{tmp_path / 'optuna.db'}")

    def first_proposal(study):
        return study.ask().suggest_float("model.init_args.head_lr", 1e-4, 1e-1, log=True)

    creator = optuna_parts.load_or_create(search, storage)
    joiner = optuna_parts.load_or_create(search, storage)  # a second worker, or a re-run continuing the search
    assert first_proposal(creator) != first_proposal(joiner)  # with one seed both would propose the same
    fresh = optuna_parts.make_storage(f"sqlite:///{tmp_path / 'again.db'}")
    again = optuna_parts.load_or_create(search, fresh)  # the same search from the start: the same values
    assert first_proposal(again) == creator.trials[0].params["model.init_args.head_lr"]
