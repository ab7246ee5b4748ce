"""Pure loss functions: tensors in, a scalar out; no state, no configuration objects.

Each is computed in float32 with autocast off, whatever precision the step runs in: a KL divergence of
bf16 probabilities loses most of its digits, and the `T^2` factor would amplify the error.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


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
