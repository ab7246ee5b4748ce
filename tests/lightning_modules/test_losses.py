"""The pure loss functions, on tensors alone."""

import math

import pytest
import torch

from lightning_modules.losses import kd_loss, kd_regression_loss


def softmax(row, temperature):
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def test_kd_loss_matches_the_hand_computed_value():
    student, teacher, temperature = [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], [[3.0, 2.0, 1.0], [2.0, 0.0, -1.0]], 2.0
    expected = 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        p_s, p_t = softmax(s_row, temperature), softmax(t_row, temperature)
        expected += sum(t * math.log(t / s) for s, t in zip(p_s, p_t, strict=True))  # KL(p_t || p_s)
    expected = temperature**2 * expected / len(student)  # T^2, batchmean
    assert kd_loss(torch.tensor(student), torch.tensor(teacher), temperature).item() == pytest.approx(expected, 1e-6)
    assert kd_loss(torch.tensor(teacher), torch.tensor(teacher), temperature).item() == pytest.approx(0.0, abs=1e-7)


def test_t_squared_keeps_the_gradient_scale_as_temperature_grows():
    """Hinton et al.: at high T the soft-target gradient is (z_s - z_t) / (C T^2) per sample; the T^2 factor
    cancels that, so the gradient is (z_s - z_t) / C whatever T (zero-mean logits, batchmean)."""
    generator = torch.Generator().manual_seed(0)
    student, teacher = (torch.randn(4, 5, generator=generator) for _ in range(2))
    student, teacher = student - student.mean(1, keepdim=True), teacher - teacher.mean(1, keepdim=True)
    limit = (student - teacher) / (5 * 4)
    for temperature in (100.0, 1000.0):
        logits = student.clone().requires_grad_(True)
        kd_loss(logits, teacher, temperature).backward()
        assert torch.allclose(logits.grad, limit, atol=0.01 * limit.abs().max().item())
    unscaled = kd_loss(student, teacher, 50.0) / 50.0**2
    assert unscaled < 1e-3 * kd_loss(student, teacher, 50.0)  # without T^2 the KD term would vanish


def test_kd_loss_is_float32_under_bf16_autocast():
    torch.manual_seed(0)
    layer, inputs, teacher = torch.nn.Linear(8, 10), torch.randn(16, 8), torch.randn(16, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        student = layer(inputs)
        loss = kd_loss(student, teacher.bfloat16(), 4.0)
    assert student.dtype == torch.bfloat16 and loss.dtype == torch.float32
    reference = kd_loss(student.float(), teacher.bfloat16().float(), 4.0)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    loss.backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_kd_loss_is_finite_for_huge_logits(dtype):
    student = torch.tensor([[1e4, -1e4, 0.0], [3e4, 0.0, -3e4]], dtype=dtype, requires_grad=True)
    teacher = torch.tensor([[-1e4, 1e4, 0.0], [3e4, 0.0, -3e4]], dtype=dtype)
    loss = kd_loss(student, teacher, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0 and torch.isfinite(student.grad).all()
    assert kd_loss(teacher, teacher, 1.0).item() == pytest.approx(0.0, abs=1e-6)  # same huge logits: no loss


def test_kd_loss_rejects_bad_arguments():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), 0.0)
    with pytest.raises(ValueError, match=r"differ in shape: \[2, 3\] and \[2, 4\]"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)


def test_regression_kd_is_the_squared_error_to_the_teacher_prediction():
    student, teacher = torch.tensor([[1.0], [2.0], [4.0]]), torch.tensor([1.5, 2.0, 1.0])
    assert kd_regression_loss(student, teacher).item() == pytest.approx((0.25 + 0.0 + 9.0) / 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert kd_regression_loss(student.bfloat16(), teacher).dtype == torch.float32
