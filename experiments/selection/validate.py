"""Does a transferability score rank candidates as their real transfer does? The validation of `transfer select`.

    python -m experiments.selection.validate experiments/selections/validation_vision.yaml

For each target of the validation file: every candidate's scores on the training split (as `transfer
select`), the held-out score of a linear probe trained on those features (every candidate, cut points too),
and, where the file names a fine-tuning study, the test score of real `transfer fit` fine-tunes (a `transfer
ablate` of that study on the target, over a `candidate` axis whose labels are the candidates' names). Then,
per score, the rank correlation between score and reached accuracy per target (Spearman's rho, and Kendall's
tau weighted towards the top of the ranking, `scipy.stats.weightedtau`), its mean and 95 % t-interval over
targets, and the time the scores took against the fine-tunes they stand in for.

The validation file:

    description: ...
    candidates: zoo_vision.yaml                   # as in a selection file
    finetune_study: finetune_zoo_vision.yaml      # optional
    seeds: [0]                                    # fine-tuning seeds (default the study's)
    targets:
      digits: {config: ../configs/digits/fine_tuning.yaml, data.init_args.train_per_class: 100}
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from rich.console import Console
from scipy import stats
from torch import Tensor

from experiments.ablation.plan import resolve
from experiments.ablation.report import fmt, shown
from experiments.ablation.stats import summarize
from experiments.ablation.study import StudyError, _overrides, cli_value
from experiments.selection.candidates import Candidate, parse_candidates
from experiments.selection.run import Scored, build_datamodule, data_key, encode, is_regression, score, target_data
from experiments.selection.spec import _zoo
from lightning_modules.metrics import TaskMetrics
from lightning_modules.transferability import SCORES, probe_estimator

TRUTHS = ("probe", "finetune")


@dataclass
class Target:
    name: str
    configs: tuple[Path, ...]
    overrides: tuple[tuple[str, Any], ...]
    scored: list[Scored] = field(default_factory=list)
    truth: dict[str, dict[str, float]] = field(default_factory=dict)  # "probe"/"finetune" -> candidate -> score
    score_seconds: float = 0.0  # features + scores of every candidate
    finetune_seconds: float = 0.0  # fit_seconds summed over the fine-tunes


@dataclass
class Validation:
    path: Path
    description: str
    candidates: list[Candidate]
    targets: list[Target]
    study: Path | None
    seeds: list[int] | None


def load_validation(path: Path) -> Validation:
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict) or not isinstance(raw.get("targets"), dict) or "candidates" not in raw:
        raise ValueError(f"{path}: expected a mapping with `candidates` and `targets` (name -> config and keys)")
    targets = []
    for name, value in raw["targets"].items():
        try:
            configs, overrides = _overrides(path, f"targets.{name}", value)
        except StudyError as error:
            raise ValueError(str(error)) from None
        targets.append(Target(str(name), configs, overrides))
    study = (path.parent / raw["finetune_study"]).resolve() if raw.get("finetune_study") else None
    if study is not None and not study.is_file():
        raise ValueError(f"{path}: finetune_study {raw['finetune_study']} not found (looked at {study})")
    candidates = parse_candidates(_zoo(path, raw["candidates"]), f"{path}: candidates")
    return Validation(path, str(raw.get("description") or ""), candidates, targets, study, raw.get("seeds"))


def fit_args(target: Target, extra: Sequence[str] = ()) -> list[str]:
    files = [arg for config in target.configs for arg in ("-c", str(config))]
    return files + list(extra) + [a for k, v in target.overrides for a in (f"--{k}", cli_value(v))]


def tested_split(datamodule: Any) -> str:
    """The split `transfer fit --test_after_fit` scores: the test set, or the validation set where the test
    labels are hidden (GLUE: its dev sets)."""
    return "test" if getattr(datamodule, "test_is_labelled", lambda: True)() else "val"


def probe_truth(features: dict[str, Tensor], labels: dict[str, Tensor], datamodule: Any, regression: bool) -> float:
    """The official score (`TaskMetrics`) on the tested split of a linear probe trained on the whole training split."""
    probe = probe_estimator(regression, rows=len(features["train"]))
    probe.fit(features["train"].numpy(), labels["train"].numpy())
    test = features["test"].numpy()
    outputs = probe.predict(test)[:, None] if regression else probe.predict_log_proba(test)
    metrics = TaskMetrics(list(datamodule.metrics), datamodule.num_classes)
    metrics.update(torch.as_tensor(outputs, dtype=torch.float32), labels["test"])
    return float(metrics.compute()["score"])


def score_target(target: Target, candidates: list[Candidate], cache_dir: Path, console: Console) -> None:
    """Each candidate's scores (timed as `transfer select` would spend them) and its probe's held-out score."""
    datamodules: dict[str, Any] = {}
    for candidate in candidates:
        data = target_data(resolve(fit_args(target, candidate.model_args()))[0])
        if data_key(data) not in datamodules:  # candidates with the same preprocessing share the data
            datamodules[data_key(data)] = build_datamodule(data)
        datamodule = datamodules[data_key(data)]
        regression = is_regression(datamodule)
        train = encode(candidate, datamodule, cache_dir, torch.device("cpu"))
        scored = score(candidate, train, None, regression)
        target.scored.append(scored)
        target.score_seconds += scored.feature_seconds + sum(scored.score_seconds.values())
        split = tested_split(datamodule)
        test = encode(candidate, datamodule, cache_dir, torch.device("cpu"), splits=(split,))
        encoded = {"train": train.features["train"], "test": test.features[split]}
        labels = {"train": train.labels["train"], "test": test.labels[split]}
        truth = probe_truth(encoded, labels, datamodule, regression)
        target.truth.setdefault("probe", {})[candidate.name] = truth
        cached = " (features from the cache)" if scored.cached else ""
        console.print(f"{target.name} {candidate.name}: probe {truth:.4f}, "
                      + ", ".join(f"{k} {v:.4f}" for k, v in scored.scores.items()) + cached)  # fmt: skip


def finetune_target(validation: Validation, target: Target, out: Path, results: Path, console: Console) -> None:
    """The fine-tuning study on this target through `transfer ablate` (resumable: finished runs are reused)."""
    assert validation.study is not None
    configs = [arg for config in target.configs for arg in ("-c", shown(config))]
    sets = [arg for key, value in target.overrides for arg in ("--set", f"{key}={cli_value(value)}")]
    command = [sys.executable, "-m", "experiments.entry", "ablate", shown(validation.study), *configs, *sets]
    command += ["--out", str(out / target.name), "--results", str(results / target.name)]
    command += ["--seeds", *map(str, validation.seeds)] if validation.seeds else []
    console.print(f"{target.name}: fine-tunes: transfer {shlex.join(command[3:])}")
    subprocess.run(command, check=False)
    report = json.loads((results / target.name / "results.json").read_text())
    target.truth["finetune"] = {
        row["arm"]: row["mean"] for row in report["rows"] if row["metric"] == "test/score" and row["n"]
    }
    target.finetune_seconds = sum(run["metrics"].get("fit_seconds", 0.0) for run in report["runs"] if run["metrics"])


@dataclass
class Correlation:
    score: str
    truth: str
    per_target: dict[str, tuple[float, float, int]]  # target -> (Spearman rho, weighted tau, candidates)

    def summary(self, which: int) -> Any:
        return summarize([values[which] for values in self.per_target.values()])


def correlations(targets: Sequence[Target]) -> list[Correlation]:
    """Per score and ground truth: the rank correlations over the candidates both cover, target by target
    (targets with fewer than 3 such candidates are left out)."""
    result = []
    for name in SCORES:
        for truth in TRUTHS:
            per_target = {}
            for target in targets:
                pairs = [
                    (s.scores[name], target.truth[truth][s.candidate.name])
                    for s in target.scored
                    if name in s.scores and s.candidate.name in target.truth.get(truth, {})
                ]
                pairs = [(x, y) for x, y in pairs if math.isfinite(x) and math.isfinite(y)]
                if len(pairs) >= 3:
                    x, y = np.array(pairs).T
                    rho = float(stats.spearmanr(x, y).statistic)
                    tau = float(stats.weightedtau(x, y).statistic)
                    per_target[target.name] = (rho, tau, len(pairs))
            if per_target:
                result.append(Correlation(name, truth, per_target))
    return result


def _interval(summary: Any) -> str:
    if summary.ci_low is None:
        return fmt(summary.mean, 3)
    return f"{fmt(summary.mean, 3)} [{fmt(summary.ci_low, 3)}, {fmt(summary.ci_high, 3)}]"


def write_report(validation: Validation, found: list[Correlation], out: Path, command: str, wall: float) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# Validation of transferability scores: {validation.path.stem}", "", validation.description, ""]
    lines += [f"- command: `{command}`", f"- wall time: {wall / 60:.1f} min", ""]
    lines += ["## Rank correlation of each score with the score reached, over targets", ""]
    lines += [
        "mean over targets [95 % t-interval]; per target: Spearman's rho / weighted Kendall's tau (candidates)",
        "",
    ]
    names = [t.name for t in validation.targets]
    lines += ["| score | reached by | targets | Spearman rho | weighted tau | " + " | ".join(names) + " |"]
    lines += ["|" + "---|" * (5 + len(names))]
    for c in found:
        cells = [f"{c.per_target[n][0]:+.2f} / {c.per_target[n][1]:+.2f} ({c.per_target[n][2]})" if n in c.per_target
                 else "-" for n in names]  # fmt: skip
        lines.append(f"| {c.score} | {c.truth} | {len(c.per_target)} | {_interval(c.summary(0))} | "
                     f"{_interval(c.summary(1))} | " + " | ".join(cells) + " |")  # fmt: skip
    legend = (
        "probe: a linear probe on the candidate's features, trained on the training split, scored with "
        "the task's official score on the split `transfer fit` tests (the test set; GLUE: the dev set, its "
        "test labels are hidden); finetune: `transfer fit` fine-tuning of the whole candidate, that split."
    )
    lines += ["", legend, ""]
    lines += [
        "## Time",
        "",
        "| target | scores (all candidates, features included) | fine-tunes (fit_seconds) | ratio |",
    ]
    lines += ["|---|---|---|---|"]
    for t in validation.targets:
        ratio = f"{t.finetune_seconds / t.score_seconds:.1f}x" if t.finetune_seconds and t.score_seconds else "-"
        lines.append(f"| {t.name} | {t.score_seconds:.0f} s | {t.finetune_seconds:.0f} s | {ratio} |")
    for t in validation.targets:
        scores = [n for n in SCORES if any(n in s.scores for s in t.scored)]
        truths = [truth for truth in TRUTHS if truth in t.truth]
        lines += ["", f"## {t.name}", "", "| candidate | " + " | ".join(scores + truths) + " |"]
        lines += ["|" + "---|" * (1 + len(scores) + len(truths))]
        for s in t.scored:
            values = [fmt(s.scores.get(n)) for n in scores] + [fmt(t.truth[k].get(s.candidate.name)) for k in truths]
            lines.append(f"| {s.candidate.name} | " + " | ".join(values) + " |")
    path = out / "results.md"
    path.write_text("\n".join(lines) + "\n")
    records = {
        "command": command,
        "correlations": [{"score": c.score, "truth": c.truth, "per_target": c.per_target} for c in found],
        "targets": {
            t.name: {
                "scores": {s.candidate.name: s.scores for s in t.scored},
                "seconds": {s.candidate.name: {"features": s.feature_seconds, **s.score_seconds} for s in t.scored},
                "truth": t.truth,
                "score_seconds": t.score_seconds,
                "finetune_seconds": t.finetune_seconds,
            }
            for t in validation.targets
        },
    }
    (out / "results.json").write_text(json.dumps(records, indent=2) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m experiments.selection.validate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("validation", type=Path, help="experiments/selections/validation_*.yaml")
    parser.add_argument("--out", type=Path, help="runs of the fine-tunes (default runs/select_validation/<name>)")
    parser.add_argument("--results", type=Path, help="report folder (default --out)")
    parser.add_argument("--cache-dir", type=Path, help="feature cache (default $TRANSFER_CACHE_DIR/features)")
    parser.add_argument("--targets", nargs="+", help="only these targets")
    parser.add_argument("--no-finetune", action="store_true", help="probe ground truth only")
    options = parser.parse_args(argv)
    from datamodules.cache import cache_root

    try:
        validation = load_validation(options.validation)
    except ValueError as error:
        print(f"validate: error: {error}", file=sys.stderr)
        return 2
    if options.targets:
        validation.targets = [t for t in validation.targets if t.name in options.targets]
    out = options.out or Path("runs") / "select_validation" / validation.path.stem
    results = options.results or out
    console = Console(highlight=False, soft_wrap=True)
    started = time.perf_counter()
    for target in validation.targets:
        score_target(target, validation.candidates, options.cache_dir or cache_root() / "features", console)
        if validation.study is not None and not options.no_finetune:
            finetune_target(validation, target, out, results, console)
    command = shlex.join(["python", "-m", "experiments.selection.validate", *argv])
    path = write_report(validation, correlations(validation.targets), results, command, time.perf_counter() - started)
    console.print(path.read_text(), markup=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
