import math
from functools import partial

import pytest
import torch
from support import GLUE_FIXTURES, TINY_GLUE, quiet_trainer

from datamodules import GLUEDataModule, MultiTaskDataModule, RelabeledDataModule, SyntheticDataModule
from experiments.cli import CONFIGS, cli_main
from lightning_modules import MultiTask, backbone_preprocessing
from lightning_modules.weighting import (
    DWA,
    Equal,
    GradientWeighting,
    GradNorm,
    PCGrad,
    Uncertainty,
    dwa_weights,
    gradnorm_weight_gradient,
    pcgrad_project,
    uncertainty_loss,
)

WEIGHTINGS = [Equal, Uncertainty, DWA, GradNorm, PCGrad]
# Outside the CLI the weighting object reaches save_hyperparameters; MultiTask stores its class path instead.
pytestmark = pytest.mark.filterwarnings("ignore:Attribute 'weighting' is an instance of `nn.Module`")

# --------------------------------------------------------------------------- the math, by hand


def test_uncertainty_loss_formula():
    loss, s = torch.tensor(2.0), torch.tensor(math.log(4.0))  # sigma^2 = 4
    assert uncertainty_loss(loss, s, regression=False).item() == pytest.approx(2.0 / 4 + 0.5 * math.log(4.0))
    assert uncertainty_loss(loss, s, regression=True).item() == pytest.approx(2.0 / 8 + 0.5 * math.log(4.0))
    assert uncertainty_loss(loss, torch.tensor(0.0), regression=False).item() == pytest.approx(2.0)  # weight 1


def test_uncertainty_learns_one_log_variance_per_task():
    weighting = Uncertainty()
    weighting.setup({"cls": False, "reg": True})
    with torch.no_grad():
        weighting.log_variances.copy_(torch.tensor([0.0, math.log(2.0)]))
    total, weights = weighting({"cls": torch.tensor(1.0), "reg": torch.tensor(3.0)})
    assert total.item() == pytest.approx(1.0 + (0.5 * 3.0 / 2 + 0.5 * math.log(2.0)))
    assert weights["cls"].item() == pytest.approx(1.0) and weights["reg"].item() == pytest.approx(0.25)
    total.backward()
    # d/ds (exp(-s) L + s/2) = -exp(-s) L + 1/2: -0.5 for the classification task at s = 0, L = 1
    assert weighting.log_variances.grad[0].item() == pytest.approx(-0.5)


def test_dwa_weights_from_loss_ratios():
    weights = dwa_weights(torch.tensor([0.5, 2.0]), torch.tensor([1.0, 2.0]), temperature=2.0)  # ratios .5, 1
    expected = 2 * torch.tensor([math.exp(0.25), math.exp(0.5)]) / (math.exp(0.25) + math.exp(0.5))
    assert torch.allclose(weights, expected) and weights.sum().item() == pytest.approx(2.0)
    assert weights[1] > weights[0]  # the task whose loss fell less gets more weight


def test_dwa_weights_one_for_two_epochs_then_follow_epoch_means():
    weighting = DWA(temperature=2.0)
    weighting.setup({"a": False, "b": False})
    for epoch_losses in ([1.0, 2.0], [0.5, 2.0]):
        _, weights = weighting({"a": torch.tensor(epoch_losses[0]), "b": torch.tensor(epoch_losses[1])})
        assert weights["a"].item() == weights["b"].item() == 1.0
        weighting.end_epoch()
    total, weights = weighting({"a": torch.tensor(1.0), "b": torch.tensor(1.0)})
    expected = dwa_weights(torch.tensor([0.5, 2.0]), torch.tensor([1.0, 2.0]), 2.0)
    assert torch.allclose(torch.stack([weights["a"], weights["b"]]), expected)
    assert total.item() == pytest.approx(expected.sum().item())


def test_gradnorm_moves_weights_toward_balanced_gradient_norms():
    weights = torch.ones(2)
    # equal training rates: task 1's gradient (norm 3) is above the mean (2), task 0's (1) below
    grad = gradnorm_weight_gradient(weights, torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0]), alpha=1.5)
    assert grad.tolist() == [-1.0, 3.0]  # descent raises w_0, lowers w_1
    # equal norms, task 0 trains more slowly (higher loss ratio): its target is higher, its weight grows
    grad = gradnorm_weight_gradient(weights, torch.tensor([2.0, 2.0]), torch.tensor([0.9, 0.5]), alpha=1.5)
    assert grad[0] < 0 < grad[1]


def test_gradnorm_step_renormalises_weights_to_the_number_of_tasks():
    weighting = GradNorm(alpha=1.5)
    weighting.setup({"a": False, "b": False})
    losses = torch.tensor([1.0, 1.0])
    assert weighting.combine(torch.tensor([[1.0, 0.0], [0.0, 3.0]]), losses, step=0) is None  # keeps sum w L
    assert weighting.task_weights.grad.tolist() == [-1.0, 3.0] and weighting.initial_losses.tolist() == [1.0, 1.0]
    with torch.no_grad():
        weighting.task_weights -= 0.1 * weighting.task_weights.grad
    weighting.after_step()
    assert weighting.task_weights.sum().item() == pytest.approx(2.0) and weighting.task_weights[0] > 1


def test_pcgrad_projects_conflicting_gradients_onto_the_normal_plane():
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])  # g0 . g1 = -1: conflict
    projected = pcgrad_project(grads, [[1], [0]])
    assert projected[0] @ grads[1] == pytest.approx(0.0) and projected[1] @ grads[0] == pytest.approx(0.0)
    assert torch.allclose(projected, torch.tensor([[0.5, 0.5], [0.0, 1.0]]))
    weighting = PCGrad()
    weighting.setup({"a": False, "b": False})
    assert torch.allclose(weighting.combine(grads, torch.ones(2), step=3), torch.tensor([0.5, 1.5]))


def test_pcgrad_leaves_agreeing_gradients_unchanged():
    grads = torch.tensor([[1.0, 0.0, 2.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])  # all dot products >= 0
    assert torch.equal(pcgrad_project(grads, [[1, 2], [0, 2], [0, 1]]), grads)
    weighting = PCGrad()
    weighting.setup({"a": False, "b": False, "c": False})
    assert torch.equal(weighting.combine(grads, torch.ones(3), step=0), grads.sum(0))


# --------------------------------------------------------------------------- the strategy


def vision_tasks(sampling: str = "all") -> MultiTaskDataModule:
    """Ten-ish synthetic classes and a coarse relabelling of another draw: two classification tasks."""
    fine = partial(SyntheticDataModule, num_classes=4, num_samples=48, batch_size=8)
    coarse = partial(
        RelabeledDataModule,
        source=partial(SyntheticDataModule, num_classes=4, num_samples=32, batch_size=8, seed=1),
        groups={"low": ["class_0", "class_1"], "high": ["class_2", "class_3"]},
    )
    return MultiTaskDataModule({"fine": fine, "coarse": coarse}, sampling=sampling)  # type: ignore[arg-type]


def multi_task(data: MultiTaskDataModule, weighting=None, **kwargs) -> MultiTask:
    return MultiTask(tasks=data.task_specs, weighting=weighting, backbone="tiny_cnn", pretrained=False, **kwargs)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("weighting", WEIGHTINGS, ids=lambda w: w.__name__)
def test_every_weighting_fits_in_32_bit_and_bf16(weighting, precision):
    torch.manual_seed(0)
    data = vision_tasks("all" if weighting.uses_gradients else "proportional")
    model = multi_task(data, weighting())
    start = {k: v.clone() for k, v in model.named_parameters()}
    epochs = 3 if weighting is DWA else 2  # DWA's weights move from the third epoch on
    trainer = quiet_trainer(max_epochs=epochs, precision=precision)
    trainer.fit(model, datamodule=data)
    assert model.automatic_optimization is not weighting.uses_gradients
    steps_per_epoch = 5 if weighting.uses_gradients else 5 + 3  # all: max(36/8, 24/8) ; proportional: sum
    assert trainer.global_step == epochs * steps_per_epoch
    for name, value in model.named_parameters():
        assert value.dtype == torch.float32 and torch.isfinite(value).all(), name
        assert not torch.equal(value, start[name]), f"{name} never trained"
    metrics = trainer.callback_metrics
    expected = {"val/fine/acc", "val/fine/score", "val/coarse/acc", "val/coarse/score", "val/score", "val/loss"}
    assert expected <= set(metrics) and {"train/fine/loss", "train/coarse/loss", "train/loss"} <= set(metrics)
    assert metrics["val/score"].item() == pytest.approx(
        (metrics["val/fine/score"] + metrics["val/coarse/score"]).item() / 2
    )
    if weighting in (Uncertainty, DWA, GradNorm):
        assert {"train/fine/weight", "train/coarse/weight"} <= set(metrics)
    if weighting is GradNorm:
        assert model.weighting.task_weights.sum().item() == pytest.approx(2.0)
    if weighting is DWA:
        assert not torch.equal(model.weighting.weights, torch.ones(2))


class SumOfGradients(GradientWeighting):
    """A gradient weighting that changes nothing: the manual path must then match Equal's automatic one."""

    def forward(self, losses):
        return torch.stack(list(losses.values())).sum(), {}

    def combine(self, task_grads, losses, step):
        return task_grads.sum(0)


def test_manual_gradient_path_matches_automatic_optimization():
    trained = []
    for weighting in (Equal(), SumOfGradients()):
        torch.manual_seed(0)
        data = vision_tasks()
        model = MultiTask(
            tasks=data.task_specs,
            weighting=weighting,
            backbone="tiny_mlp",
            pretrained=False,
            optimizer=lambda params: torch.optim.SGD(params, lr=0.5),
        )
        quiet_trainer(max_steps=3, limit_val_batches=0).fit(model, datamodule=data)
        trained.append(dict(model.named_parameters()))
    automatic, manual = trained
    assert automatic.keys() == manual.keys()
    for name in automatic:
        assert torch.allclose(automatic[name], manual[name], atol=1e-6), name


def test_learned_weights_are_their_own_param_group_without_weight_decay():
    data = vision_tasks()
    model = multi_task(data, Uncertainty(lr=0.05))
    groups = {g["name"]: g for g in model.param_groups()}
    assert groups.keys() == {"backbone", "heads", "weighting"}
    assert groups["weighting"]["params"] == [model.weighting.log_variances] and groups["weighting"]["lr"] == 0.05
    assert groups["weighting"]["weight_decay"] == 0.0
    assert sorted(model.heads) == ["coarse", "fine"] and not hasattr(model, "head")


def test_text_tasks_log_per_task_and_per_set_metrics(tmp_path):
    """GLUE fixtures: MNLI's two dev sets, STS-B's regression head, through a tiny encoder."""
    data = MultiTaskDataModule(
        {
            "mnli": partial(GLUEDataModule, task="mnli", batch_size=4, cache_dir=str(tmp_path)),
            "stsb": partial(GLUEDataModule, task="stsb", batch_size=4, cache_dir=str(tmp_path)),
        },
        sampling="uniform",
        root=str(GLUE_FIXTURES),
        preprocessing=backbone_preprocessing("tiny_bert"),
    )
    model = MultiTask(tasks=data.task_specs, backbone="tiny_bert", pretrained=False)
    assert model.heads["stsb"].out_features == 1 and model.heads["mnli"].out_features == 3
    trainer = quiet_trainer(max_epochs=1, enable_checkpointing=True, default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=data)
    names = set(trainer.callback_metrics)
    assert {"val/mnli/acc_m", "val/mnli/acc_mm", "val/mnli/score_m", "val/mnli/score", "val/mnli/loss_m"} <= names
    assert {"val/stsb/pearson", "val/stsb/spearman", "val/stsb/score", "val/stsb/loss", "val/score"} <= names
    checkpoint = torch.load(next(tmp_path.rglob("*.ckpt")), weights_only=True)  # plain data only
    assert checkpoint["hyper_parameters"]["tasks"]["stsb"]["num_classes"] == 1
    assert checkpoint["hyper_parameters"]["weighting"] is None


def test_gradient_weightings_need_every_task_at_every_step():
    data = vision_tasks("proportional")
    with pytest.raises(ValueError, match="data.sampling=all"):
        quiet_trainer(max_epochs=1).fit(multi_task(data, PCGrad()), datamodule=data)


def test_multi_task_needs_its_tasks():
    with pytest.raises(ValueError, match="model.tasks is empty"):
        MultiTask(backbone="tiny_cnn", pretrained=False)


@pytest.mark.parametrize(
    ("weighting", "sampling"), [("Uncertainty", "proportional"), ("PCGrad", "all")], ids=["uncertainty", "pcgrad"]
)
def test_glue_multitask_config_fits_in_bf16_with_a_weighting_chosen_on_the_command_line(
    weighting, sampling, tmp_path, monkeypatch
):
    monkeypatch.setenv("TRANSFER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    cli = cli_main(
        [
            "fit",
            "-c", str(CONFIGS / "glue" / "multitask_small.yaml"),
            *TINY_GLUE,
            "--model.init_args.weighting", f"lightning_modules.weighting.{weighting}",
            "--data.init_args.sampling", sampling,
            "-c", str(CONFIGS / "trainer" / "bf16.yaml"),
            "-c", str(CONFIGS / "logger" / "csv.yaml"), "--trainer.logger.init_args.save_dir", str(tmp_path),
            "--trainer.max_epochs", "1",
        ]
    )  # fmt: skip
    assert cli.trainer.precision == "bf16-mixed" and type(cli.model.weighting).__name__ == weighting
    assert cli.model.task_names == ["rte", "mrpc", "stsb", "cola"]
    metrics = cli.trainer.callback_metrics
    assert {"val/rte/acc", "val/mrpc/f1", "val/stsb/spearman", "val/cola/mcc", "val/score"} <= set(metrics)
    assert torch.isfinite(metrics["val/loss"]) and all(torch.isfinite(p).all() for p in cli.model.parameters())
    saved = torch.load(next(tmp_path.rglob("last.ckpt")), weights_only=True)["hyper_parameters"]
    assert saved["weighting"]["class_path"] == f"lightning_modules.weighting.{weighting}"
