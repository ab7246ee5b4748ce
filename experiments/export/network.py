"""A trained strategy model -> the exported network (`inference.model.ExportedModel`) and its config."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from inference.folder import FORMAT, FORMAT_VERSION
from inference.model import ExportedModel
from lightning_modules.adapters import merge_adapter
from lightning_modules.backbones.transformers_encoders import TransformersBackbone
from lightning_modules.base import TransferModule


def fold_head(head: nn.Module) -> nn.Linear:
    """A head as the one linear layer it computes at inference: dropout is the identity then, and a BatchNorm1d
    before the linear layer (the contrastive probe's, `affine=False` or not) folds into its weights and bias."""
    layers = [m for m in (head if isinstance(head, nn.Sequential) else [head]) if not isinstance(m, nn.Dropout)]
    if not layers or not isinstance(layers[-1], nn.Linear):
        raise ValueError(f"cannot export the head {head}: it does not end in a linear layer")
    folded = copy.deepcopy(layers[-1]).float()
    for layer in reversed(layers[:-1]):
        if not isinstance(layer, nn.BatchNorm1d) or layer.running_mean is None or layer.running_var is None:
            raise ValueError(f"cannot export the head {head}: {type(layer).__name__} is not foldable into it")
        scale = (layer.running_var.float() + layer.eps).rsqrt()
        shift = -layer.running_mean.float() * scale
        if layer.affine:
            scale, shift = scale * layer.weight.float(), shift * layer.weight.float() + layer.bias.float()
        with torch.no_grad():
            folded.bias.add_(folded.weight @ shift)  # W (s * x + t) + b = (W s) x + (W t + b)
            folded.weight.mul_(scale)
    return folded


def exported_model(model: TransferModule) -> ExportedModel:
    """The backbone (adapter merged into its weights) and every trained head, folded into one linear layer."""
    merge_adapter(model.backbone)
    heads = {name: fold_head(head) for name, head in model.inference_heads().items()}
    return ExportedModel(model.backbone, heads, model.pair_head).eval()


def task_inputs(inputs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A run's `inputs` record per task name (one task: `default`)."""
    return inputs["tasks"] if inputs["type"] == "multi_task" else {"default": inputs}


def export_config(network: ExportedModel, hparams: dict[str, Any], source: str) -> dict[str, Any]:
    """`config.json` of the export (`inference.folder`), from the network and what its run recorded (`inputs`)."""
    inputs = hparams.get("inputs")
    if not isinstance(inputs, dict):
        raise ValueError(
            f"checkpoint {source} does not record how its inputs were made ready (`inputs` in its hyper_parameters, "
            "recorded by `transfer fit` when training starts): checkpoints of older versions cannot be exported; fit "
            "the model again"
        )
    if not network.heads:
        raise ValueError(f"checkpoint {source}: the run trained no head (Contrastive with linear_probe: false)")
    specs = task_inputs(inputs)
    tasks = {}
    for name, head in network.heads.items():
        spec = {k: v for k, v in specs[name].items() if k not in ("labels", "label_range", "tokenizer")}
        tasks[name] = {
            "num_classes": head.out_features,
            "labels": specs[name].get("labels"),
            "label_range": specs[name].get("label_range"),
            "inputs": spec,  # the tokenizer is the export's own copy, `tokenizer/`
        }
    backbone: dict[str, Any] = {"name": hparams["backbone"], "num_features": network.backbone.num_features}
    if isinstance(network.backbone, TransformersBackbone):
        backbone["pooling"] = network.backbone.pooling  # the encoder itself: its config.json in the folder
    elif hparams.get("backbone_kwargs"):
        backbone["kwargs"] = hparams["backbone_kwargs"]  # how the vision network was built (e.g. timm's img_size)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "strategy": hparams["_class_path"].rpartition(".")[2],
        "backbone": backbone,
        "pair_head": network.pair_head,
        "tasks": tasks,
    }
