"""Benchmark 10 (needs a CUDA GPU): mixed precision against fp32, and the framework against a plain loop, on a GPU.

Training steps (forward, cross-entropy, backward, AdamW step) of two networks with random weights (speed
does not depend on the weights): a CNN (timm ConvNeXt-Tiny, 224 px, batch 128) and a text encoder (BERT-base
shape, 12 layers of width 768, 128 tokens, batch 64, through `hf:<folder>`). Each is trained by `FineTuning`
and a Lightning Trainer with what the CLI always adds (torchmetrics, the non-finite check, the resume
callbacks) at `32-true`, `16-mixed` and `bf16-mixed`, and by a plain PyTorch loop under bf16 autocast doing the
same steps: same network, batches and optimizer; and at `bf16-mixed` once more without the check for non-finite
losses (one device sync per step: the price of stopping before a NaN step's update). Reported: speed-up over
fp32 and over the loop, samples/s and peak GPU memory of each way.

    python benchmarks/gpu_precision.py [--rounds 3] [--steps 30]

`--device cpu --small` runs the same code on the CPU with small networks: a check of the script, not a figure.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
from harness import Comparison, arguments, measure, report
from timing import StepTimer, cli_like_trainer
from torch.utils.data import DataLoader
from transformers import BertConfig, BertModel

import lightning_modules.base
from lightning_modules import FineTuning

PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")
DEVICE = "cuda"  # --device


def synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@dataclass(frozen=True)
class Workload:
    name: str
    batch_size: int
    backbone: Callable[[Path], str]  # the backbone name, given a scratch folder
    batch: Callable[[int, torch.Generator], dict[str, torch.Tensor]]


def images(size: int, rows: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(rows, 3, size, size, generator=generator)}


def tokens(length: int, rows: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    ids = torch.randint(1000, 30000, (rows, length), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def bert_folder(scratch: Path, width: int = 768, layers: int = 12) -> str:
    """A BERT-shaped config with random weights, saved as an `hf:` folder."""
    folder = scratch / f"bert_{width}x{layers}_random"
    if not folder.exists():
        config = BertConfig(hidden_size=width, num_hidden_layers=layers, num_attention_heads=width // 64,
                            intermediate_size=4 * width)  # fmt: skip
        BertModel(config).save_pretrained(folder)
    return f"hf:{folder}"


WORKLOADS = (
    Workload("ConvNeXt-Tiny, 224 px, batch 128", 128, lambda _: "timm:convnext_tiny", functools.partial(images, 224)),
    Workload("BERT-base shape, 128 tokens, batch 64", 64, bert_folder, functools.partial(tokens, 128)),
)
SMALL = (
    Workload("ConvNeXt-Atto, 32 px, batch 8", 8, lambda _: "timm:convnext_atto", functools.partial(images, 32)),
    Workload("BERT 128 x 2, 16 tokens, batch 8", 8, functools.partial(bert_folder, width=128, layers=2),
             functools.partial(tokens, 16)),
)  # fmt: skip


def batches(work: Workload, steps: int) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    rows = [{**work.batch(work.batch_size, generator), "labels": torch.randint(0, 10, (work.batch_size,))}]
    data = rows * steps  # the same batch each step: the loader costs nothing, the step is what is timed
    return DataLoader(data, batch_size=None)  # type: ignore[arg-type]


def model(backbone: str) -> FineTuning:
    torch.manual_seed(0)
    return FineTuning(
        backbone=backbone,
        pretrained=False,
        num_classes=10,
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-4),
    )


@contextlib.contextmanager
def peak_memory(peaks: dict[str, float], key: str) -> Iterator[None]:
    if DEVICE != "cuda":
        peaks[key] = float("nan")
        yield
        return
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    yield
    peaks[key] = max(peaks.get(key, 0.0), torch.cuda.max_memory_allocated() / 2**30)


def framework(
    backbone: str, work: Workload, precision: str, steps: int, warmup: int, peaks: dict, checked: bool = True
) -> float:
    """Seconds of the timed steps through FineTuning and a Trainer at `precision` (without the non-finite loss
    check when not `checked`)."""
    timer = StepTimer(warmup, synchronize)
    key = precision if checked else f"{precision} unchecked"
    unchecked = mock.patch.object(lightning_modules.base, "check_finite_losses", lambda *args: None)
    with (
        tempfile.TemporaryDirectory() as logs,
        peak_memory(peaks, key),
        contextlib.nullcontext() if checked else unchecked,
    ):
        accelerator = "gpu" if DEVICE == "cuda" else "cpu"
        trainer = cli_like_trainer(logs, [timer], accelerator=accelerator, devices=1, precision=precision)
        trainer.fit(model(backbone), train_dataloaders=batches(work, steps))
    return timer.seconds


def plain_loop(backbone: str, work: Workload, steps: int, warmup: int, peaks: dict) -> float:
    """Seconds of the same timed steps in a hand-written loop under bf16 autocast."""
    with peak_memory(peaks, "loop"):
        net = model(backbone).to(DEVICE).train()
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
        started = 0.0
        for step, batch in enumerate(batches(work, steps)):
            if step == warmup:
                synchronize()
                started = time.perf_counter()
            batch = {key: value.to(DEVICE, non_blocking=True) for key, value in batch.items()}
            with torch.autocast(DEVICE, dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(net(batch), batch["labels"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        synchronize()
        return time.perf_counter() - started


def run(rounds: int = 3, steps: int = 30, warmup: int = 10, small: bool = False) -> list[Comparison]:
    comparisons = []
    with tempfile.TemporaryDirectory() as scratch:
        for work in SMALL if small else WORKLOADS:
            backbone = work.backbone(Path(scratch))
            peaks: dict[str, float] = {}
            ways: dict[str, Callable[[], float]] = {
                precision: functools.partial(framework, backbone, work, precision, steps, warmup, peaks)
                for precision in PRECISIONS
            }
            ways["bf16-mixed unchecked"] = functools.partial(
                framework, backbone, work, "bf16-mixed", steps, warmup, peaks, checked=False
            )
            ways["loop"] = functools.partial(plain_loop, backbone, work, steps, warmup, peaks)
            samples = measure(ways, rounds)
            per_step = 1e3 / (steps - warmup)
            speeds = {way: work.batch_size * (steps - warmup) / min(samples.seconds[way]) for way in ways}
            note = "; ".join(
                f"{way}: {speeds[way]:.0f} samples/s (fastest round), peak {peaks[way]:.1f} GiB" for way in ways
            )
            pairs = [("32-true", "16-mixed"), ("32-true", "bf16-mixed"), ("loop", "bf16-mixed")]
            for a, b in [*pairs, ("bf16-mixed unchecked", "bf16-mixed"), ("loop", "bf16-mixed unchecked")]:
                comparison = Comparison(work.name, a, b, samples, unit_scale=per_step, unit="ms/step")
                comparisons.append(comparison.judge("", None, note if b == "bf16-mixed" and a == "loop" else ""))
    return comparisons


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="steps per run, the first --warmup untimed")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--small", action="store_true", help="small networks (a check of the script)")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_precision.py needs a CUDA GPU (none is visible); --device cpu --small checks the script")
    print(f"device: {torch.cuda.get_device_name() if DEVICE == 'cuda' else 'cpu'}")
    report(run(args.rounds, args.steps, args.warmup, args.small))


if __name__ == "__main__":
    main()
