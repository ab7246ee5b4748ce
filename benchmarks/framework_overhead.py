"""Benchmark 1: a framework training step against a hand-written PyTorch loop doing the same work.

Same network (same initial weights), same batches in the same order, same SGD optimizer: A is a plain
`for batch in loader: forward, cross-entropy, backward, step` loop; B is `FineTuning` fitted by a
Lightning Trainer with what the CLI always adds (torchmetrics accuracy, the non-finite loss check, the
resume callbacks, logging every 5 steps to a CSV logger; no progress bar, checkpoint or validation,
which are not part of a step). Both time the same steps
after a warm-up. Two models: a realistic CNN step (ResNet-20, CIFAR-sized batches of 128) and a micro
MLP step, where any fixed per-step cost shows. The final losses of A and B must agree to 1e-5.

    python benchmarks/framework_overhead.py [--rounds 5]
"""

from __future__ import annotations

import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from harness import Comparison, arguments, compare, report
from timing import StepTimer, cli_like_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules import FineTuning


@dataclass(frozen=True)
class Workload:
    name: str
    backbone: str
    shape: tuple[int, ...]
    batch_size: int
    steps: int
    warmup: int


WORKLOADS = {
    "cnn": Workload("ResNet-20 step (batch 128, 32 px)", "cifar_resnet20", (3, 32, 32), 128, 30, 5),
    "mlp": Workload("micro MLP step (batch 64)", "tiny_mlp", (3, 16, 16), 64, 400, 50),
}


def batches(work: Workload) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(work.batch_size * work.steps, *work.shape, generator=generator)
    labels = torch.randint(0, 10, (len(images),), generator=generator)
    dataset = TensorDataset(images, labels)
    return DataLoader(dataset, batch_size=work.batch_size, collate_fn=lambda rows: _as_dict(rows))


def _as_dict(rows: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    images, labels = zip(*rows, strict=True)
    return {"pixel_values": torch.stack(images), "labels": torch.stack(labels)}


def model(work: Workload) -> FineTuning:
    torch.manual_seed(0)
    return FineTuning(
        backbone=work.backbone,
        pretrained=False,
        num_classes=10,
        optimizer=functools.partial(torch.optim.SGD, lr=0.01, momentum=0.9),
    )


def hand_written(work: Workload) -> tuple[float, float]:
    """(seconds of the timed steps, last loss) of a plain PyTorch loop."""
    net = model(work)
    network = nn.Sequential(net.backbone, net.head).train()
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9)
    started = 0.0
    for step, batch in enumerate(batches(work)):
        if step == work.warmup:
            started = time.perf_counter()
        loss = nn.functional.cross_entropy(network(batch["pixel_values"]), batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started, loss.item()


def framework(work: Workload) -> tuple[float, float]:
    """(seconds of the timed steps, last loss) of the same steps through FineTuning and a Trainer."""
    timer = StepTimer(work.warmup)
    with tempfile.TemporaryDirectory() as logs:
        trainer = cli_like_trainer(logs, [timer], accelerator="cpu")
        trainer.fit(model(work), train_dataloaders=batches(work))
    return timer.seconds, timer.loss


def run(rounds: int = 5) -> list[Comparison]:
    comparisons = []
    for key, work in WORKLOADS.items():
        losses: dict[str, float] = {}
        a = functools.partial(timed_steps, hand_written, work, losses, "a")
        b = functools.partial(timed_steps, framework, work, losses, "b")
        result = compare(work.name, "PyTorch loop", a, "framework", b, rounds)
        result.unit_scale, result.unit = 1e3 / (work.steps - work.warmup), "ms/step"
        same = abs(losses["a"] - losses["b"]) <= 1e-5
        note = f"final losses {losses['a']:.6f} / {losses['b']:.6f} ({'equal' if same else 'DIFFERENT'} to 1e-5)"
        if key == "cnn":
            overhead = 1 / result.median - 1
            result.judge(f"overhead <= 3 % (here {overhead:+.1%})", overhead <= 0.03 and same, note)
        else:
            extra = statistics.median(b - a for a, b in zip(result.a, result.b, strict=True)) * result.unit_scale
            result.judge(f"<= 1 ms/step more (here {extra:+.3f} ms)", extra <= 1.0 and same, note)
        comparisons.append(result)
    return comparisons


def timed_steps(way: Callable[[Workload], tuple[float, float]], work: Workload, losses: dict, key: str) -> float:
    seconds, losses[key] = way(work)
    return seconds


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    report(run(args.rounds))


if __name__ == "__main__":
    main()
