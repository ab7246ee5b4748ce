"""Adapters (peft LoRA, DoRA, (IA)3; BitFit): what trains, merging, peft's format, adapter checkpoints."""

import logging

import peft
import pytest
import timm
import torch
from lightning import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from support import quiet_trainer
from torch import nn

from datamodules import MultiTaskDataModule, SyntheticDataModule
from lightning_modules import Contrastive, Distillation, FeatureExtraction, FineTuning, MultiTask
from lightning_modules.adapters import BitFit, merge_adapter, save_peft_adapter
from lightning_modules.backbones import backbone_preprocessing, create_backbone
from lightning_modules.backbones.timm_models import TimmBackbone
from lightning_modules.base import load_backbone_ckpt
from lightning_modules.frozen_base import FROZEN_BASE

ADAPTERS = {
    "lora": lambda: peft.LoraConfig(r=4, lora_alpha=8),
    "dora": lambda: peft.LoraConfig(r=4, use_dora=True),
    "ia3": lambda: peft.IA3Config(),
    "bitfit": BitFit,
}
MERGEABLE = ["lora", "dora", "ia3"]


def images(num_classes=4, **kwargs):
    return SyntheticDataModule(num_classes=num_classes, preprocessing=backbone_preprocessing("tiny_cnn"), **kwargs)


def text_batch(size=4, length=12):
    generator = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(1000, 2000, (size, length), generator=generator),
        "attention_mask": torch.ones(size, length, dtype=torch.long),
        "labels": torch.arange(size) % 3,
    }


def image_batch(size=4):
    return {"pixel_values": torch.randn(size, 3, 16, 16, generator=torch.Generator().manual_seed(0)),
            "labels": torch.arange(size) % 3}  # fmt: skip


BATCHES = {"tiny_cnn": image_batch, "tiny_bert": text_batch}


def model_with(adapter: str, backbone: str = "tiny_cnn", **kwargs) -> FineTuning:
    return FineTuning(backbone=backbone, pretrained=False, num_classes=3, adapter=ADAPTERS[adapter](), **kwargs)


def train_steps(model, batch, steps=3):
    optimizer = model.configure_optimizers()
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model.compute_loss(batch, "train")["loss"].backward()
        optimizer.step()


@pytest.mark.parametrize("backbone", ["tiny_cnn", "tiny_bert"])
@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_only_the_adapter_the_head_and_bn_per_policy_train(adapter, backbone):
    model = model_with(adapter, backbone)
    start = {k: v.clone() for k, v in model.named_parameters()}
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    train_steps(model, BATCHES[backbone]())
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, start[k])}
    assert changed == trainable  # everything that may train does, nothing else moves
    assert {"head.weight", "head.bias"} <= trainable
    backbone_trained = {k.removeprefix("backbone.") for k in trainable if k.startswith("backbone.")}
    names = {
        "lora": ("lora_A", "lora_B"),
        "dora": ("lora_A", "lora_B", "lora_magnitude_vector"),
        "ia3": ("ia3_l",),
        "bitfit": ("bias",),
    }[adapter]
    norms = {k for k in backbone_trained if k.startswith(("block1.1.", "block2.1."))}  # tiny_cnn's BatchNorms
    assert norms == ({"block1.1.weight", "block1.1.bias", "block2.1.weight", "block2.1.bias"} & backbone_trained)
    assert all(any(n in k for n in names) for k in backbone_trained - norms), backbone_trained
    if backbone == "tiny_cnn":  # pretrained: false -> bn_policy train: BatchNorm trains with the adapter
        assert len(norms) == 4
    share = sum(start[k].numel() for k in trainable) / sum(v.numel() for v in start.values())
    assert 0 < share < 0.5


def test_bn_policy_freeze_keeps_batchnorm_frozen_under_an_adapter():
    model = model_with("lora", bn_policy="freeze")
    assert not any(p.requires_grad for n, p in model.backbone.named_parameters() if ".1." in n)


def test_lora_targets_peft_defaults_on_transformers_and_pointwise_convs_on_efficientnet():
    bert = model_with("lora", "tiny_bert").backbone
    wrapped = {n.rsplit(".", 1)[-1] for n, m in bert.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)}
    assert wrapped == {"query", "value"}  # peft's table for BERT
    efficientnet = TimmBackbone(timm.create_model("tf_efficientnet_lite0", pretrained=False), bert.preprocessing)
    targets = efficientnet.adapter_targets()
    layers = dict(efficientnet.model.named_modules())
    assert targets and all(
        isinstance(layers[n], nn.Conv2d) and layers[n].kernel_size == (1, 1) and layers[n].groups == 1 for n in targets
    )
    assert "classifier" not in targets and not any("conv_dw" in n for n in targets)
    vit = TimmBackbone(timm.create_model("vit_tiny_patch16_224", pretrained=False), bert.preprocessing)
    assert vit.adapter_targets() == [f"blocks.{i}.attn.qkv" for i in range(12)]  # fused qkv projections


def test_explicit_target_modules_override_the_backbone_default():
    adapter = peft.LoraConfig(r=2, target_modules=["block2.0"])
    model = FineTuning(backbone="tiny_cnn", pretrained=False, num_classes=3, adapter=adapter)
    wrapped = [n for n, m in model.backbone.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    assert wrapped == ["block2.0"] and adapter.target_modules == {"block2.0"}  # the caller's config untouched


@pytest.mark.parametrize("backbone", ["tiny_cnn", "tiny_bert"])
@pytest.mark.parametrize("adapter", MERGEABLE)
def test_merging_gives_a_plain_backbone_with_the_same_outputs(adapter, backbone):
    model = model_with(adapter, backbone)
    batch = BATCHES[backbone]()
    train_steps(model, batch)
    model.eval()
    with torch.no_grad():
        before = model(batch)
        merge_adapter(model.backbone)
        after = model(batch)
    assert torch.allclose(before, after, atol=1e-5), (before - after).abs().max()
    plain = create_backbone(backbone, pretrained=False)
    assert set(model.backbone.state_dict()) == set(plain.state_dict())  # loads like any backbone


def test_peft_format_loads_onto_the_plain_transformers_model(tmp_path):
    seed_everything(0)
    model = model_with("lora", "tiny_bert")
    batch = text_batch()
    train_steps(model, batch)
    save_peft_adapter(model.backbone, tmp_path / "adapter")
    seed_everything(0)
    plain = create_backbone("tiny_bert", pretrained=False)  # the same random base, without our module
    loaded = peft.PeftModel.from_pretrained(plain.model, str(tmp_path / "adapter")).eval()
    model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        theirs = loaded(**inputs).last_hidden_state
        ours = model.backbone.model(**inputs).last_hidden_state
    assert torch.allclose(theirs, ours, atol=1e-6)
    with pytest.raises(ValueError, match="BitFit has no peft format"):
        save_peft_adapter(model_with("bitfit").backbone, tmp_path / "bitfit")


# ----------------------------------------------------------------------------------- checkpoints


def fit_with_checkpoint(folder, adapter="lora", seed=0, **kwargs):
    seed_everything(seed)
    model = model_with(adapter, **kwargs)
    checkpoint = ModelCheckpoint(dirpath=folder, filename="run", save_top_k=0, save_last=True)
    quiet_trainer(checkpoint, max_epochs=1, enable_checkpointing=True).fit(model, datamodule=images(3))
    return model, folder / "last.ckpt"


def test_adapter_checkpoints_hold_trained_weights_and_a_fingerprint_not_the_frozen_base(tmp_path):
    model, path = fit_with_checkpoint(tmp_path)
    saved = torch.load(path, weights_only=True)
    frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
    assert frozen and not frozen & set(saved["state_dict"])
    assert {k for k, p in model.named_parameters() if p.requires_grad} <= set(saved["state_dict"])
    assert saved[FROZEN_BASE]["backbone"] == "tiny_cnn" and len(saved[FROZEN_BASE]["sha256"]) == 64
    assert saved[FROZEN_BASE]["tensors"] == len(frozen)
    assert saved["hyper_parameters"]["adapter"]["class_path"].endswith("LoraConfig")  # plain data

    seed_everything(0)  # the same base rebuilt: test restores every weight, frozen ones from the rebuilt base
    same = model_with("lora")
    quiet_trainer().test(same, datamodule=images(3), ckpt_path=str(path))
    for name, value in model.state_dict().items():
        assert torch.equal(value, same.state_dict()[name]), name

    seed_everything(1)  # another random base: refused, naming both fingerprints
    other = model_with("lora")
    with pytest.raises(ValueError, match=r"another frozen base: tiny_cnn \(random init.*sha256 [0-9a-f]{64}\)"):
        quiet_trainer().test(other, datamodule=images(3), ckpt_path=str(path))


def test_an_adapter_checkpoint_is_refused_as_backbone_weights_until_merged(tmp_path):
    _, path = fit_with_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="adapter run's checkpoint.*transfer merge"):
        load_backbone_ckpt(create_backbone("tiny_cnn", pretrained=False), "tiny_cnn", str(path))
    with pytest.raises(ValueError, match="adapter run's checkpoint.*transfer merge"):
        create_backbone("tiny_cnn", pretrained=False, weights=str(path))


def test_trainable_parameters_and_groups_are_reported(caplog):
    model = model_with("lora")
    with caplog.at_level(logging.INFO):
        quiet_trainer(fast_dev_run=1).fit(model, datamodule=images(3))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    text = caplog.text
    assert f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f} %)" in text
    assert "optimizer group head: 51 trained" in text  # 16 features x 3 classes + 3


# ----------------------------------------------------------------------------- every strategy


def test_distillation_trains_a_lora_student_and_refuses_a_teacher_initialised_one(tmp_path):
    seed_everything(0)
    teacher = FineTuning(backbone="tiny_cnn", pretrained=False, num_classes=3)
    torch.save({"hyper_parameters": dict(teacher.hparams), "state_dict": teacher.state_dict()}, tmp_path / "t.ckpt")
    kwargs = {"backbone": "tiny_cnn", "pretrained": False, "num_classes": 3, "teacher_ckpt": str(tmp_path / "t.ckpt")}
    student = Distillation(adapter=peft.LoraConfig(r=2), **kwargs)
    start = {k: v.clone() for k, v in student.backbone.named_parameters()}
    quiet_trainer(max_epochs=1).fit(student, datamodule=images(3))
    for name, value in student.backbone.named_parameters():
        assert torch.equal(value, start[name]) != ("lora_" in name), name
    with pytest.raises(ValueError, match="model.adapter with model.student_init=teacher"):
        Distillation(adapter=peft.LoraConfig(r=2), student_init="teacher", **kwargs)


def test_contrastive_and_multi_task_train_shared_adapters():
    contrastive = Contrastive(backbone="tiny_cnn", pretrained=False, num_classes=4, projector_dims=[16, 8],
                              adapter=peft.LoraConfig(r=2))  # fmt: skip
    views = SyntheticDataModule(num_classes=4, preprocessing=backbone_preprocessing("tiny_cnn"), views=2)
    quiet_trainer(fast_dev_run=2).fit(contrastive, datamodule=views)
    tasks = MultiTaskDataModule(
        {"a": lambda: images(3, num_samples=32), "b": lambda: images(2, num_samples=32, seed=1)}  # type: ignore[dict-item]
    )
    multi = MultiTask(tasks=tasks.task_specs, backbone="tiny_cnn", pretrained=False, adapter=peft.LoraConfig(r=2))
    start = {k: v.clone() for k, v in multi.named_parameters() if "lora_B" in k}
    quiet_trainer(max_epochs=1).fit(multi, datamodule=tasks)
    assert start and all(not torch.equal(v, start[k]) for k, v in multi.named_parameters() if k in start)
    for model in (contrastive, multi):  # no bn_policy outside FineTuning: BatchNorm stays frozen too
        trained = [n for n, p in model.backbone.named_parameters() if p.requires_grad]
        assert trained and all("lora_" in n for n in trained), trained


def test_feature_extraction_refuses_an_adapter():
    with pytest.raises(ValueError, match="FeatureExtraction trains no backbone weights"):
        FeatureExtraction(backbone="tiny_cnn", pretrained=False, num_classes=3, adapter=BitFit())


def test_lora_trains_in_bf16_mixed():
    model = model_with("lora")
    start = {k: v.clone() for k, v in model.named_parameters() if "lora_B" in k}
    quiet_trainer(max_epochs=1, precision="bf16-mixed").fit(model, datamodule=images(3))
    for name, value in model.named_parameters():
        assert value.dtype == torch.float32 and torch.isfinite(value).all(), name
    assert all(not torch.equal(v, start[k]) for k, v in model.named_parameters() if k in start)
