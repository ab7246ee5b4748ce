"""`transfer tune`: a hyper-parameter and strategy search with Optuna that stops bad trials early.

Every trial is a `transfer fit` run (per seed) in its own folder, as in `transfer ablate`; Optuna's sampler
picks the values and its pruner, fed by the pruning callback this command adds to each run, stops the
trials that fall behind. The search lives in a database (default a SQLite file in the run folder): the same
command continues a stopped search, and any number of workers (`--workers`, more commands, SLURM jobs)
share one. At the end: the best trial as a config file, re-run over `final_seeds` against the base config
(`transfer ablate`), the importance of each parameter and Optuna's plots.

    transfer tune experiments/searches/cifar10_fine_tuning.yaml --set data.init_args.root=PATH
    transfer tune SEARCH --workers 2                       # two trials at a time on this machine
    transfer tune SEARCH --storage postgresql://user@host/db --executor slurm --jobs 8 --slurm timeout_min=240
    optuna-dashboard sqlite:///runs/tune/<name>/optuna.db  # watch it live
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from experiments.ablate import EXECUTORS, _key_value, sigterm_as_interrupt
from experiments.ablation.report import shown
from experiments.ablation.study import StudyError
from experiments.search.space import Search, load_search

DEFAULT_PROGRAM = f"{shlex.quote(sys.executable)} -m experiments.cli"  # as `transfer ablate`'s default


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="transfer tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("search", type=Path, help="a search file (experiments/searches/*.yaml)")
    parser.add_argument("-c", "--config", dest="configs", type=Path, action="append", default=[], metavar="FILE",
                        help="a config piece every trial stacks after the search's files")  # fmt: skip
    parser.add_argument("--set", dest="sets", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                        help="a config key for every trial, as `transfer fit --KEY VALUE`")  # fmt: skip
    parser.add_argument("--out", type=Path, help="run folder (default runs/tune/<search name>)")
    parser.add_argument("--results", type=Path, help="report folder (default --out)")
    parser.add_argument("--storage", help="Optuna database URL or journal:FILE (default sqlite:///<out>/optuna.db)")
    parser.add_argument("--workers", type=int, default=1, help="trials at a time in this process (CPU split)")
    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help="local (default), or slurm / submitit-local: --jobs workers as submitit jobs")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=1, help="submitit worker jobs (with --executor slurm)")
    parser.add_argument("--slurm", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                        help="a submitit parameter: timeout_min=240, gpus_per_node=1, ...")  # fmt: skip
    parser.add_argument("--retries", type=int, default=1, help="tries after a failed one, per run")
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help="stop a run's try that runs longer")
    parser.add_argument("--no-final", action="store_true", help="search only: no best config, re-runs or report")
    parser.add_argument("--program", default=DEFAULT_PROGRAM,
                        help="the command that runs `transfer` (default: this Python -m experiments.cli)")  # fmt: skip
    return parser


def check_space(search: Search, sets: tuple[tuple[str, Any], ...]) -> None:
    """Every choice and both ends of every range through the real parser (the other parameters at their
    first value), before any trial starts; a ConfigError names the parameter and value."""
    from experiments.ablation.plan import ConfigError, resolve

    first = {p.name: p.checked_values()[0] for p in search.space}
    for parameter in search.space:
        for value in parameter.checked_values():
            try:
                resolve(search.config_args({**first, parameter.name: value}, sets))
            except ConfigError as error:
                raise ConfigError(f"{search.path}: space.{parameter.name} = {value!r}: {error}") from None


def finished(study: Any) -> int:
    import optuna

    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                         optuna.trial.TrialState.PRUNED)))  # fmt: skip


def search_loop(search: Search, options: argparse.Namespace, out: Path, storage_url: str, console: Console) -> int:
    """This process's share of the search: trials until the budget is spent (shared with every worker)."""
    import optuna

    from experiments.search.optuna_parts import load_or_create, make_storage
    from experiments.search.trial import Objective, StopAfterFailures, TrialFailed, continue_interrupted

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_or_create(search, make_storage(storage_url))
    continued = continue_interrupted(study)
    if continued:
        console.print(f"continuing interrupted trials {continued} (same values; their runs resume)")
    objective = Objective(search, out, storage_url, shlex.split(options.program), console, tuple(options.sets),
                          options.workers, options.retries, options.timeout)  # fmt: skip
    failures = StopAfterFailures()
    callbacks: list[Any] = [failures]
    if search.trials is not None:
        left = search.trials - finished(study)
        if left <= 0:
            console.print(f"{search.name}: the budget of {search.trials} trials is spent")
            return 0
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        callbacks.append(optuna.study.MaxTrialsCallback(search.trials, states=states))
    from experiments.ablation.plan import ConfigError

    try:
        with sigterm_as_interrupt():
            study.optimize(objective, n_jobs=options.workers, timeout=search.timeout, callbacks=callbacks,
                           catch=(TrialFailed, ConfigError), gc_after_trial=False)  # fmt: skip
    except KeyboardInterrupt:
        objective.processes.stop_all()
        console.print("[yellow]interrupted[/]: re-run the same command to continue the search")
        return 130
    if failures.stopped:
        console.print(f"[red]stopped[/]: {failures.limit} trials in a row failed (the errors are above; each "
                      f"trial's run folder has its attempt logs)")  # fmt: skip
        return 1
    return 0


def run_workers(options: argparse.Namespace, argv: list[str], out: Path, storage_url: str, console: Console) -> int:
    """`--jobs` submitit jobs, each a `transfer tune ... --no-final` worker on the shared database."""
    import submitit

    from experiments.ablation.slurm import CLUSTERS

    executor = submitit.AutoExecutor(folder=out / "submitit" / "%j", cluster=CLUSTERS[options.executor])
    executor.update_parameters(name="transfer-tune", **{k: yaml.safe_load(v) for k, v in options.slurm})
    worker = [*argv, "--executor", "local", "--no-final", "--storage", storage_url, "--out", str(out)]
    jobs = [executor.submit(main, worker) for _ in range(options.jobs)]
    console.print(f"{len(jobs)} worker jobs submitted: {', '.join(job.job_id for job in jobs)}")
    try:
        codes = [job.result() for job in jobs]
    except KeyboardInterrupt:
        for job in jobs:
            job.cancel()
        console.print("[yellow]interrupted[/]: worker jobs cancelled; re-run the same command to continue")
        return 130
    return max(codes)


def shown_url(url: str) -> str:
    """A SQLite URL relative to the current folder (reports name no machine's absolute paths); others as given."""
    from experiments.ablation.report import shown

    prefix = "sqlite:///"
    return prefix + shown(url.removeprefix(prefix)) if url.startswith(prefix + "/") else url


def finish(search: Search, options: argparse.Namespace, out: Path, storage_url: str, console: Console,
           command: str, started: float) -> int:  # fmt: skip
    import optuna

    from experiments import ablate
    from experiments.search.optuna_parts import load_or_create, make_storage
    from experiments.search.report import final_study, write_best_config, write_report

    study = load_or_create(search, make_storage(storage_url))
    results = (options.results or out).absolute()
    results.mkdir(parents=True, exist_ok=True)
    final = None
    if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        best = study.best_trial
        config = write_best_config(search, best, tuple(options.sets), results / "best.yaml")
        console.print(f"best: trial {best.number}, {search.metric} {best.value:.4f}; config {config}")
        if search.final_seeds:
            file = final_study(search, best, out / "final_study.yaml")
            # Paths as the project sees them: the final report quotes this command.
            args = [shown(file), "--out", shown(out), "--results", shown(results / "final")]
            args += ["--program", options.program] if options.program != DEFAULT_PROGRAM else []
            args += [a for key, value in options.sets for a in ("--set", f"{key}={value}")]
            ablate.main(args)
            final = results / "final" / "results.md"
    header = {"command": command, "database": shown_url(storage_url), "wall time of this invocation":
              f"{(time.perf_counter() - started) / 60:.1f} min"}  # fmt: skip
    path = write_report(search, study, results, header, final)
    console.print(f"report: {path}")
    console.print(f"dashboard: optuna-dashboard {shown_url(storage_url)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    options = parser.parse_args(argv)
    if options.workers < 1 or options.retries < 0 or options.jobs < 1:
        parser.error("--workers and --jobs must be >= 1, --retries >= 0")
    console = Console(highlight=False, soft_wrap=True)
    try:
        search = load_search(options.search)
    except StudyError as error:
        print(f"transfer tune: error: {error}", file=sys.stderr)
        return 2
    search = dataclasses.replace(search, configs=search.configs + tuple(p.absolute() for p in options.configs))
    from experiments.ablation.plan import ConfigError  # imports Lightning: after the cheap checks
    from experiments.search.optuna_parts import make_pruner, make_sampler

    try:
        make_pruner(search.pruner)
        make_sampler(search)
        check_space(search, tuple(options.sets))
    except (ConfigError, ValueError) as error:
        print(f"transfer tune: error: {error}", file=sys.stderr)
        return 2
    out = (options.out or Path("runs") / "tune" / search.name).absolute()
    out.mkdir(parents=True, exist_ok=True)
    storage_url = options.storage or f"sqlite:///{out / 'optuna.db'}"
    started = time.perf_counter()
    if options.executor == "local":
        code = search_loop(search, options, out, storage_url, console)
    else:
        code = run_workers(options, argv, out, storage_url, console)
    if code != 0 or options.no_final:
        return code
    return finish(search, options, out, storage_url, console, shlex.join(["transfer", "tune", *argv]), started)


if __name__ == "__main__":
    sys.exit(main())
