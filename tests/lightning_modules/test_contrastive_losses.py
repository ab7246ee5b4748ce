"""nt_xent and supcon on tensors alone: hand-computed cases, stability, and two gloo processes."""

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_modules.losses import nt_xent, supcon

E1, E2 = [1.0, 0.0], [0.0, 1.0]


def reference_supcon(z, labels, temperature):
    """Khosla et al. eq. 2, written out with Python floats."""
    unit = [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in z.tolist()]
    labels = labels.tolist()
    total = 0.0
    for i, anchor in enumerate(unit):
        sims = [sum(a * b for a, b in zip(anchor, other, strict=True)) / temperature for other in unit]
        denominator = sum(math.exp(s) for a, s in enumerate(sims) if a != i)
        positives = [p for p in range(len(unit)) if p != i and labels[p] == labels[i]]
        if positives:
            total += -sum(math.log(math.exp(sims[p]) / denominator) for p in positives) / len(positives)
    return total / len(unit)


def test_nt_xent_of_two_orthogonal_images_is_log_1_plus_2_over_e():
    # Each anchor: positive at similarity 1, two negatives at 0 (T = 1): -log(e / (e + 2)).
    z = torch.tensor([E1, E2])
    assert nt_xent(z, z.clone(), 1.0).item() == pytest.approx(math.log(1 + 2 / math.e), rel=1e-6)


def test_supcon_matches_hand_computed_cases():
    # labels [0, 0, 1, 1], z = e1, e1, e2, -e1, T = 1: anchors 0 and 1 -log(e / (e + 1 + 1/e)), anchor 2
    # log 3 (all three at similarity 0), anchor 3 -log(1 / (2/e + 1)).
    z, labels = torch.tensor([E1, E1, E2, [-1.0, 0.0]]), torch.tensor([0, 0, 1, 1])
    expected = (2 * -math.log(math.e / (math.e + 1 + 1 / math.e)) + math.log(3) + math.log(1 + 2 / math.e)) / 4
    assert supcon(z, labels, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # Two positives each for anchors 0-2; anchor 3 has none and adds 0: (3 log(e + 2) - 1) / 4.
    z, labels = torch.tensor([E1, E1, E2, E2]), torch.tensor([0, 0, 0, 1])
    assert supcon(z, labels, 1.0).item() == pytest.approx((3 * math.log(math.e + 2) - 1) / 4, rel=1e-6)


def test_losses_match_the_formula_on_random_embeddings():
    generator = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 3, generator=generator), torch.randn(5, 3, generator=generator)
    labels = torch.tensor([0, 1, 0, 2, 1])
    ids = torch.arange(5)
    assert nt_xent(z1, z2, 0.5).item() == pytest.approx(
        reference_supcon(torch.cat([z1, z2]), torch.cat([ids, ids]), 0.5)
    )
    both, twice = torch.cat([z1, z2]), torch.cat([labels, labels])
    assert supcon(both, twice, 0.3).item() == pytest.approx(reference_supcon(both, twice, 0.3), rel=1e-5)
    assert supcon(both, torch.cat([ids, ids]), 0.5).item() == pytest.approx(
        nt_xent(z1, z2, 0.5).item()
    )  # one class per image
    assert nt_xent(3 * z1, z2 / 7, 0.5).item() == pytest.approx(nt_xent(z1, z2, 0.5).item(), rel=1e-6)  # cosine


@pytest.mark.parametrize("loss", ["nt_xent", "supcon"])
@pytest.mark.parametrize("temperature", [0.01, 0.5])
def test_duplicates_zeros_and_small_temperatures_stay_finite(loss, temperature):
    for z in (torch.ones(8, 4), torch.zeros(8, 4), torch.tensor([[1e4, -1e4]] * 8)):
        z1, z2 = z[:4].clone().requires_grad_(True), z[4:].clone().requires_grad_(True)
        labels = torch.tensor([0, 0, 1, 1])
        value = (
            nt_xent(z1, z2, temperature)
            if loss == "nt_xent"
            else supcon(torch.cat([z1, z2]), torch.cat([labels, labels]), temperature)
        )
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()
    # All eight rows alike: every candidate ties, so nt_xent is log(2N - 1), whatever T.
    assert nt_xent(torch.ones(4, 4), torch.ones(4, 4), temperature).item() == pytest.approx(math.log(7), rel=1e-5)


def test_losses_are_float32_under_bf16_autocast():
    layer, inputs = torch.nn.Linear(4, 8), torch.randn(6, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = layer(inputs)
        assert z.dtype == torch.bfloat16 and nt_xent(z[:3], z[3:], 0.2).dtype == torch.float32
        assert supcon(z, torch.tensor([0, 1, 0, 1, 0, 1]), 0.2).dtype == torch.float32


def test_losses_reject_bad_arguments():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        nt_xent(torch.ones(2, 3), torch.ones(2, 3), 0.0)
    with pytest.raises(ValueError, match=r"differ in shape: \[2, 3\] and \[3, 3\]"):
        nt_xent(torch.ones(2, 3), torch.ones(3, 3), 0.1)
    with pytest.raises(ValueError, match=r"\[4\] and \[3\]"):
        supcon(torch.ones(4, 3), torch.zeros(3, dtype=torch.int64), 0.1)


def losses_on_rank(rank: int, world: int, init_file: str, data: dict, out: dict) -> None:
    """This rank's share of the batch through both losses: the losses and the gradients of its rows."""
    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        z1, z2, labels = (data[k].chunk(world)[rank].clone() for k in ("z1", "z2", "labels"))
        z1.requires_grad_(True)
        z2.requires_grad_(True)
        loss = nt_xent(z1, z2, data["temperature"])
        loss.backward()
        result = {"nt_xent": loss.detach(), "nt_z1": z1.grad.clone(), "nt_z2": z2.grad.clone()}
        z1.grad, z2.grad = None, None
        loss = supcon(torch.cat([z1, z2]), torch.cat([labels, labels]), data["temperature"])
        loss.backward()
        out[rank] = result | {"supcon": loss.detach(), "sup_z1": z1.grad.clone(), "sup_z2": z2.grad.clone()}
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_give_the_loss_and_gradients_of_one_process_on_the_whole_batch(tmp_path):
    """Each rank gathers the other's embeddings with gradients; averaging over ranks (as DDP does with the
    parameter gradients) gives exactly one process's loss and gradients on the concatenated batch."""
    world, temperature = 2, 0.3
    generator = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 5, generator=generator), torch.randn(8, 5, generator=generator)
    labels = torch.tensor([0, 1, 2, 0, 1, 1, 2, 0])
    data = {"z1": z1, "z2": z2, "labels": labels, "temperature": temperature}
    with mp.Manager() as manager:
        out = manager.dict()
        # fork: the children inherit the imports, so the test takes a second rather than a spawn's imports
        mp.start_processes(losses_on_rank, (world, str(tmp_path / "init"), data, out), world, start_method="fork")
        ranks = [out[r] for r in range(world)]

    whole1, whole2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    single = nt_xent(whole1, whole2, temperature)
    single.backward()
    assert sum(r["nt_xent"] for r in ranks).item() / world == pytest.approx(single.item(), rel=1e-6)
    assert torch.allclose(torch.cat([r["nt_z1"] for r in ranks]) / world, whole1.grad, atol=1e-6)
    assert torch.allclose(torch.cat([r["nt_z2"] for r in ranks]) / world, whole2.grad, atol=1e-6)

    whole1.grad, whole2.grad = None, None
    single = supcon(torch.cat([whole1, whole2]), torch.cat([labels, labels]), temperature)
    single.backward()
    assert sum(r["supcon"] for r in ranks).item() / world == pytest.approx(single.item(), rel=1e-6)
    assert torch.allclose(torch.cat([r["sup_z1"] for r in ranks]) / world, whole1.grad, atol=1e-6)
    assert torch.allclose(torch.cat([r["sup_z2"] for r in ranks]) / world, whole2.grad, atol=1e-6)
