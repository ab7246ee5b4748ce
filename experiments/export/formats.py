"""ONNX and TorchScript copies of the exported network, each checked against PyTorch on real inputs.

Both hold `GraphModule`: the prepared input tensors in, one output per task (named by task) out, so one graph
serves every head of a multi-task model. ONNX comes from `torch.onnx.export` (the torch.export-based exporter)
with a dynamic batch axis (and sequence axes for text) and is run with onnxruntime; TorchScript from
`torch.jit.trace`. Before the folder is written, each format's outputs on the check batches are compared with
PyTorch eager: the largest absolute difference is recorded in `config.json` and the card, and one above the
tolerance fails the export.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from inference.folder import ONNX, TORCHSCRIPT
from inference.model import ExportedModel


class GraphModule(nn.Module):
    """`network` with positional tensor inputs (in the order of `names`) and a tuple of the tasks' outputs."""

    def __init__(self, network: ExportedModel, names: list[str]):
        super().__init__()
        self.network = network
        self.names = names

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        features = self.network.embed(dict(zip(self.names, tensors, strict=True)))
        return tuple(head(features) for head in self.network.heads.values())


class ParityError(ValueError):
    pass


def export_onnx(
    network: ExportedModel, batches: list[dict[str, Tensor]], folder: Path, tolerance: float, opset: int | None
) -> dict[str, Any]:
    """`model.onnx` in `folder`, checked with onnxruntime on `batches`; returns what the config records."""
    import onnxruntime

    names = list(batches[0])
    graph = GraphModule(network, names).eval()
    batch = torch.export.Dim("batch")
    sequences = {"": torch.export.Dim("sequence"), "pair_": torch.export.Dim("pair_sequence")}
    shapes = tuple(
        {0: batch} if name == "pixel_values" else {0: batch, 1: sequences["pair_" if name.startswith("pair_") else ""]}
        for name in names
    )
    path = folder / ONNX
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on renamed axes and deprecated internals
        program = torch.onnx.export(
            graph,
            tuple(batches[0].values()),
            input_names=names,
            output_names=list(network.heads),
            dynamic_shapes=(shapes,),
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    assert program is not None
    program.save(str(path))
    if opset is not None and _opset(path) != opset:  # the exporter keeps its own opset when it cannot convert
        raise ValueError(
            f"--opset {opset}: the exporter could not convert the graph to it (it made opset {_opset(path)})"
        )
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types
        if "opset" in str(error).lower():
            raise ValueError(
                f"--opset {opset}: onnxruntime {onnxruntime.__version__} cannot run this ONNX opset ({error}); "
                "give a lower --opset"
            ) from None
        raise
    difference = max(
        _difference(
            graph(*batch.values()),
            [torch.from_numpy(out) for out in session.run(None, {k: v.numpy() for k, v in batch.items()})],
        )
        for batch in batches
    )
    _check(difference, tolerance, "ONNX (onnxruntime)")
    return {"file": ONNX, "opset": _opset(path), "max_abs_diff": difference, "tolerance": tolerance, **_counts(batches)}


def export_torchscript(
    network: ExportedModel, batches: list[dict[str, Tensor]], folder: Path, tolerance: float
) -> dict[str, Any]:
    """`model.torchscript.pt` in `folder` (`torch.jit.load` it, also from C++), checked on `batches`."""
    names = list(batches[0])
    graph = GraphModule(network, names).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export; still what libtorch loads
        traced = torch.jit.trace(graph, tuple(batches[0].values()), strict=False)
        traced.save(str(folder / TORCHSCRIPT))
        loaded = torch.jit.load(str(folder / TORCHSCRIPT))
    difference = max(_difference(graph(*batch.values()), loaded(*batch.values())) for batch in batches)
    _check(difference, tolerance, "TorchScript")
    return {"file": TORCHSCRIPT, "max_abs_diff": difference, "tolerance": tolerance, **_counts(batches)}


@torch.no_grad()
def _difference(expected: tuple[Tensor, ...], got: Any) -> float:
    return max(float((e.float() - g.float()).abs().max()) for e, g in zip(expected, got, strict=True))


def _check(difference: float, tolerance: float, name: str) -> None:
    if not difference <= tolerance:
        raise ParityError(
            f"{name} outputs differ from PyTorch's by up to {difference:.3g} on the check inputs, more than the "
            f"tolerance {tolerance:g}: the export is not written (raise --tolerance only if that difference is fine)"
        )


def _counts(batches: list[dict[str, Tensor]]) -> dict[str, Any]:
    """The check inputs (those of the first batch; the others repeat some of them at another batch size)."""
    sizes = [len(next(iter(batch.values()))) for batch in batches]
    return {"inputs": sizes[0], "batch_sizes": sizes}


def _opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
