"""`transfer ablate STUDY.yaml`: a study file -> runs of `transfer fit` -> a table with intervals, plots.

Every run is a normal `transfer fit ... --test_after_fit true` in a subprocess, in a folder named by a
hash of its resolved config and seed (`<out>/runs/<hash>/`). Re-running the same command skips the
finished runs and retries or resumes the others, so Ctrl-C (or a crash) loses at most the runs in
progress, which resume from their last checkpoint. The format of study files: `experiments.ablation.study`.

    transfer ablate experiments/studies/kd_temperature.yaml --dry-run
    transfer ablate experiments/studies/strategies_cifar10.yaml --set data.init_args.root=cifar10.tar.gz
    transfer ablate STUDY.yaml --workers 2 | --executor slurm --slurm slurm_partition=gpu --slurm gpus_per_node=1
    transfer ablate STUDY.yaml --export-wandb-sweep
"""

from __future__ import annotations

import argparse
import fcntl
import shlex
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from rich.console import Console
from rich.table import Table

from experiments.ablation.study import Study, StudyError, load_study

if TYPE_CHECKING:
    from experiments.ablation.executors import Executor
    from experiments.ablation.plan import ArmPlan

EXECUTORS = ("local", "slurm", "submitit-local")


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip().removeprefix("--"), value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="transfer ablate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("study", type=Path, help="the study file (experiments/studies/<name>.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state; run nothing")
    parser.add_argument("--out", type=Path, help="folder of the study's runs (default runs/studies/<study name>)")
    parser.add_argument("--results", type=Path, help="folder for results.{csv,md,json} and plots/ (default --out)")
    parser.add_argument(
        "--set",
        dest="sets",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config key for every run, as `transfer fit --KEY VALUE` (e.g. data.init_args.root=...)",
    )
    parser.add_argument(
        "-c",
        "--config",
        dest="configs",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a config piece every run stacks after the study's files (e.g. trainer/gpu.yaml)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="these seeds instead of the study's")
    parser.add_argument("--workers", type=int, default=1, help="runs at a time on this machine (CPU threads split)")
    parser.add_argument("--retries", type=int, default=1, help="tries after a failed one, per run and invocation")
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help="stop a try that runs longer (a failure)")
    parser.add_argument(
        "--executor", choices=EXECUTORS, default="local", help="local (default), slurm or submitit-local"
    )
    parser.add_argument(
        "--slurm",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a submitit parameter: timeout_min=120, gpus_per_node=1, slurm_partition=gpu, ...",
    )
    parser.add_argument(
        "--export-wandb-sweep",
        nargs="?",
        const=True,
        metavar="PATH",
        help="write the equivalent W&B sweep (default <out>/sweep.yaml) and exit",
    )
    parser.add_argument(
        "--program",
        default=f"{shlex.quote(sys.executable)} -m experiments.cli",
        help="the command that runs `transfer` (default: this Python's -m experiments.cli)",
    )
    return parser


@contextmanager
def study_lock(out: Path) -> Iterator[None]:
    """One `transfer ablate` per study folder at a time (released by the OS if this process dies)."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"transfer ablate: another `transfer ablate` is running this study ({out})") from None
        yield


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """`kill <pid>` stops the runs as cleanly as Ctrl-C does."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def print_plan(console: Console, plans: Sequence[ArmPlan], out: Path, derived: Sequence[ArmPlan] = ()) -> None:
    from experiments.ablation.execute import finished_result, last_checkpoint
    from experiments.ablation.weight_space import REPORT

    runs = {spec.digest for plan in plans for spec in plan.runs}
    cells = sum(len(plan.runs) for plan in plans)
    shared = f" ({cells} arm x seed cells: some arms share runs)" if cells > len(runs) else ""
    table = Table(title=f"{len(runs)} runs under {out / 'runs'}{shared}", title_justify="left")
    for column in ("arm", "seed", "folder", "state"):
        table.add_column(column)
    for plan in plans:
        for spec in plan.runs:
            if finished_result(spec.directory):
                state = "finished"
            elif last_checkpoint(spec.directory):
                state = "resumes from last.ckpt"
            else:
                state = "tried before" if list(spec.directory.glob("attempt-*.log")) else "new"
            table.add_row(plan.arm.name, str(spec.seed), spec.digest, state)
    for plan in derived:
        for spec in plan.runs:
            made = (spec.directory / REPORT).is_file()
            state = "made" if made else "made after " + " and ".join(Path(source).name for source in spec.runtime_args)
            table.add_row(plan.arm.name, str(spec.seed), f"weight_space/{spec.directory.name}", state)
    console.print(table)
    first = plans[0].runs[0]
    console.print("each run is, e.g.:", shlex.join(first.command(["transfer"])), soft_wrap=True, highlight=False)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    options = parser.parse_args(argv)
    if options.workers < 1 or options.retries < 0:
        parser.error(f"--workers must be >= 1 and --retries >= 0, got {options.workers} and {options.retries}")
    options.command = shlex.join(["transfer", "ablate", *argv])
    console = Console(highlight=False, soft_wrap=True)  # whole lines in logs and CI
    try:
        study = load_study(options.study)
    except StudyError as error:
        print(f"transfer ablate: error: {error}", file=sys.stderr)
        return 2
    from experiments.ablation.plan import ConfigError, plan_study  # imports Lightning: after the cheap checks

    out = (options.out or Path("runs") / "studies" / study.name).absolute()
    try:
        plans = plan_study(study, out, options.configs, options.sets, options.seeds)
    except ConfigError as error:
        print(f"transfer ablate: error: {error}", file=sys.stderr)
        return 2
    from experiments.ablation.weight_space import weight_space_plans

    derived = weight_space_plans(study, plans, out, options.configs, options.sets)
    seeds = options.seeds or study.seeds
    shared: dict[str, list[str]] = {}
    for plan in plans:
        shared.setdefault(plan.runs[0].digest, []).append(plan.arm.name)
    for arms in (arms for arms in shared.values() if len(arms) > 1 and not study.arm(arms[0]).covered):
        console.print(f"[yellow]note[/]: arms {', '.join(arms)} resolve to the same config; they share their runs")
    if options.export_wandb_sweep:
        from experiments.ablation.sweep import export_sweep

        target = out / "sweep.yaml" if options.export_wandb_sweep is True else Path(options.export_wandb_sweep)
        console.print(f"W&B sweep written to {export_sweep(study, plans, target, seeds)}")
        return 0
    if options.dry_run:
        print_plan(console, plans, out, derived)
        return 0
    with study_lock(out), sigterm_as_interrupt():
        return run_study(study, plans, out, options, console, derived)


def run_study(
    study: Study,
    plans: Sequence[ArmPlan],
    out: Path,
    options: argparse.Namespace,
    console: Console,
    derived: Sequence[ArmPlan] = (),
) -> int:
    """The runs, then the weight-space arms made from them (`derived`), then the tables and plots."""
    from experiments.ablation.execute import Outcome, finished_result
    from experiments.ablation.plots import draw_plots
    from experiments.ablation.progress import Display, duration
    from experiments.ablation.report import aggregate, markdown_table, write_results

    started = time.perf_counter()
    specs = list({spec.digest: spec for plan in plans for spec in plan.runs}.values())  # arms may share runs
    outcomes: dict[str, Outcome] = {}
    display = Display(study.name, len(specs), options.workers, console, study.metrics)
    for spec in specs:
        earlier = finished_result(spec.directory)
        if earlier is not None:
            outcomes[spec.digest] = earlier
            display.finished_earlier(spec, earlier)
    pending = [spec for spec in specs if spec.digest not in outcomes]
    console.print(f"[bold]{study.name}[/]: {len(specs)} runs, {len(outcomes)} finished earlier, {len(pending)} to run")
    try:
        with display:
            outcomes.update(make_executor(options, out).run(pending, display))
    except ValueError as error:  # an executor option (e.g. a --slurm parameter) that cannot work
        print(f"transfer ablate: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: re-run the same command to continue (finished runs are kept)")
        return 130
    if derived:
        from experiments.ablation.weight_space import run_weight_space

        try:
            outcomes.update(run_weight_space(study, derived, console))
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: re-run the same command to continue (finished runs are kept)")
            return 130
    result = aggregate(study, [*plans, *derived], outcomes)
    results_dir = (options.results or out).absolute()
    plots = draw_plots(result, results_dir / "plots", results_dir)
    paths = write_results(result, results_dir, options.command, plots, time.perf_counter() - started)
    for metric in study.metrics:
        console.print(f"\n{markdown_table(result, metric)}", soft_wrap=True)
    if result.unknown_metrics:
        found = sorted({name for outcome in outcomes.values() for name in outcome.metrics})
        console.print(
            f"[yellow]not in any run's results[/]: {', '.join(result.unknown_metrics)} (there: {', '.join(found)})"
        )
    console.print(f"\n{len(specs)} runs in {duration(time.perf_counter() - started)}; results in {paths['md']}")
    wandb = [p for p in plans if p.logger_class == "experiments.tracking.WandbLogger"]
    if wandb:
        from experiments.ablation.wandb_table import log_summary_table

        init_args = wandb[0].resolved["trainer"]["logger"].get("init_args") or {}
        console.print(log_summary_table(result, init_args.get("project", "transfer"), out, init_args.get("entity")))
    if result.failed:
        console.print(f"[red]{len(result.failed)} runs did not finish[/]: see {paths['md']}; re-run to retry them")
        return 1
    return 0


def make_executor(options: argparse.Namespace, out: Path) -> Executor:
    program = shlex.split(options.program)
    if options.executor == "local":
        from experiments.ablation.executors import LocalExecutor

        return LocalExecutor(program, options.workers, options.retries, options.timeout)
    from experiments.ablation.slurm import SubmititExecutor

    parameters = {key: yaml.safe_load(value) for key, value in options.slurm}
    return SubmititExecutor(options.executor, out / "submitit", program, options.retries, options.timeout, parameters)


if __name__ == "__main__":
    sys.exit(main())
