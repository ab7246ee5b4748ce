import math

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from lightning_modules.transferability import (
    SCORES,
    compute_scores,
    h_score,
    knn_accuracy,
    leep,
    linear_probe_accuracy,
    logme,
    nce,
    nce_from_probs,
    probe_estimator,
    shrinkage_h_score,
)


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    """The problems here are tiny: with several BLAS threads on a busy machine, their hand-offs cost ten times
    the work (a 5-fold logistic probe 0.4 s instead of 0.04 s)."""
    with threadpool_limits(1, user_api="blas"):
        yield


def reference_logme(features, targets, tolerance=1e-3):
    """The authors' ICML per-dimension loop (`each_evidence` in thuml/LogME), written with the paper's matrices
    directly, A = alpha I + beta F^T F, m = beta A^-1 F^T y, gamma = D - alpha tr(A^-1), log|A| by slogdet: no
    SVD or eigendecomposition, so it checks the SVD algebra of `logme` independently. Two alignments with the
    fast version the authors ship (and `logme` follows): its stopping tolerance 1e-3 (the ICML loop uses 1e-2),
    and no 1e-5 added to |m|^2 and |Fm - y|^2 in the final evidence (the ICML loop adds it, moving the score
    by ~1e-4 relative). With them the two agree to rounding."""
    n, d = features.shape
    evidences = []
    for y in targets.T:
        alpha = beta = lam = 1.0
        for _ in range(11):
            a_inv = np.linalg.inv(alpha * np.eye(d) + beta * features.T @ features)
            gamma = d - alpha * np.trace(a_inv)
            m = beta * a_inv @ features.T @ y
            alpha_de, beta_de = m @ m, ((y - features @ m) ** 2).sum()
            alpha, beta = gamma / (alpha_de + 1e-5), (n - gamma) / (beta_de + 1e-5)
            new_lam = alpha / beta
            if abs(new_lam - lam) / lam < tolerance:
                break
            lam = new_lam
        log_det = np.linalg.slogdet(alpha * np.eye(d) + beta * features.T @ features)[1]
        evidence = (
            d / 2 * np.log(alpha)
            + n / 2 * np.log(beta)
            - log_det / 2
            - beta / 2 * beta_de
            - alpha / 2 * alpha_de
            - n / 2 * np.log(2 * np.pi)
        )
        evidences.append(evidence / n)
    return float(np.mean(evidences))


def clusters(per_class=30, classes=4, dim=8, spread=0.3, seed=0):
    """Well separated Gaussian clusters (centres 3 apart on the axes) and their labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    centres = 3 * np.eye(classes, dim)
    return centres[labels] + spread * rng.normal(size=(len(labels), dim)), labels


def softmax(logits):
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("n, d", [(200, 10), (30, 50)])  # N > D, and D > N (null directions of F^T F)
def test_logme_matches_the_authors_per_dimension_loop(n, d):
    rng = np.random.default_rng(n)
    labels = rng.integers(0, 3, n)
    features = rng.normal(size=(n, d))
    features[:, 0] += labels  # some signal, so alpha and beta move
    assert logme(features, labels) == pytest.approx(reference_logme(features, np.eye(3)[labels]), rel=1e-6)


def test_logme_regression_matches_the_reference_on_the_standardised_target():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(150, 12))
    target = features[:, :3] @ [1.0, -2.0, 0.5] + 0.5 * rng.normal(size=150) + 3.0
    standardised = ((target - target.mean()) / target.std())[:, None]
    assert logme(features, target, regression=True) == pytest.approx(reference_logme(features, standardised), rel=1e-6)


def test_leep_against_hand_computed_value():
    # theta (source softmax) rows .9/.1, .8/.2, .4/.6, .3/.7; target labels 0 0 0 1.
    # P(y, z) = sum of theta over the samples of class y, / 4:
    #   y=0: z0 (.9+.8+.4)/4 = .525, z1 (.1+.2+.6)/4 = .225;  y=1: z0 .3/4 = .075, z1 .7/4 = .175
    # P(z0) = .6, P(z1) = .4, so P(0|z0) = .875, P(1|z0) = .125, P(0|z1) = .5625, P(1|z1) = .4375
    # EEP of each sample's own label: .9*.875+.1*.5625 = .84375, .8*.875+.2*.5625 = .8125,
    #   .4*.875+.6*.5625 = .6875, .3*.125+.7*.4375 = .34375
    theta = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])
    labels = np.array([0, 0, 0, 1])
    expected = np.mean(np.log([0.84375, 0.8125, 0.6875, 0.34375]))
    assert leep(theta, labels) == pytest.approx(expected, rel=1e-12)
    # a source class no sample puts mass on changes nothing
    assert leep(np.hstack([theta, np.zeros((4, 1))]), labels) == pytest.approx(expected, rel=1e-12)


def test_label_ids_only_name_classes():
    rng = np.random.default_rng(2)
    features, labels = clusters(per_class=10, classes=3, spread=2.0)
    probs = softmax(rng.normal(size=(len(labels), 5)) + 2 * np.eye(3, 5)[labels])
    relabelled = np.array([7, 2, 4])[labels]  # a permutation, with gaps
    for score in (logme, h_score):
        assert score(features, relabelled) == pytest.approx(score(features, labels), rel=1e-12)
    for score in (leep, nce_from_probs):
        assert score(probs, relabelled) == pytest.approx(score(probs, labels), rel=1e-12)


def test_nce_against_hand_computed_values():
    # Y a function of Z: H(Y|Z) = 0, the maximum
    assert nce(np.array([0, 0, 1, 1, 2]), np.array([1, 1, 0, 0, 1])) == 0.0
    # Y independent of Z (each z sees both labels equally): -H(Y|Z) = -H(Y) = -log 2
    assert nce(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])) == pytest.approx(-math.log(2))
    # z = 0 0 0 1, y = 0 0 1 1: z0 (P = 3/4) has y split 2/3, 1/3; z1 always y = 1
    h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert nce(np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1])) == pytest.approx(-3 / 4 * h)
    # the SCORES entry takes probabilities and uses their argmax
    probs = np.array([[0.7, 0.3], [0.6, 0.4], [0.9, 0.1], [0.2, 0.8]])
    assert nce_from_probs(probs, np.array([0, 0, 1, 1])) == pytest.approx(-3 / 4 * h)


def test_h_score_against_hand_computed_values():
    labels = np.array([0, 0, 1, 1])
    # f = 0 2 4 6, centred -3 -1 1 3: var 20/4 = 5; class means -2 -2 2 2: var 4. H = 4/5
    f = np.array([[0.0], [2.0], [4.0], [6.0]])
    assert h_score(f, labels) == pytest.approx(0.8)
    # plus an uncorrelated dimension whose class means are 0: cov(f) = diag(5, 1), cov(E[f|y]) = diag(4, 0)
    assert h_score(np.hstack([f, [[1.0], [-1.0], [-1.0], [1.0]]]), labels) == pytest.approx(0.8)
    # a duplicated column makes cov(f) singular; the pseudo-inverse keeps H = 0.8
    assert h_score(np.hstack([f, f]), labels) == pytest.approx(0.8)
    # with D >= N - 1 it saturates at C - 1 (documented)
    rng = np.random.default_rng(3)
    assert h_score(rng.normal(size=(12, 12)), np.arange(12) % 3) == pytest.approx(2.0)


def test_shrinkage_h_score_is_the_formula_with_the_ledoit_wolf_estimate():
    # Ibrahim et al. 2022: tr(((1 - a) S + a mu I)^-1 (1 - a) cov(E[f|y])), mu = tr(S) / D, a from Ledoit-Wolf
    from sklearn.covariance import ledoit_wolf_shrinkage

    rng = np.random.default_rng(6)
    labels = np.arange(40) % 4
    f = rng.normal(size=(40, 8)) + labels[:, None] * 0.5
    f = f - f.mean(0)
    a = ledoit_wolf_shrinkage(f, assume_centered=True)
    s = f.T @ f / len(f)
    means = np.stack([f[labels == c].mean(0) for c in range(4)])[labels]
    expected = np.trace(np.linalg.inv((1 - a) * s + a * np.trace(s) / 8 * np.eye(8)) @ ((1 - a) * means.T @ means / 40))
    assert 0 < a < 1
    assert shrinkage_h_score(f, labels) == pytest.approx(expected, rel=1e-9)


def test_shrinkage_h_score_still_ranks_where_the_plain_one_saturates():
    # D > N: the plain H-score gives C - 1 to any features, the shrinkage one tells signal from noise
    rng = np.random.default_rng(7)
    labels = np.arange(30) % 3
    signal = rng.normal(size=(30, 60)) + 2.0 * np.eye(3)[labels] @ rng.normal(size=(3, 60))
    noise = rng.normal(size=(30, 60))
    assert h_score(signal, labels) == pytest.approx(h_score(noise, labels)) == pytest.approx(2.0)
    assert shrinkage_h_score(signal, labels) > 2 * shrinkage_h_score(noise, labels)


def test_probe_estimator_matches_the_cross_validated_probe_objective():
    # C = 1 / (2 l2 rows): the same regularisation as fit_linear_probe's mean cross-entropy + l2 ||W||^2
    assert pytest.approx(1.0) == probe_estimator(False, l2=1e-3, rows=500)[-1].C
    assert type(probe_estimator(True)[-1]).__name__ == "RidgeCV"


@pytest.mark.parametrize("score", [logme, h_score, shrinkage_h_score, knn_accuracy, linear_probe_accuracy])
def test_separable_features_score_higher_than_random_ones(score):
    features, labels = clusters(spread=1.0)
    random = np.random.default_rng(4).normal(size=features.shape)
    assert score(features, labels) > score(random, labels)


@pytest.mark.parametrize("score", [logme, knn_accuracy, linear_probe_accuracy])
def test_informative_features_score_higher_than_random_ones_for_regression(score):
    rng = np.random.default_rng(5)
    features = rng.normal(size=(100, 6))
    target = features @ [1.0, -1.0, 0.5, 0.0, 0.0, 2.0] + 0.3 * rng.normal(size=100)
    random = rng.normal(size=features.shape)
    assert score(features, target, regression=True) > score(random, target, regression=True)


@pytest.mark.parametrize("score", [knn_accuracy, linear_probe_accuracy])
def test_empirical_baselines_near_one_on_clusters_and_near_chance_on_shuffled_labels(score):
    features, labels = clusters()
    assert score(features, labels) >= 0.98
    shuffled = np.random.default_rng(6).permutation(labels)
    assert abs(score(features, shuffled) - 0.25) < 0.15  # 4 classes


def test_folds_shrink_to_the_smallest_class_and_a_single_sample_class_is_an_error():
    features, labels = clusters(per_class=10, classes=3, spread=2.0)
    rare = np.concatenate([labels[:23], [7, 7, 7]])  # class 2 has 3 samples, class 7 three more
    features = features[: len(rare)]
    assert knn_accuracy(features, rare, folds=5) == knn_accuracy(features, rare, folds=3)
    assert linear_probe_accuracy(features, rare, folds=5) == linear_probe_accuracy(features, rare, folds=3)
    # k is capped by the smallest training fold (26 samples, 3 folds: 17)
    assert knn_accuracy(features, rare, k=1000, folds=3) == knn_accuracy(features, rare, k=17, folds=3)
    with pytest.raises(ValueError, match="class 9 has only 1 sample"):
        knn_accuracy(features, np.concatenate([rare[:-1], [9]]))


def test_tensors_give_the_same_scores_as_arrays():
    features, labels = clusters(per_class=10, classes=3, spread=2.0)
    probs = softmax(np.eye(3, 4)[labels] * 2.0)
    tensors = torch.tensor(features, dtype=torch.float32), torch.tensor(labels)
    assert logme(*tensors) == pytest.approx(logme(features.astype(np.float32), labels), rel=1e-12)
    assert leep(torch.tensor(probs), torch.tensor(labels)) == pytest.approx(leep(probs, labels), rel=1e-12)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda f, y, p: leep(np.log(p), y), "pass softmax probabilities, not logits"),
        (lambda f, y, p: nce_from_probs(p * 2, y), "pass softmax probabilities, not logits"),
        (lambda f, y, p: logme(f, y + 0.5), "pass regression=True"),
        (lambda f, y, p: logme(f, np.zeros_like(y)), "at least 2 classes"),
        (lambda f, y, p: h_score(f[:-1], y), r"2-D \[N, D\] with N = len\(labels\) = 12"),
        (lambda f, y, p: logme(np.where(f > 1, np.nan, f), y), "non-finite"),
        (lambda f, y, p: knn_accuracy(f, y, folds=1), "folds >= 2"),
        (lambda f, y, p: logme(f, np.ones(len(y)), regression=True), "constant"),
    ],
)
def test_bad_inputs_are_value_errors_that_say_what_is_wrong(call, message):
    rng = np.random.default_rng(7)
    features, labels = rng.normal(size=(12, 3)), np.arange(12) % 2
    with pytest.raises(ValueError, match=message):
        call(features, labels, softmax(rng.normal(size=(12, 4))))


def test_compute_scores_picks_the_applicable_scores_in_table_order():
    features, labels = clusters(per_class=10, classes=3, spread=2.0)
    probs = softmax(np.eye(3, 4)[labels] * 2.0)
    assert list(compute_scores(features, labels)) == ["logme", "h_score", "knn", "linear_probe"]
    both = compute_scores(features, labels, source_probs=probs)
    assert list(both) == list(SCORES)
    assert both["leep"] == leep(probs, labels) and both["nce"] == nce(probs.argmax(1), labels)
    assert both["logme"] == logme(features, labels)
    target = features @ np.arange(8.0)
    regression = compute_scores(features, target, source_probs=probs, regression=True)
    assert list(regression) == ["logme", "knn", "linear_probe"]
    assert regression["knn"] == knn_accuracy(features, target, regression=True)
    assert list(compute_scores(features, labels, names=["knn", "logme", "knn"])) == ["logme", "knn"]
    assert all(score.paper for score in SCORES.values())


def test_compute_scores_errors_name_the_problem():
    features, labels = clusters(per_class=10, classes=3, spread=2.0)
    with pytest.raises(ValueError, match="unknown transferability scores \\['logme2'\\]; known: logme, leep"):
        compute_scores(features, labels, names=["logme2"])
    with pytest.raises(ValueError, match="'leep' does not apply: it needs source_probs"):
        compute_scores(features, labels, names=["leep"])
    with pytest.raises(ValueError, match="'h_score' does not apply: it is defined for classification only"):
        compute_scores(features, features[:, 0], regression=True, names=["h_score"])
    with pytest.raises(ValueError, match="pass softmax probabilities, not logits"):
        compute_scores(features, labels, source_probs=np.eye(3, 4)[labels] * 5.0)
