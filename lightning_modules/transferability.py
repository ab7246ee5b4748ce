"""Transferability scores: predict, without fine-tuning, how well each candidate pretrained model will transfer
to a target task, from its features of the target's training data (and, where it has one, its source
classifier's probabilities). Higher is better for every score; `transfer select` ranks candidates by them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from scipy.stats import pearsonr
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict, cross_val_score
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler, normalize

Array = np.ndarray | torch.Tensor
Splits = list[tuple[np.ndarray, np.ndarray]]

LOGME_TOLERANCE = 1e-3  # relative change of alpha / beta that ends the fixed-point iteration (authors' code)
LOGME_MAX_ITERATIONS = 11  # the authors' cap: "should converge after at most 10 steps"
LOGME_EPSILON = 1e-5  # the authors' guard in the alpha and beta updates
H_SCORE_RCOND = 1e-10  # pseudo-inverse cutoff, relative to the largest eigenvalue of cov(f)
PROBE_RIDGE_ALPHAS = np.logspace(-3, 5, 17)  # regression probe: ridge strengths RidgeCV picks from (by LOO)


def _numpy(x: Array | Any) -> np.ndarray:
    """A numpy view of an array or a tensor (floating tensors as float64, which also covers bfloat16)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return np.asarray(x.double() if x.is_floating_point() else x)
    return np.asarray(x)


def _integers(values: np.ndarray, name: str) -> np.ndarray:
    """`values` as int64 class ids: integer or bool dtype, or floats that are all whole numbers."""
    if values.dtype == bool or np.issubdtype(values.dtype, np.integer):
        return values.astype(np.int64)
    if np.issubdtype(values.dtype, np.floating) and np.isfinite(values).all() and (values == np.round(values)).all():
        return values.astype(np.int64)
    hint = " (for continuous targets pass regression=True)" if name == "labels" else ""
    raise ValueError(f"{name} must be integer class ids, got dtype {values.dtype}{hint}")


def _check(
    inputs: Array,
    labels: Array,
    kind: Literal["features", "source_probs", "source_labels"] = "features",
    regression: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Validated (inputs, labels) as numpy: inputs float64 [N, D] (features, or source probabilities whose rows
    sum to 1) or int64 [N] (source labels); labels float64 [N] for regression (finite, not constant), else int64
    [N] with at least 2 classes. Class ids only name classes: every score is invariant to relabelling them."""
    x, y = _numpy(inputs), _numpy(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D [N], got shape {y.shape}")
    if len(y) < 2:
        raise ValueError(f"need at least 2 samples, got {len(y)}")
    if kind == "source_labels":
        if x.shape != y.shape:
            raise ValueError(f"source_labels must have the shape of labels {y.shape}, got {x.shape}")
        x = _integers(x, "source_labels")
    else:
        if x.ndim != 2 or len(x) != len(y):
            raise ValueError(f"{kind} must be 2-D [N, D] with N = len(labels) = {len(y)}, got shape {x.shape}")
        x = x.astype(np.float64)
        if not np.isfinite(x).all():
            raise ValueError(f"{kind} contain {int((~np.isfinite(x)).sum())} non-finite values (NaN or inf)")
        if kind == "source_probs":
            sums = x.sum(1)
            worst = int(np.abs(sums - 1).argmax())
            if x.min() < 0 or abs(sums[worst] - 1) > 1e-3:
                raise ValueError(
                    f"source_probs rows must be non-negative and sum to 1 (row {worst} sums to {sums[worst]:.4g}, "
                    f"smallest entry {x.min():.4g}): pass softmax probabilities, not logits"
                )
    if regression:
        y = y.astype(np.float64)
        if not np.isfinite(y).all():
            raise ValueError(f"regression targets contain {int((~np.isfinite(y)).sum())} non-finite values")
        if y.std() == 0:
            raise ValueError(f"regression targets are constant ({y[0]}): nothing to predict")
        return x, y
    y = _integers(y, "labels")
    if len(np.unique(y)) < 2:
        raise ValueError(f"labels need at least 2 classes, got only class {y[0]}")
    return x, y


def _codes(labels: np.ndarray) -> np.ndarray:
    """Class ids mapped to 0..C-1 (sorted order): gaps in the ids do not create empty classes."""
    return np.unique(labels, return_inverse=True)[1].reshape(-1)


# ---------------------------------------------------------------------------------------------- LogME


def _log_evidence(u: np.ndarray, sigma: np.ndarray, dim: int, target: np.ndarray) -> float:
    """Maximum log evidence / N of Bayesian linear regression target ~ N(F w, 1/beta), w ~ N(0, I/alpha), for one
    target column, from the thin SVD F = U S V^T (u = U, sigma = S^2).

    The fixed-point iteration of You et al. (Algorithm 1 of the ICML paper, in the SVD form of their fast
    version): with t = alpha/beta and x = U^T y, gamma = sum sigma/(sigma + t), |m|^2 = sum sigma x^2/(sigma + t)^2,
    |F m - y|^2 = sum x^2 t^2/(sigma + t)^2 + |y|^2 - |x|^2; then alpha = gamma/|m|^2, beta = (N - gamma)/|F m - y|^2;
    until t changes by at most LOGME_TOLERANCE (relative), at most LOGME_MAX_ITERATIONS times. The evidence
    D/2 log alpha + N/2 log beta - 1/2 log|alpha I + beta F^T F| - beta/2 |F m - y|^2 - alpha/2 |m|^2 - N/2 log 2 pi
    is evaluated as the authors do (the last alpha, beta with the m of the step before). log|A| counts the D - k
    directions F does not span (eigenvalue alpha), as the authors' ICML code does with its full D x D
    decomposition; their fast version omits them, which inflates its score when D > N.
    """
    n = len(target)
    x2 = (u.T @ target) ** 2
    outside = max(float(target @ target - x2.sum()), 0.0)  # |y|^2 off the column space of F
    alpha, beta = 1.0, 1.0
    for _ in range(LOGME_MAX_ITERATIONS):
        t = alpha / beta
        gamma = (sigma / (sigma + t)).sum()
        m2 = (sigma * x2 / (sigma + t) ** 2).sum()
        residual2 = (x2 * (t / (sigma + t)) ** 2).sum() + outside
        alpha = gamma / (m2 + LOGME_EPSILON)
        beta = (n - gamma) / (residual2 + LOGME_EPSILON)
        if abs(alpha / beta - t) / t <= LOGME_TOLERANCE:
            break
    log_det = np.log(alpha + beta * sigma).sum() + (dim - len(sigma)) * np.log(alpha)
    evidence = (
        dim * np.log(alpha) + n * np.log(beta) - log_det - beta * residual2 - alpha * m2 - n * np.log(2 * np.pi)
    ) / 2
    return float(evidence / n)


def logme(features: Array, labels: Array, regression: bool = False) -> float:
    """LogME (You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning",
    ICML 2021): the maximised log marginal evidence of a Bayesian linear model from the features to each target
    column, divided by N and averaged over the columns (`_log_evidence`; matches the authors' thuml/LogME code).

    Classification: one column per class, its one-hot indicator. Regression: the single target, standardised
    (zero mean, unit variance): the linear model has no intercept, so the mean must go; the scale only shifts
    every candidate's score by the same -log(std), so it does not change rankings. One SVD of the features
    serves every column.
    """
    f, y = _check(features, labels, regression=regression)
    targets = ((y - y.mean()) / y.std())[:, None] if regression else np.eye(int(_codes(y).max()) + 1)[_codes(y)]
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    return float(np.mean([_log_evidence(u, s**2, f.shape[1], column) for column in targets.T]))


# ------------------------------------------------------------------------------- source-classifier scores


def leep(source_probs: Array, labels: Array) -> float:
    """LEEP (Nguyen, Hassner, Seeger, Archambeau, "LEEP: A New Measure to Evaluate Transferability of Learned
    Representations", ICML 2020): with theta_i the source classifier's softmax over source classes z,
    P(y, z) = 1/N sum_i theta_iz [y_i = y], P(y|z) = P(y, z) / P(z), and
    LEEP = 1/N sum_i log sum_z P(y_i|z) theta_iz, the mean log-likelihood of the "expected empirical predictor".
    A source class no sample puts any mass on (P(z) = 0) contributes nothing."""
    p, y = _check(source_probs, labels, kind="source_probs")
    codes = _codes(y)
    joint = np.zeros((int(codes.max()) + 1, p.shape[1]))
    np.add.at(joint, codes, p / len(p))  # P(y, z)
    marginal = joint.sum(0, keepdims=True)  # P(z)
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)  # P(y | z)
    return float(np.log((p * conditional[codes]).sum(1)).mean())


def nce(source_labels: Array, labels: Array) -> float:
    """NCE (Tran, Nguyen, Hassner, "Transferability and Hardness of Supervised Classification Tasks", ICCV 2019):
    the negative conditional entropy -H(Y|Z) = sum_{y,z} P(y, z) log P(y|z), in nats, from the empirical joint
    of the target labels Y and the source classifier's hard predictions Z. At most 0 (Y a function of Z), at
    least -H(Y) (Y independent of Z)."""
    z, y = _check(source_labels, labels, kind="source_labels")
    z, y = _codes(z), _codes(y)
    joint = np.zeros((int(y.max()) + 1, int(z.max()) + 1))
    np.add.at(joint, (y, z), 1 / len(y))  # P(y, z); every column has mass
    conditional = joint / joint.sum(0, keepdims=True)  # P(y | z)
    seen = joint > 0
    return float((joint[seen] * np.log(conditional[seen])).sum()) + 0.0  # + 0.0: no -0.0


def nce_from_probs(source_probs: Array, labels: Array) -> float:
    """`nce` with Z = argmax of the source classifier's softmax probabilities: the `SCORES` signature."""
    p, _ = _check(source_probs, labels, kind="source_probs")
    return nce(p.argmax(1), labels)


# ------------------------------------------------------------------------------------------------- H-score


def h_score(features: Array, labels: Array, shrinkage: bool = False) -> float:
    """H-score (Bao, Li, Huang, Zheng, "An Information-Theoretic Approach to Transferability in Task Transfer
    Learning", ICIP 2019): tr(cov(f)^-1 cov(E[f|y])) with f centred, cov(E[f|y]) the covariance of each sample's
    class-mean feature. The inverse is a pseudo-inverse (eigenvalues below H_SCORE_RCOND x the largest
    dropped), so constant or duplicated feature directions do not blow it up; the score then lies in [0, C - 1]
    and reaches C - 1 once the features span the samples (D >= N - 1), where it stops ranking anything.

    `shrinkage`: the shrinkage H-score of Ibrahim, Ponomareva, Mazumder ("Newer is not always better: Rethinking
    transferability metrics, their peculiarities, stability and performance", ECML-PKDD 2022),
    tr(cov_a(f)^-1 (1 - a) cov(E[f|y])) with cov_a = (1 - a) cov(f) + a (tr cov(f) / D) I the Ledoit-Wolf
    estimate (scikit-learn's `LedoitWolf`, which also picks a): defined and ranking at any D / N, as the
    features of big backbones on small targets need (`SCORES` uses it)."""
    f, y = _check(features, labels)
    codes = _codes(y)
    f = f - f.mean(0)
    sums = np.zeros((int(codes.max()) + 1, f.shape[1]))
    np.add.at(sums, codes, f)
    class_means = (sums / np.bincount(codes)[:, None])[codes]  # E[f | y_i] for each sample
    cov_f, cov_g = f.T @ f / len(f), class_means.T @ class_means / len(f)
    if shrinkage:
        estimate = LedoitWolf(assume_centered=True).fit(f)
        cov_f, cov_g = estimate.covariance_, (1 - estimate.shrinkage_) * cov_g
    return float(np.trace(np.linalg.pinv(cov_f, rcond=H_SCORE_RCOND, hermitian=True) @ cov_g))


def shrinkage_h_score(features: Array, labels: Array) -> float:
    """`h_score` with Ledoit-Wolf shrinkage (Ibrahim et al. 2022): the `SCORES` entry."""
    return h_score(features, labels, shrinkage=True)


# ---------------------------------------------------------------------------------- empirical baselines


def _splits(labels: np.ndarray, folds: int, seed: int, regression: bool) -> Splits:
    """Shuffled `folds`-fold splits: StratifiedKFold for classes, KFold for regression. A class with fewer
    samples than `folds` lowers the number of folds to its count (so every test fold can hold each class);
    a class with a single sample cannot be both trained on and tested, and is an error."""
    if folds < 2:
        raise ValueError(f"cross-validation needs folds >= 2, got {folds}")
    if regression:
        splitter: KFold = KFold(min(folds, len(labels)), shuffle=True, random_state=seed)
    else:
        classes, counts = np.unique(labels, return_counts=True)
        if counts.min() < 2:
            rare = classes[counts.argmin()]
            raise ValueError(f"class {rare} has only 1 sample: cross-validation needs at least 2 per class")
        splitter = StratifiedKFold(min(folds, int(counts.min())), shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros((len(labels), 1)), labels))


def _pearson(predictions: np.ndarray, targets: np.ndarray) -> float:
    """Pearson r of out-of-fold predictions with the targets; 0 where the predictions are constant (undefined)."""
    if np.ptp(predictions) == 0:
        return 0.0
    return float(pearsonr(predictions, targets).statistic)


def knn_accuracy(
    features: Array, labels: Array, k: int = 20, folds: int = 5, seed: int = 0, regression: bool = False
) -> float:
    """Cross-validated k-nearest-neighbour baseline on L2-normalised features with cosine distance (scikit-learn,
    uniform votes; k capped at the smallest training fold). Classification: mean accuracy over the folds.
    Regression: Pearson r of the out-of-fold mean-of-neighbours predictions with the targets. Folds: `_splits`."""
    if k < 1:
        raise ValueError(f"knn needs k >= 1, got {k}")
    f, y = _check(features, labels, regression=regression)
    splits = _splits(y, folds, seed, regression)
    k = min(k, min(len(train) for train, _ in splits))
    f = normalize(f)
    if regression:
        predictions = cross_val_predict(KNeighborsRegressor(n_neighbors=k, metric="cosine"), f, y, cv=splits)
        return _pearson(predictions, y)
    return float(cross_val_score(KNeighborsClassifier(n_neighbors=k, metric="cosine"), f, y, cv=splits).mean())


def linear_probe_accuracy(
    features: Array, labels: Array, folds: int = 5, seed: int = 0, regression: bool = False, l2: float = 1e-3
) -> float:
    """Cross-validated linear-probe baseline on standardised features (scikit-learn; folds: `_splits`).

    Classification: multinomial logistic regression (lbfgs, up to 1000 iterations) minimising mean
    cross-entropy + `l2` * ||W||^2, the objective of `fit_linear_probe`; in scikit-learn's terms
    C = 1 / (2 * l2 * n_train) with n_train the smallest training fold. Returns the mean accuracy over the folds.
    Regression: ridge regression with its strength picked per training fold by leave-one-out (RidgeCV over
    PROBE_RIDGE_ALPHAS; `l2` unused); returns Pearson r of the out-of-fold predictions with the targets.
    """
    if l2 <= 0:
        raise ValueError(f"linear probe needs l2 > 0, got {l2}")
    f, y = _check(features, labels, regression=regression)
    splits = _splits(y, folds, seed, regression)
    if regression:
        return _pearson(cross_val_predict(probe_estimator(True), f, y, cv=splits), y)
    probe = probe_estimator(False, l2, min(len(train) for train, _ in splits))
    return float(cross_val_score(probe, f, y, cv=splits).mean())


def probe_estimator(regression: bool, l2: float = 1e-3, rows: int = 1) -> Any:
    """The scikit-learn linear probe of `linear_probe_accuracy` (unfitted): standardised features, then ridge
    regression (RidgeCV) or logistic regression whose C = 1 / (2 * l2 * rows) matches `fit_linear_probe`'s
    `l2` on `rows` training rows."""
    if regression:
        return make_pipeline(StandardScaler(), RidgeCV(alphas=PROBE_RIDGE_ALPHAS))
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0 / (2 * l2 * rows), max_iter=1000))


# --------------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Score:
    """One transferability score as `transfer select` calls it."""

    function: Callable[..., float]
    needs_source: bool  # called as function(source_probs, labels) instead of function(features, labels)
    regression: bool  # defined for regression targets (then called with regression=True)
    paper: str  # short citation, shown in reports


SCORES: dict[str, Score] = {
    "logme": Score(logme, needs_source=False, regression=True, paper="LogME (You et al., ICML 2021)"),
    "leep": Score(leep, needs_source=True, regression=False, paper="LEEP (Nguyen et al., ICML 2020)"),
    "nce": Score(nce_from_probs, needs_source=True, regression=False, paper="NCE (Tran et al., ICCV 2019)"),
    "h_score": Score(
        shrinkage_h_score,
        needs_source=False,
        regression=False,
        paper="H-score (Bao et al., ICIP 2019) with Ledoit-Wolf shrinkage (Ibrahim et al., ECML-PKDD 2022)",
    ),  # fmt: skip
    "knn": Score(knn_accuracy, needs_source=False, regression=True, paper="k-NN, 5-fold CV (baseline)"),
    "linear_probe": Score(
        linear_probe_accuracy, needs_source=False, regression=True, paper="linear probe, 5-fold CV (baseline)"
    ),
}


def _inapplicable(name: str, source_given: bool, regression: bool) -> str | None:
    """Why score `name` cannot be computed here, or None if it can."""
    score = SCORES[name]
    if regression and not score.regression:
        return "it is defined for classification only, and the target is a regression"
    if score.needs_source and not source_given:
        return "it needs source_probs (the source classifier's softmax probabilities), and none were given"
    return None


def compute_scores(
    features: Array,
    labels: Array,
    source_probs: Array | None = None,
    regression: bool = False,
    names: Iterable[str] | None = None,
) -> dict[str, float]:
    """Every applicable score (those needing a source classifier only when `source_probs` is given; only
    regression-capable ones for regression), in SCORES order; or only `names` (still in SCORES order). An
    unknown name, or a named score that does not apply, is a ValueError saying which and why."""
    source_given = source_probs is not None
    if names is None:
        chosen = [name for name in SCORES if _inapplicable(name, source_given, regression) is None]
    else:
        wanted = list(names)
        unknown = [name for name in wanted if name not in SCORES]
        if unknown:
            raise ValueError(f"unknown transferability scores {unknown}; known: {', '.join(SCORES)}")
        for name in wanted:
            reason = _inapplicable(name, source_given, regression)
            if reason is not None:
                raise ValueError(f"score {name!r} does not apply: {reason}")
        chosen = [name for name in SCORES if name in wanted]
    results = {}
    for name in chosen:
        score = SCORES[name]
        if score.needs_source:
            results[name] = score.function(source_probs, labels)
        elif regression:
            results[name] = score.function(features, labels, regression=True)
        else:
            results[name] = score.function(features, labels)
    return results
