"""Runs as submitit jobs: a SLURM cluster (`--executor slurm`), or submitit's local executor
(`--executor submitit-local`, subprocesses on this machine; what the tests use).

One job per run, submitted as one array; each job runs the same `execute` as a local run, on the node,
so retries, resuming from last.ckpt and the result marker work the same. A job is `Checkpointable`: when
SLURM preempts it or its time runs out, submitit requeues it and the requeued job resumes from the run's
last.ckpt. Ctrl-C cancels the jobs still queued or running; re-running the command resubmits the runs
that did not finish.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import submitit

from experiments.ablation.execute import Outcome, execute
from experiments.ablation.runs import RunSpec

if TYPE_CHECKING:
    from experiments.ablation.progress import Display

CLUSTERS = {"slurm": "slurm", "submitit-local": "local"}
POLL_S = 2.0


class RunJob(submitit.helpers.Checkpointable):
    """The callable each job runs (pickled by submitit)."""

    def __call__(self, spec: RunSpec, program: Sequence[str], retries: int, timeout: float | None) -> Outcome:
        return execute(spec, program, retries, timeout=timeout)


class SubmititExecutor:
    def __init__(
        self,
        executor: str,
        folder: Path,
        program: Sequence[str],
        retries: int = 1,
        timeout: float | None = None,
        parameters: Mapping[str, Any] | None = None,
    ):
        if executor not in CLUSTERS:
            raise ValueError(f"--executor must be one of {', '.join(CLUSTERS)}, got {executor!r}")
        self.cluster, self.folder = CLUSTERS[executor], folder
        self.program, self.retries, self.timeout = list(program), retries, timeout
        self.parameters = dict(parameters or {})

    def _executor(self) -> submitit.AutoExecutor:
        executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster=self.cluster)
        parameters: dict[str, Any] = {"name": "transfer-ablate", **self.parameters}
        if self.timeout is not None and "timeout_min" not in parameters:
            parameters["timeout_min"] = int(self.timeout // 60) + 5
        try:
            executor.update_parameters(**parameters)
        except (NameError, AssertionError) as error:  # submitit names the parameter it rejects
            raise ValueError(f"--slurm: {error}") from None
        return executor

    def run(self, specs: Sequence[RunSpec], display: Display) -> dict[str, Outcome]:
        if not specs:
            return {}
        executor = self._executor()
        with executor.batch():  # one job array
            jobs = [executor.submit(RunJob(), spec, self.program, self.retries, self.timeout) for spec in specs]
        display.print(f"submitted {len(jobs)} jobs ({self.cluster}); logs under {self.folder}")
        pending = dict(zip(jobs, specs, strict=True))
        outcomes: dict[str, Outcome] = {}
        running: set[str] = set()
        try:
            while pending:
                for job, spec in list(pending.items()):
                    if job.done():
                        outcomes[spec.digest] = self._outcome(job, spec)
                        display.finished(spec, outcomes[spec.digest])
                        del pending[job]
                    elif spec.digest not in running and job.state == "RUNNING":
                        running.add(spec.digest)
                        display.started(spec, 1, None)
                time.sleep(POLL_S if pending else 0)
        except KeyboardInterrupt:
            for job in pending:
                job.cancel(check=False)
            raise
        return outcomes

    @staticmethod
    def _outcome(job: submitit.Job[Outcome], spec: RunSpec) -> Outcome:
        try:
            return job.result()
        except Exception as error:  # the job itself died (node failure, cancelled, out of memory)
            return Outcome(
                "failed", error=f"submitit job {job.job_id}: {str(error).strip()[-500:]}", log=str(job.paths.stdout)
            )
