"""Pure loss functions: tensors in, a scalar out; no state, no configuration objects.

Each is computed in float32 with autocast off, whatever precision the step runs in: a KL divergence of
bf16 probabilities loses most of its digits, and the `T^2` factor would amplify the error.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.samplers import world_and_rank


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural
    Network"; torchdistill's `KDLoss`)::

        T^2 * KL(softmax(t / T) || softmax(s / T)),  averaged over the batch ("batchmean")

    The `T^2` keeps the gradient's scale independent of `T` (soft-target gradients shrink as 1 / T^2), so
    the loss mixes with cross-entropy at a weight that means the same for every temperature. Both
    distributions go through `log_softmax`, which subtracts the row maximum: logits of any size are safe.

    Args:
        student_logits: [B, C] raw student outputs.
        teacher_logits: [B, C] raw teacher outputs (no gradient flows into them).
        temperature: Softening temperature T > 0.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        shapes = f"{list(student_logits.shape)} and {list(teacher_logits.shape)}"
        raise ValueError(f"student and teacher logits differ in shape: {shapes}")
    with torch.autocast(student_logits.device.type, enabled=False):
        student = F.log_softmax(student_logits.float() / temperature, dim=-1)
        teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
        return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * temperature**2


def kd_regression_loss(student_predictions: Tensor, teacher_predictions: Tensor) -> Tensor:
    """Distillation for regression (STS-B): the mean squared error to the teacher's prediction::

        mean((s - t)^2)

    A single real output has no distribution to soften, so the temperature has no role; matching the
    teacher's prediction is the regression analogue of matching its soft targets. Shapes [B] or [B, 1].
    """
    with torch.autocast(student_predictions.device.type, enabled=False):
        student = student_predictions.float().reshape(-1)
        teacher = teacher_predictions.detach().float().reshape(-1)
        return F.mse_loss(student, teacher)


# --------------------------------------------------------------------------------- contrastive losses


def _gather(x: Tensor) -> tuple[Tensor, int]:
    """`x` from every rank, concatenated in rank order, and the row where this rank's part starts.

    A tensor that needs a gradient is gathered with `torch.distributed.nn.functional.all_gather`, whose
    backward sends each rank the gradient of every rank's loss with respect to its rows (summed). DDP then
    averages over the W ranks, so a step equals one process's step on the concatenated batch of the mean
    loss. Ranks must hold equally many rows (DistributedSampler pads to that). One process: `x` itself.
    """
    world, rank = world_and_rank()
    if world == 1:
        return x, 0
    if x.requires_grad:
        from torch.distributed.nn.functional import all_gather

        parts = list(all_gather(x))
    else:
        parts = [torch.empty_like(x) for _ in range(world)]
        torch.distributed.all_gather(parts, x.contiguous())
    return torch.cat(parts), rank * len(x)


def _check(temperature: float, *shapes: torch.Size) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if len(set(shapes)) != 1:
        raise ValueError(f"embeddings differ in shape: {' and '.join(str(list(s)) for s in shapes)}")


def _positives_loss(z: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """Mean over the anchors of this rank of -mean_{p in P(i)} log softmax_{a != i}(z_i . z_a / T)[p], with
    the candidates a and positives p taken from every rank. Unit vectors bound the logits by 1/T, and the
    log-softmax subtracts the row maximum: duplicates or a tiny T stay finite."""
    with torch.autocast(z.device.type, enabled=False):
        anchors = F.normalize(z.float(), dim=1)
        keys, offset = _gather(anchors)
        key_labels, _ = _gather(labels)
        rows = torch.arange(len(anchors), device=z.device)
        own = torch.zeros(len(anchors), len(keys), dtype=torch.bool, device=z.device)
        own[rows, rows + offset] = True
        logits = (anchors @ keys.T / temperature).masked_fill(own, float("-inf"))
        log_prob = logits - logits.logsumexp(dim=1, keepdim=True)
        positives = (labels[:, None] == key_labels[None, :]) & ~own
        counts = positives.sum(1)
        per_anchor = -log_prob.masked_fill(~positives, 0.0).sum(1) / counts.clamp(min=1)
        return per_anchor.mean()


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen, Kornblith, Norouzi &
    Hinton 2020, "A Simple Framework for Contrastive Learning of Visual Representations", eq. 1)::

        l(i, j) = -log( exp(sim(z_i, z_j) / T) / sum_{k != i} exp(sim(z_i, z_k) / T) )
        L = 1 / (2N) * sum_k [ l(2k-1, 2k) + l(2k, 2k-1) ]

    with sim the cosine similarity. Each of the 2N views is an anchor whose positive is the other view of
    its image and whose 2N - 2 negatives are every other view in the batch; under DDP the negatives come
    from every rank (gathered with gradients), so N is the global batch. SimCSE (Gao et al. 2021) is this
    loss with two dropout passes of one sentence as the views.

    Args:
        z1: [B, D] embeddings of the first views.
        z2: [B, D] embeddings of the second views (row i: the same image as z1's row i).
        temperature: T > 0.
    """
    _check(temperature, z1.shape, z2.shape)
    _, rank = world_and_rank()
    ids = torch.arange(len(z1), device=z1.device) + rank * len(z1)  # one class per image, unique across ranks
    return _positives_loss(torch.cat([z1, z2]), torch.cat([ids, ids]), temperature)


def supcon(z: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """Supervised contrastive loss, L^sup_out of Khosla et al. 2020 ("Supervised Contrastive Learning",
    eq. 2)::

        L = sum_i  -1/|P(i)| * sum_{p in P(i)} log( exp(z_i . z_p / T) / sum_{a in A(i)} exp(z_i . z_a / T) )

    over unit vectors z, where A(i) is every sample but i and P(i) those of A(i) with i's label; averaged
    over the anchors. Pass all views stacked, e.g. `z = cat([z1, z2])`, `labels = cat([y, y])`. With one
    label per image it is `nt_xent`. An anchor without a positive contributes 0 (and still counts in
    the mean, so that every rank averages over as many anchors and DDP stays exact). Under DDP the other
    samples come from every rank, gathered with gradients.

    Args:
        z: [N, D] embeddings.
        labels: [N] integer classes.
        temperature: T > 0.
    """
    _check(temperature, z.shape[:1], labels.shape)
    return _positives_loss(z, labels, temperature)
