"""Loss weighting for multi-task learning: how the tasks' losses (or gradients) make one update.

`MultiTask` takes one of these objects (`--model.init_args.weighting lightning_modules.weighting.Uncertainty`).
A weighting is an `nn.Module`: learned weights are its parameters, so they are saved in checkpoints,
averaged by DDP and trained by the model's optimizer (a `weighting` parameter group of its own, without
weight decay, at `lr` when given).

- Loss weightings (`Equal`, `Uncertainty`, `DWA`) turn the task losses into one loss; Lightning's automatic
  optimization (and DDP's gradient averaging) does the rest.
- Gradient weightings (`GradNorm`, `PCGrad`) need each task's own gradient on shared parameters. `MultiTask`
  then optimizes manually: one `torch.autograd.grad` per task, one all-reduce (mean over ranks) of the
  losses, the per-task gradients and the other gradients, then `combine` on values identical on every
  rank, so the ranks take identical steps. They need every task at every step (`data.sampling: all`).

The math of each method is a pure function below, tested on hand-computed cases.
"""

from __future__ import annotations

from typing import ClassVar, cast

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from datamodules.samplers import world_and_rank


def uncertainty_loss(loss: Tensor, log_variance: Tensor, regression: bool) -> Tensor:
    """Kendall, Gal & Cipolla 2018 ("Multi-Task Learning Using Uncertainty to Weigh Losses"), with the
    learned s = log sigma^2: regression 1/(2 sigma^2) L + log sigma = 0.5 exp(-s) L + 0.5 s; classification
    1/sigma^2 L + log sigma = exp(-s) L + 0.5 s."""
    scale = 0.5 if regression else 1.0
    return scale * torch.exp(-log_variance) * loss + 0.5 * log_variance


def dwa_weights(previous: Tensor, before: Tensor, temperature: float) -> Tensor:
    """Dynamic Weight Average (Liu, Johns & Davison 2019, "End-to-End Multi-Task Learning with Attention"):
    lambda_k = K exp(r_k / T) / sum_i exp(r_i / T), r_k = L_k(t-1) / L_k(t-2), the ratio of task k's mean
    losses over the last two epochs: a task whose loss falls more slowly gets more weight."""
    ratios = previous / before
    return len(ratios) * torch.softmax(ratios / temperature, dim=0)


def gradnorm_weight_gradient(weights: Tensor, grad_norms: Tensor, loss_ratios: Tensor, alpha: float) -> Tensor:
    """GradNorm (Chen et al. 2018, eq. 2): d L_grad / d w for L_grad = sum_i |G_i - mean(G) r_i^alpha|, where
    G_i = w_i ||grad_W L_i|| is task i's weighted gradient norm on the shared layer W, r_i = Ltilde_i /
    mean(Ltilde) its relative inverse training rate (Ltilde_i = L_i(t) / L_i(0)); the target mean(G) r_i^alpha
    is held constant. A task whose gradient is larger than its target gets a positive gradient (its weight
    shrinks), a smaller one a negative gradient (its weight grows)."""
    norms = weights * grad_norms
    target = norms.mean() * (loss_ratios / loss_ratios.mean()).pow(alpha)
    return torch.sign(norms - target) * grad_norms


def pcgrad_project(grads: Tensor, orders: list[list[int]]) -> Tensor:
    """PCGrad's projection (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning"): task i's gradient,
    against every other task j in `orders[i]`, loses its component along g_j where they conflict
    (g_i . g_j < 0): g_i <- g_i - (g_i . g_j / ||g_j||^2) g_j, with the original g_j. Returns the projected
    gradients [K, P]; the update is their sum."""
    projected = grads.clone()
    for i, order in enumerate(orders):
        for j in order:
            dot = projected[i] @ grads[j]
            if j != i and dot < 0:
                projected[i] -= dot / grads[j].pow(2).sum().clamp_min(1e-20) * grads[j]
    return projected


class LossWeighting(nn.Module):
    """Base: `setup` learns the tasks (name -> regression) before training; `forward` turns the task losses
    present in a step into the loss to minimise and the weights to log."""

    uses_gradients: ClassVar[bool] = False
    lr: float | None = None  # learning rate of the weighting's own parameters; None: the optimizer's

    def setup(self, tasks: dict[str, bool]) -> None:
        self.tasks = list(tasks)
        self.regression = [tasks[t] for t in self.tasks]

    def forward(self, losses: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def end_epoch(self) -> None:
        """Called at the end of every training epoch, on every rank."""


class Equal(LossWeighting):
    """The sum of the task losses (MT-DNN, Liu et al. 2019, "Multi-Task Deep Neural Networks for Natural
    Language Understanding"): with one task per step, the plain loss of that task."""

    def forward(self, losses: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return torch.stack(list(losses.values())).sum(), {}


class Uncertainty(LossWeighting):
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla 2018): each task learns a log-variance
    s; its loss counts exp(-s) times (half for regression), plus s/2 so that s cannot grow for free
    (`uncertainty_loss`). Logs the factor of each loss as its weight.

    Args:
        lr: Learning rate of the log-variances; None: the optimizer's (at fine-tuning rates such as 5e-5
            they barely move in a few thousand steps).
        init: Initial log-variance of every task (0: weight 1).
    """

    def __init__(self, lr: float | None = 1e-2, init: float = 0.0):
        super().__init__()
        self.lr = lr
        self.init = init

    def setup(self, tasks: dict[str, bool]) -> None:
        super().setup(tasks)
        self.log_variances = nn.Parameter(torch.full((len(self.tasks),), float(self.init)))

    def forward(self, losses: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        terms, weights = [], {}
        for task, loss in losses.items():
            i = self.tasks.index(task)
            terms.append(uncertainty_loss(loss, self.log_variances[i], self.regression[i]))
            weights[task] = ((0.5 if self.regression[i] else 1.0) * torch.exp(-self.log_variances[i])).detach()
        return torch.stack(terms).sum(), weights


def mean_over_ranks(values: Tensor) -> Tensor:
    """`values` averaged over the ranks of an initialised process group (every rank must call it); as is
    without one."""
    world, _ = world_and_rank()
    if world == 1:
        return values
    values = values.clone()
    torch.distributed.all_reduce(values)
    return values / world


class DWA(LossWeighting):
    """Dynamic Weight Average (Liu, Johns & Davison 2019): each epoch's weights come from how fast each
    task's mean training loss fell over the two epochs before (`dwa_weights`); 1 for the first two epochs.
    Each step's losses are averaged over ranks before they enter the epoch means, so every rank holds the
    same means (and uses the same weights), and a checkpoint (rank 0's) carries a half-finished epoch's
    means for every rank: a run resumed mid-epoch weighs the next epoch as the uninterrupted one does.

    Args:
        temperature: T; larger gives more uniform weights.
    """

    history: Tensor  # mean task losses of the last two epochs [2, K]
    weights: Tensor  # this epoch's weights [K]

    def __init__(self, temperature: float = 2.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"model.weighting.temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def setup(self, tasks: dict[str, bool]) -> None:
        super().setup(tasks)
        k = len(self.tasks)
        self.register_buffer("history", torch.zeros(2, k))  # 0: no loss seen (checkpoints hold finite tensors only)
        self.register_buffer("weights", torch.ones(k))
        self.epoch_losses = nn.ModuleList([MeanMetric(sync_on_compute=False) for _ in self.tasks])
        for metric in self.epoch_losses:  # in the checkpoint: an epoch resumed half-way continues its means
            cast(MeanMetric, metric).persistent(True)

    def _epoch_loss(self, i: int) -> MeanMetric:
        return cast(MeanMetric, self.epoch_losses[i])

    def forward(self, losses: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        terms, weights = [], {}
        means = mean_over_ranks(torch.stack([loss.detach().float() for loss in losses.values()]))
        for (task, loss), mean in zip(losses.items(), means, strict=True):
            i = self.tasks.index(task)
            self._epoch_loss(i).update(mean)
            terms.append(self.weights[i] * loss)
            weights[task] = self.weights[i]
        return torch.stack(terms).sum(), weights

    def end_epoch(self) -> None:
        metrics = [self._epoch_loss(i) for i in range(len(self.tasks))]
        unseen = torch.tensor(0.0)
        current = torch.stack(
            [(m.compute() if m.update_called else unseen).float().to(self.history.device) for m in metrics]
        )
        for metric in metrics:
            metric.reset()
        self.history.copy_(torch.stack([self.history[1], current]))
        ready = bool(torch.isfinite(self.history).all() and (self.history > 0).all())
        weights = dwa_weights(self.history[1], self.history[0], self.temperature) if ready else torch.ones_like(current)
        self.weights.copy_(weights)


class GradientWeighting(LossWeighting):
    """Base of the methods that work on per-task gradients of the shared parameters (manual optimization)."""

    uses_gradients = True
    replaces_shared_gradient: ClassVar[bool] = True  # False: the weighted loss's gradient stays on them

    def shared_parameters(self, backbone: nn.Module) -> list[nn.Parameter]:
        """Where each task's gradient is taken: every trainable backbone parameter."""
        shared = [p for p in backbone.parameters() if p.requires_grad]
        if not shared:
            raise ValueError(f"{type(self).__name__} works on the shared backbone's gradients: the backbone is frozen")
        return shared

    def combine(self, task_grads: Tensor, losses: Tensor, step: int) -> Tensor | None:
        """From each task's gradient [K, P] and loss [K] (means over ranks): the shared parameters' gradient,
        or None to keep the weighted loss's. May set the gradients of its own parameters."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after each optimizer step."""


class PCGrad(GradientWeighting):
    """Gradient surgery (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning"): on the shared
    parameters, each task's gradient is projected off the gradients it conflicts with, in a random task
    order per step (`pcgrad_project`), and the projections are summed; task heads get their own gradients.
    The order is drawn from the step number, so it is the same on every rank.
    """

    def forward(self, losses: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return torch.stack(list(losses.values())).sum(), {}

    def combine(self, task_grads: Tensor, losses: Tensor, step: int) -> Tensor | None:
        generator = torch.Generator().manual_seed(step)
        k = len(task_grads)
        orders = [torch.randperm(k, generator=generator).tolist() for _ in range(k)]
        return pcgrad_project(task_grads, orders).sum(0)


class GradNorm(GradientWeighting):
    """GradNorm (Chen, Badrinarayanan, Lee & Rabinovich 2018, "GradNorm: Gradient Normalization for Adaptive
    Loss Balancing in Deep Multitask Networks"): learned task weights w (sum K) that pull each task's
    gradient norm on the last shared layer toward the mean norm times its relative inverse training rate to
    the power alpha (`gradnorm_weight_gradient`); the network trains on sum w_i L_i with w held constant.
    L_i(0) are the losses of the first step; the last shared layer is the backbone's last layer group.

    Args:
        alpha: Strength of the pull toward equal training rates (0: equal gradient norms).
        lr: Learning rate of the weights; None: the optimizer's.
    """

    replaces_shared_gradient = False
    initial_losses: Tensor  # L_i(0) [K]

    def __init__(self, alpha: float = 1.5, lr: float | None = 1e-2):
        super().__init__()
        self.alpha = alpha
        self.lr = lr

    def setup(self, tasks: dict[str, bool]) -> None:
        super().setup(tasks)
        self.task_weights = nn.Parameter(torch.ones(len(self.tasks)))
        self.register_buffer("initial_losses", torch.zeros(len(self.tasks)))  # 0: not set yet (set losses are > 0)

    def shared_parameters(self, backbone: nn.Module) -> list[nn.Parameter]:
        groups = getattr(backbone, "layer_groups", lambda: [list(backbone.parameters())])()
        last = [p for p in groups[-1] if p.requires_grad] if groups else []
        if not last:
            raise ValueError("GradNorm needs a trainable last layer group of the backbone (its last shared layer)")
        return last

    def forward(self, losses: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        weights = self.task_weights.detach()
        terms = {task: weights[self.tasks.index(task)] * loss for task, loss in losses.items()}
        return torch.stack(list(terms.values())).sum(), {t: weights[self.tasks.index(t)] for t in losses}

    def combine(self, task_grads: Tensor, losses: Tensor, step: int) -> Tensor | None:
        if (self.initial_losses == 0).any():
            self.initial_losses.copy_(losses.detach().clamp_min(1e-12))
        grad = gradnorm_weight_gradient(
            self.task_weights.detach(), task_grads.norm(dim=1), losses.detach() / self.initial_losses, self.alpha
        )
        self.task_weights.grad = grad.to(self.task_weights.dtype)
        return None

    def after_step(self) -> None:
        with torch.no_grad():  # renormalise to sum K, as in the paper; weights stay positive
            self.task_weights.clamp_(min=1e-3)
            self.task_weights.mul_(len(self.tasks) / self.task_weights.sum())
