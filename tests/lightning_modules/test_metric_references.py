"""The GLUE metrics, the study statistics and the linear probe checked against independent implementations,
scikit-learn and SciPy: random data fed in several batches (STS-B-like scores with many ties for Spearman)."""

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from torch import nn

from experiments.ablation.stats import paired_test, sign_flip_p, summarize
from lightning_modules.linear_probe import fit_linear_probe
from lightning_modules.metrics import TaskMetrics


def fed(names, outputs, labels, batch=37):
    metrics = TaskMetrics(names, num_classes=outputs.shape[-1] if outputs.ndim > 1 else 1, batches_per_update=3)
    for start in range(0, len(labels), batch):
        metrics.update(outputs[start : start + batch], labels[start : start + batch])
    return {name: float(value) for name, value in metrics.compute().items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_equal_scikit_learn(seed):
    generator = torch.Generator().manual_seed(seed)
    logits, labels = torch.randn(500, 3, generator=generator), torch.randint(0, 3, (500,), generator=generator)
    values = fed(["acc", "mcc"], logits, labels)
    predicted = logits.argmax(-1).numpy()
    assert values["acc"] == pytest.approx(accuracy_score(labels.numpy(), predicted), abs=1e-6)
    assert values["mcc"] == pytest.approx(matthews_corrcoef(labels.numpy(), predicted), abs=1e-5)
    binary, truth = torch.randn(500, 2, generator=generator), torch.randint(0, 2, (500,), generator=generator)
    values = fed(["acc", "f1"], binary, truth)  # MRPC and QQP: F1 of the positive class
    assert values["f1"] == pytest.approx(f1_score(truth.numpy(), binary.argmax(-1).numpy()), abs=1e-6)
    assert values["score"] == pytest.approx((values["acc"] + values["f1"]) / 2, abs=1e-7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_correlations_equal_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    gold = np.round(rng.uniform(0, 5, 400) * 5) / 5  # STS-B's 0.2 steps: many ties
    predicted = np.round(gold + rng.normal(0, 1.0, 400), 1)  # ties among predictions too
    values = fed(["pearson", "spearman"], torch.tensor(predicted)[:, None], torch.tensor(gold))
    assert len(np.unique(gold)) < 30 and len(np.unique(predicted)) < 150
    assert values["pearson"] == pytest.approx(stats.pearsonr(predicted, gold).statistic, abs=1e-5)
    assert values["spearman"] == pytest.approx(stats.spearmanr(predicted, gold).statistic, abs=1e-5)


def test_the_t_interval_equals_scipys():
    values = [0.812, 0.795, 0.833, 0.801, 0.826]
    summary = summarize(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert (summary.ci_low, summary.ci_high) == pytest.approx((low, high), abs=1e-12)
    assert summary.std == pytest.approx(np.std(values, ddof=1), abs=1e-12)


@pytest.mark.parametrize(
    "diffs", [[0.01, 0.02, -0.005, 0.03], [0.4, -0.1, 0.2, 0.05, 0.3, -0.02, 0.15], [-0.01, -0.02, -0.03]]
)
def test_the_sign_flip_test_equals_scipys_exact_permutation_test(diffs):
    arm, baseline = np.array(diffs) + 0.5, np.full(len(diffs), 0.5)
    exact = stats.permutation_test(
        (arm, baseline), lambda x, y: np.mean(x - y), permutation_type="samples", n_resamples=np.inf
    )
    assert sign_flip_p(diffs) == pytest.approx(exact.pvalue, abs=1e-9)
    test = paired_test(dict(enumerate(arm)), dict(enumerate(baseline)))
    assert test is not None and test.p_sign_flip == pytest.approx(exact.pvalue, abs=1e-9)
    assert test.p_ttest == pytest.approx(stats.ttest_1samp(arm - baseline, 0.0).pvalue, abs=1e-9)


@pytest.mark.parametrize("l2", [1e-3, 1e-2])
def test_the_linear_probe_equals_scikit_learns_logistic_regression(l2):
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=generator)
    labels = torch.randint(0, 3, (300,), generator=generator)
    features = (centres[labels] + torch.randn(300, 8, generator=generator)).double()
    head = nn.Linear(8, 3).double()
    fit_linear_probe(head, features, labels, l2=l2, max_iter=500)
    # Ours: mean cross-entropy + l2 * ||W||^2; scikit-learn: C * summed cross-entropy + ||W||^2 / 2.
    reference = LogisticRegression(C=1 / (2 * l2 * len(labels)), tol=1e-12, max_iter=10_000)
    reference.fit(features.numpy(), labels.numpy())
    with torch.no_grad():
        ours = head(features).softmax(-1).numpy()
    np.testing.assert_allclose(ours, reference.predict_proba(features.numpy()), atol=1e-4)
