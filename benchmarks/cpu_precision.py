"""Benchmark 4: bf16 autocast against fp32 on the CPU, and channels_last against contiguous CNN inference.

Training steps (forward, loss, backward, SGD step) of a CNN (torchvision ResNet-18 at 64 px, batch 64)
and of a transformer layer (BERT-base shape scaled to MiniLM: hidden 384, 12 heads, 128 tokens, batch
32), each in fp32 and under `torch.autocast("cpu", torch.bfloat16)`; and ResNet-18 inference at 128 px
in the default (contiguous) layout against `channels_last`. CPUs with avx512_bf16 or AMX run bf16
matmuls natively; without them bf16 is emulated and slower, which is why `precision: auto` only picks
bf16-mixed where those instructions exist.

    python benchmarks/cpu_precision.py [--rounds 5]
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import torch
import torchvision
from harness import Comparison, arguments, compare, report, seconds_per_call
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertLayer


def training_step(network: nn.Module, inputs: torch.Tensor, loss_of: Callable, bf16: bool) -> Callable[[], None]:
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-3)

    def step() -> None:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            loss = loss_of(network(inputs))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def cnn_step(bf16: bool) -> Callable[[], None]:
    torch.manual_seed(0)
    network = torchvision.models.resnet18(num_classes=10).train()
    images, labels = torch.randn(64, 3, 64, 64), torch.randint(0, 10, (64,))
    return training_step(network, images, lambda logits: nn.functional.cross_entropy(logits.float(), labels), bf16)


def transformer_step(bf16: bool) -> Callable[[], None]:
    torch.manual_seed(0)
    config = BertConfig(hidden_size=384, num_attention_heads=12, intermediate_size=1536)
    config._attn_implementation = "sdpa"
    layer = BertLayer(config).train()
    hidden = torch.randn(32, 128, 384)

    def loss_of(out: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
        return (out[0] if isinstance(out, tuple) else out).float().pow(2).mean()

    return training_step(layer, hidden, loss_of, bf16)


def cnn_inference(channels_last: bool) -> Callable[[], None]:
    torch.manual_seed(0)
    network = torchvision.models.resnet18(num_classes=10).eval()
    images = torch.randn(32, 3, 128, 128)
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with torch.inference_mode():
            network(images)

    return step


def run(rounds: int = 5, calls: int = 5) -> list[Comparison]:
    comparisons = []
    for name, build, a_label, b_label, floor in (
        ("ResNet-18 training step, 64 px", cnn_step, "fp32", "bf16 autocast", 1.4),
        ("transformer layer training step", transformer_step, "fp32", "bf16 autocast", 1.4),
        ("ResNet-18 inference, 128 px", cnn_inference, "contiguous", "channels_last", 1.1),
    ):
        a = functools.partial(seconds_per_call, build(False), calls, 2)
        b = functools.partial(seconds_per_call, build(True), calls, 2)
        result = compare(name, a_label, a, b_label, b, rounds)
        result.unit_scale, result.unit = 1e3, "ms/step"
        comparisons.append(result.judge(f">= {floor}x", result.median >= floor))
    return comparisons


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5, help="timed steps per measurement")
    args = parser.parse_args()
    report(run(args.rounds, args.calls))


if __name__ == "__main__":
    main()
