"""Benchmark 9: an exported model's inference with onnxruntime (CPU) against PyTorch eager, same batch.

The network `transfer export` writes (`inference.model.ExportedModel`: pretrained backbone and a linear head)
for EfficientNet-Lite0 on 32 images at 128 px and MiniLM-L6 on 32 sentences of 128 tokens, exported to ONNX by
`experiments.export.formats.export_onnx` (which first checks its outputs against PyTorch's on the batch). Each
round times one forward of the batch: `torch.inference_mode()` eager, against `InferenceSession.run` with
onnxruntime's default CPU settings; both use every core.

    python benchmarks/onnx_inference.py [--rounds 5] [--calls 3]
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from harness import Comparison, arguments, compare, report, seconds_per_call
from torch import nn

from experiments.export.formats import GraphModule, export_onnx
from inference.model import ExportedModel
from lightning_modules.backbones import create_backbone

BACKBONES = {"efficientnet_lite0": "EfficientNet-Lite0, 32 x 128 px", "minilm_l6": "MiniLM-L6, 32 x 128 tokens"}


def batch(backbone: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    if backbone == "minilm_l6":
        ids = torch.randint(1000, 20000, (32, 128), generator=generator)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    return {"pixel_values": torch.randn(32, 3, 128, 128, generator=generator)}


def forwards(backbone: str) -> tuple[Callable[[], object], Callable[[], object], dict[str, Any]]:
    """One batch's forward in PyTorch eager and in onnxruntime, and what the ONNX export's check measured."""
    import onnxruntime

    torch.manual_seed(0)
    features = create_backbone(backbone, pretrained=True)
    network = ExportedModel(features, {"default": nn.Linear(features.num_features, 10)}).eval()
    inputs = batch(backbone)
    with tempfile.TemporaryDirectory() as folder:
        checked = export_onnx(network, [inputs], Path(folder), tolerance=1e-3, opset=None)
        session = onnxruntime.InferenceSession(str(Path(folder) / "model.onnx"), providers=["CPUExecutionProvider"])
    graph = GraphModule(network, list(inputs)).eval()
    feed = {name: tensor.numpy() for name, tensor in inputs.items()}

    @torch.inference_mode()
    def eager() -> object:
        return graph(*inputs.values())

    return eager, lambda: session.run(None, feed), checked


def run(rounds: int = 5, calls: int = 3) -> list[Comparison]:
    comparisons = []
    for backbone, shape in BACKBONES.items():
        eager, onnx, checked = forwards(backbone)
        a = functools.partial(seconds_per_call, eager, calls, 1)
        b = functools.partial(seconds_per_call, onnx, calls, 1)
        result = compare(f"{shape}: onnxruntime vs PyTorch eager inference", "eager", a, "onnxruntime", b, rounds)
        result.unit_scale, result.unit = 1e3, "ms/batch"
        note = f"ONNX opset {checked['opset']}, outputs within {checked['max_abs_diff']:.1e} of PyTorch's"
        comparisons.append(result.judge("reported", None, note))
    return comparisons


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3, help="timed batches per measurement")
    args = parser.parse_args()
    report(run(args.rounds, args.calls))


if __name__ == "__main__":
    main()
