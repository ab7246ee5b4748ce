"""Benchmark 7: `torch.compile` of the backbone (`--speed.compile true`) on a training step.

ResNet-20 at 32 px, batch 128, SGD; the eager network against the same network compiled in place (as
`callbacks.Speed` does). Reported: the steady-state speed-up per step (interleaved rounds), the one-off
compilation time (the first compiled step minus an eager one) and the break-even point: how many steps
the compilation takes to pay for itself (never, where compiled steps are not faster).

    python benchmarks/compile.py [--rounds 5 --steps 10]
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from harness import Comparison, arguments, measure, report, seconds_per_call
from torch import nn

from lightning_modules.backbones import create_backbone


def training_step(compiled: bool) -> Callable[[], None]:
    torch.manual_seed(0)
    backbone = create_backbone("cifar_resnet20", pretrained=False)
    if compiled:
        backbone.compile()
    network = nn.Sequential(backbone, nn.Linear(backbone.num_features, 10)).train()
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9)
    images, labels = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))

    def step() -> None:
        loss = nn.functional.cross_entropy(network(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def run(rounds: int = 5, steps: int = 10) -> list[Comparison]:
    eager, compiled = training_step(False), training_step(True)
    first_eager = seconds_per_call(eager)
    first_compiled = seconds_per_call(compiled)  # compiles forward and backward
    for step in (eager, compiled):  # warm both up (recompilations, allocator)
        seconds_per_call(step, 3)
    samples = measure(
        {
            "eager": functools.partial(seconds_per_call, eager, steps),
            "compiled": functools.partial(seconds_per_call, compiled, steps),
        },
        rounds,
    )
    result = Comparison("ResNet-20 training step, torch.compile", "eager", "compiled", samples, unit_scale=1e3)
    result.unit = "ms/step"
    compile_seconds = first_compiled - first_eager
    saved = (sorted(a - b for a, b in zip(result.a, result.b, strict=True))[len(result.a) // 2]) or 0.0
    break_even = f"{compile_seconds / saved:,.0f} steps" if saved > 0 else "never (no faster per step)"
    note = f"compilation {compile_seconds:.1f} s (first compiled step); break-even after {break_even}"
    return [result.judge("reported, with compile time and break-even", None, note)]


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    args = parser.parse_args()
    report(run(args.rounds, args.steps))


if __name__ == "__main__":
    main()
