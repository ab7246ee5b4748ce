"""Benchmark 8: an adapter training step against a full fine-tuning step of the same pretrained backbone.

`FineTuning` with `model.adapter` (LoRA, rank 8, the backbone's default targets, or BitFit) against the same
module training every weight: forward, loss, backward, AdamW step. MiniLM-L6 on 32 sentences of 128 tokens
and EfficientNet-Lite0 on 32 images at 128 px. Time per step is measured in interleaved rounds; memory is
what a step holds beyond the weights (activations saved for backward, gradients, AdamW state), counted from
the tensors (see `training_memory_mb`).

    python benchmarks/adapters.py [--rounds 5] [--calls 3]
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import peft
import torch
from harness import Comparison, arguments, compare, report, seconds_per_call

from lightning_modules import FineTuning
from lightning_modules.adapters import BitFit

BACKBONES = {"minilm_l6": "MiniLM-L6, 32 x 128 tokens", "efficientnet_lite0": "EfficientNet-Lite0, 32 x 128 px"}
ADAPTERS: dict[str, Callable[[], object] | None] = {
    "full": None,
    "lora": lambda: peft.LoraConfig(r=8, lora_alpha=16),
    "bitfit": BitFit,
}


def batch(backbone: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (32,), generator=generator)
    if backbone == "minilm_l6":
        ids = torch.randint(1000, 20000, (32, 128), generator=generator)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return {"pixel_values": torch.randn(32, 3, 128, 128, generator=generator), "labels": labels}


def build(backbone: str, way: str) -> tuple[FineTuning, torch.optim.Optimizer]:
    """The module with `way`'s adapter (none for `full`) and AdamW on what it trains."""
    torch.manual_seed(0)
    adapter = ADAPTERS[way]
    model = FineTuning(backbone=backbone, num_classes=2, adapter=adapter() if adapter else None).train()
    return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)


def training_step(backbone: str, way: str) -> Callable[[], None]:
    model, optimizer = build(backbone, way)
    inputs = batch(backbone)

    def step() -> None:
        loss = model.compute_loss(inputs, "train")["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def training_memory_mb(backbone: str, way: str) -> float:
    """MB a training step holds beyond the weights: activations saved for backward (distinct storages that are
    not parameters), gradients and AdamW's state. Counted from the tensors themselves: exact, whatever the
    allocator or the machine's load."""
    model, optimizer = build(backbone, way)
    trained = [p for p in model.parameters() if p.requires_grad]
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model.compute_loss(batch(backbone), "train")["loss"]
    loss.backward()
    optimizer.step()
    gradients = sum(p.grad.nbytes for p in trained if p.grad is not None)
    state = sum(t.nbytes for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.ndim)
    return (sum(saved.values()) + gradients + state) / 2**20


def run(rounds: int = 5, calls: int = 3) -> list[Comparison]:
    comparisons = []
    for backbone, shape in BACKBONES.items():
        full_mb = training_memory_mb(backbone, "full")
        a = functools.partial(seconds_per_call, training_step(backbone, "full"), calls, 1)
        for way in ("lora", "bitfit") if backbone == "minilm_l6" else ("lora",):
            b = functools.partial(seconds_per_call, training_step(backbone, way), calls, 1)
            result = compare(f"{shape}: {way} vs full fine-tuning step", "full", a, way, b, rounds)
            result.unit_scale, result.unit = 1e3, "ms/step"
            mb = training_memory_mb(backbone, way)
            note = f"training memory (activations, gradients, AdamW state): full {full_mb:.0f} MB, {way} {mb:.0f} MB"
            note += f" ({full_mb / mb:.2f}x less)"
            comparisons.append(result.judge("reported (time and memory)", None, note))
    return comparisons


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3, help="timed steps per measurement")
    args = parser.parse_args()
    report(run(args.rounds, args.calls))


if __name__ == "__main__":
    main()
