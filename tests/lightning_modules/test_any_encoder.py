"""Any transformers encoder (`hf:<folder>`) and timm's ViT and ConvNeXt (options in `backbone_kwargs`) through
fine-tuning with gradual unfreezing and through the feature cache: tiny randomly initialised configs, offline."""

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning import Callback
from support import GLUE_FIXTURES, quiet_trainer
from transformers import (
    AutoTokenizer,
    BertConfig,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    ModernBertConfig,
    RobertaConfig,
    T5Config,
)

from callbacks.gradual_unfreezing import GradualUnfreezing
from datamodules import GLUEDataModule, SyntheticDataModule
from lightning_modules import FeatureExtraction, FineTuning
from lightning_modules.backbones import backbone_preprocessing, create_backbone
from lightning_modules.backbones.transformers_encoders import layer_stack, minilm_l6_path

BERT_LIKE = dict(
    vocab_size=30522,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    type_vocab_size=2,
)
TOKENS = dict(pad_token_id=0, bos_token_id=101, eos_token_id=102, cls_token_id=101, sep_token_id=102)
ENCODERS = {  # each with MiniLM's vocabulary, so that its local tokenizer fits
    "bert": lambda: BertConfig(**BERT_LIKE),
    "roberta": lambda: RobertaConfig(**BERT_LIKE),
    "distilbert": lambda: DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=2, hidden_dim=64),
    "deberta-v2": lambda: DebertaV2Config(**BERT_LIKE, relative_attention=True, pos_att_type=["p2c", "c2p"]),
    "electra": lambda: ElectraConfig(**BERT_LIKE, embedding_size=16),
    "modernbert": lambda: ModernBertConfig(**BERT_LIKE, **TOKENS, global_attn_every_n_layers=2),
    "t5": lambda: T5Config(vocab_size=30522, d_model=32, num_layers=2, num_heads=2, d_ff=64, d_kv=16),
}
VISION = {
    "vit": (
        "timm:vit_tiny_patch16_224",
        {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2},
    ),
    "convnext": ("timm:convnext_atto", {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]}),
}


@dataclass
class Case:
    backbone: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    text: bool = True

    def model(self, cls: type, data: Any, **options: Any) -> Any:
        return cls(backbone=self.backbone, backbone_kwargs=self.kwargs or None, pretrained=False,
                   num_classes=data.num_classes, metrics=data.metrics, **options)  # fmt: skip

    def data(self, tmp_path: Path) -> Any:
        preprocessing = backbone_preprocessing(self.backbone, self.kwargs)
        if self.text:
            return GLUEDataModule("rte", str(GLUE_FIXTURES), preprocessing=preprocessing, batch_size=2,
                                  cache_dir=str(tmp_path / "tokens"))  # fmt: skip
        return SyntheticDataModule(
            num_classes=3, num_samples=12, batch_size=4, image_size=32, augment=False, preprocessing=preprocessing
        )


@pytest.fixture(scope="module", params=[*ENCODERS, *VISION])
def case(request, tmp_path_factory) -> Case:
    if request.param in VISION:
        return Case(*VISION[request.param], text=False)
    folder = tmp_path_factory.mktemp(request.param)
    ENCODERS[request.param]().save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_l6_path()).save_pretrained(folder)
    return Case(f"hf:{folder}")


def flat(group: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in group]).clone()


class TrainableGroups(Callback):
    def __init__(self):
        self.counts: list[int] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.counts.append(sum(all(p.requires_grad for p in g) for g in module.backbone.layer_groups()))


def test_layer_groups_partition_the_trainable_weights_input_side_first(case):
    backbone = create_backbone(case.backbone, pretrained=False, backbone_kwargs=case.kwargs)
    groups = backbone.layer_groups()
    ids = [id(p) for group in groups for p in group]
    assert len(ids) == len(set(ids)), "a parameter in two groups"
    assert set(ids) == {id(p) for p in backbone.parameters() if p.requires_grad}, "a trainable parameter in no group"
    if case.text:  # the embeddings first, then one group per layer of the stack, then what follows it (if any)
        _, layers = layer_stack(backbone.model)
        assert len(layers) == 2
        assert any(p is backbone.model.get_input_embeddings().weight for p in groups[0])
        for group, layer in zip(groups[1:3], layers, strict=True):
            assert [id(p) for p in group] == [id(p) for p in layer.parameters()]
        assert len(groups) in (3, 4)
    else:
        assert len(groups) >= 3


def test_fine_tuning_with_gradual_unfreezing_trains_every_group_once_it_is_unfrozen(case, tmp_path):
    torch.manual_seed(0)
    data = case.data(tmp_path)
    model = case.model(FineTuning, data, optimizer=partial(torch.optim.AdamW, lr=1e-2))
    groups = model.backbone.layer_groups()
    before = [flat(group) for group in groups]
    recorder = TrainableGroups()
    quiet_trainer(
        GradualUnfreezing(unit="step"), recorder, max_steps=len(groups) + 1, max_epochs=-1, limit_val_batches=0
    ).fit(model, data)
    assert recorder.counts == list(range(len(groups) + 1))  # one more group from the top each step
    assert [not torch.equal(b, flat(g)) for b, g in zip(before, groups, strict=True)] == [True] * len(groups)
    assert torch.isfinite(torch.tensor([p.detach().sum() for p in model.parameters()])).all()


def test_feature_cache_serves_the_backbones_own_features_from_disk_on_the_second_run(case, tmp_path):
    def fit() -> tuple[FeatureExtraction, Any]:
        torch.manual_seed(0)  # the same random weights: the same cache key
        data = case.data(tmp_path)
        model = case.model(FeatureExtraction, data, cache_features=True, feature_cache_dir=str(tmp_path / "features"))
        quiet_trainer(max_epochs=1).fit(model, data)
        return model, data

    first, data = fit()
    assert sorted(data.input_encoder.extracted) == ["train", "val"]
    cached = torch.cat([batch["features"] for batch in data.feature_loader("train")])
    second, again = fit()
    assert again.input_encoder.extracted == []  # both sets read from disk
    assert torch.equal(torch.cat([batch["features"] for batch in again.feature_loader("train")]), cached)

    # What was cached is the backbone's pooled output of each row alone (no padding, no augmentation).
    loader, _ = data.feature_source("train")  # the un-augmented rows in the order their features are cached
    first.backbone.eval()
    rows = []
    for batch in loader:
        for row in range(len(batch["labels"])):
            if case.text:
                length = int(batch["attention_mask"][row].sum())
                rows.append(
                    {
                        k: batch[k][row : row + 1, :length]
                        for k in ("input_ids", "attention_mask", "token_type_ids")
                        if k in batch
                    }
                )
            else:
                rows.append(batch["pixel_values"][row : row + 1])
    assert len(rows) == len(cached)
    with torch.no_grad():
        for alone, features in zip(rows, cached, strict=True):
            torch.testing.assert_close(first.backbone(alone)[0], features, atol=1e-5, rtol=1e-4)
