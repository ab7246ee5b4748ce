"""Statistics over seeds: mean, sample std, 95 % Student-t interval, paired tests against a baseline."""

from __future__ import annotations

import itertools
import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as scipy_stats

EXACT_SIGN_FLIPS_UP_TO = 16  # 2^16 sign patterns; beyond that a seeded Monte-Carlo sample of them
MONTE_CARLO_FLIPS = 65536


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float | None  # sample std (n - 1); None for a single value
    ci_low: float | None  # 95 % Student-t interval of the mean
    ci_high: float | None


@dataclass(frozen=True)
class PairedTest:
    n: int  # seeds both arms finished
    diff: float  # mean of arm - baseline over those seeds
    p_ttest: float | None  # two-sided paired t-test
    p_sign_flip: float | None  # two-sided exact sign-flip permutation test (no normality assumed)


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    n = len(values)
    if n == 0:
        return Summary(0, math.nan, None, None, None)
    mean = statistics.fmean(values)
    if n == 1:
        return Summary(1, mean, None, None, None)
    std = statistics.stdev(values)
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def sign_flip_p(diffs: Sequence[float]) -> float:
    """P(|mean of randomly signed diffs| >= |observed mean|): each seed's difference is as likely to
    have had either sign under the null hypothesis of no effect."""
    observed = abs(statistics.fmean(diffs)) - 1e-12  # ties count as extreme
    if len(diffs) <= EXACT_SIGN_FLIPS_UP_TO:
        flips = list(itertools.product((1, -1), repeat=len(diffs)))
    else:
        rng = random.Random(0)
        flips = [tuple(rng.choice((1, -1)) for _ in diffs) for _ in range(MONTE_CARLO_FLIPS)]
    extreme = sum(
        abs(statistics.fmean(s * d for s, d in zip(signs, diffs, strict=True))) >= observed for signs in flips
    )
    return extreme / len(flips)


def paired_test(arm: dict[int, float], baseline: dict[int, float]) -> PairedTest | None:
    """Arm vs baseline over the seeds both have; None when they share none."""
    seeds = sorted(set(arm) & set(baseline))
    if not seeds:
        return None
    diffs = [arm[s] - baseline[s] for s in seeds]
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return PairedTest(len(diffs), mean, None, None)
    if all(d == diffs[0] for d in diffs):  # no spread: the t statistic is 0/0 or infinite
        p_t = 1.0 if diffs[0] == 0 else 0.0
    else:
        p_t = float(scipy_stats.ttest_rel([arm[s] for s in seeds], [baseline[s] for s in seeds]).pvalue)
    return PairedTest(len(diffs), mean, p_t, sign_flip_p(diffs))
