"""Distillation: the teacher stays frozen and outside the student, cached logits equal live ones, views."""

import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning import Callback, LightningDataModule, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from shared_files import require_shared
from support import GLUE_FIXTURES, quiet_trainer

from datamodules import CIFAR10DataModule, GLUEDataModule, SyntheticDataModule
from datamodules.transforms import image_transform
from lightning_modules import Distillation, FineTuning, TransferModule
from lightning_modules.backbones import backbone_preprocessing
from lightning_modules.backbones.cifar_resnet import CifarResNet
from lightning_modules.losses import kd_loss
from lightning_modules.teachers import Teacher


def data(backbone: str = "tiny_mlp", **kwargs) -> SyntheticDataModule:
    return SyntheticDataModule(num_classes=4, preprocessing=backbone_preprocessing(backbone), **kwargs)


def save_module(module: TransferModule, path: Path) -> str:
    """What a run's checkpoint holds for a teacher: hyper_parameters and state_dict."""
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> str:
    """A tiny_cnn classifier trained one epoch by a real Trainer: a checkpoint of one of our own runs."""
    folder = tmp_path_factory.mktemp("teacher")
    seed_everything(0)
    checkpoint = ModelCheckpoint(dirpath=folder, filename="teacher")
    trainer = quiet_trainer(checkpoint, max_epochs=1, enable_checkpointing=True)
    trainer.fit(FineTuning(backbone="tiny_cnn", pretrained=False, num_classes=4), datamodule=data("tiny_cnn"))
    return str(folder / "teacher.ckpt")


def student(teacher_ckpt: str, **kwargs) -> Distillation:
    return Distillation(**({"backbone": "tiny_mlp", "pretrained": False, "num_classes": 4} | kwargs),
                        teacher_ckpt=teacher_ckpt)  # fmt: skip


class TeacherProbe(Callback):
    """At every training step: the teacher's mode, and its live logits beside the ones the student is taught."""

    def __init__(self):
        self.teacher_training, self.live, self.taught = [], [], []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.teacher_training.append(module.teacher.training)
        with torch.no_grad():
            self.live.append(module.teacher(batch["pixel_values"]))
        self.taught.append(module.teacher_outputs(batch))


# --- the teacher is frozen, in eval mode, out of the optimizer, out of the checkpoints -----------------


def test_teacher_is_frozen_eval_out_of_optimizer_and_out_of_checkpoints(teacher_ckpt, tmp_path):
    model = student(teacher_ckpt)
    teacher = model.teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    probe, checkpoint = TeacherProbe(), ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = quiet_trainer(probe, checkpoint, max_epochs=2, enable_checkpointing=True)
    trainer.fit(model, datamodule=data())

    assert not any(p.requires_grad for p in teacher.parameters())
    assert probe.teacher_training and not any(probe.teacher_training) and not teacher.training
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items()), "teacher weights or BN moved"
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.parameters()}
    assert not optimized & {id(p) for p in teacher.parameters()}
    assert not [name for name, _ in model.named_modules() if "teacher" in name]

    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert set(saved["state_dict"]) == set(model.state_dict()) == set(student(teacher_ckpt).state_dict())
    assert not [k for k in saved["state_dict"] if "teacher" in k]
    loaded = Distillation.load_from_checkpoint(tmp_path / "last.ckpt", weights_only=True)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    resumed = quiet_trainer(max_epochs=3)
    resumed.fit(student(teacher_ckpt), datamodule=data(), ckpt_path=tmp_path / "last.ckpt", weights_only=True)
    assert resumed.current_epoch == 3


def test_a_student_checkpoint_can_teach_in_turn(teacher_ckpt, tmp_path):
    model = student(teacher_ckpt)
    trainer = quiet_trainer(ModelCheckpoint(dirpath=tmp_path, filename="s"), max_epochs=1, enable_checkpointing=True)
    trainer.fit(model, datamodule=data())
    second = student(str(tmp_path / "s.ckpt"), backbone="tiny_cnn")
    assert type(second.teacher.backbone).__name__ == "TinyMLP"
    x = torch.randn(3, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(second.teacher(x), model({"pixel_values": x}))


# --- the loss ---------------------------------------------------------------------------------------


def test_loss_mixes_kd_and_cross_entropy_and_logs_both(teacher_ckpt):
    model = student(teacher_ckpt, alpha=0.7, temperature=3.0)
    batch = next(iter(data().train_dataloader()))
    out = model.compute_loss(batch, "train")
    with torch.no_grad():
        taught = model.teacher(batch["pixel_values"])
    logits = model(batch)
    assert torch.allclose(out["kd_loss"], kd_loss(logits, taught, 3.0))
    assert torch.allclose(out["ce_loss"], F.cross_entropy(logits, batch["labels"]))
    assert torch.allclose(out["loss"], 0.7 * out["kd_loss"] + 0.3 * out["ce_loss"])
    assert set(model.compute_loss(batch, "val")) == {"loss", "logits"}  # evaluation: the task loss alone

    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(model, datamodule=data())
    assert {"train/loss", "train/kd_loss", "train/ce_loss", "val/loss", "val/acc"} <= set(trainer.logged_metrics)


def test_seeded_losses_are_pinned(teacher_ckpt):
    """Tiny models, fixed seed: the first steps' losses are known numbers (a change means the maths moved)."""

    class Losses(Callback):
        def __init__(self):
            self.values: list[float] = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.values.append(round(outputs["loss"].item(), 4))

    seed_everything(3)
    recorder = Losses()
    quiet_trainer(recorder, max_epochs=1, deterministic=True).fit(
        student(teacher_ckpt, alpha=0.5, temperature=2.0), datamodule=data(augment=False)
    )
    assert recorder.values == pytest.approx([0.7239, 0.6952, 0.667], abs=2e-4)


def test_alpha_zero_never_runs_the_teacher_and_builds_the_same_student_as_without_kd(teacher_ckpt, monkeypatch):
    seed_everything(5)
    plain = FineTuning(backbone="tiny_mlp", pretrained=False, num_classes=4)
    seed_everything(5)
    model = student(teacher_ckpt, alpha=0.0)
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in model.state_dict().items())
    monkeypatch.setattr(Teacher, "forward", lambda *_: pytest.fail("the teacher ran with alpha=0"))
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(model, datamodule=data())
    assert "train/ce_loss" in trainer.logged_metrics and "train/kd_loss" not in trainer.logged_metrics


# --- cached teacher logits --------------------------------------------------------------------------


def test_cached_logits_equal_the_live_teacher_and_are_reused_from_disk(teacher_ckpt, tmp_path):
    probe = TeacherProbe()
    model = student(teacher_ckpt, teacher_cache=True, teacher_cache_dir=str(tmp_path))
    quiet_trainer(probe, max_epochs=2).fit(model, datamodule=data(augment=False))
    assert model.teacher_encoder.extracted == ["train"] and len(list(tmp_path.glob("*.pt"))) == 1
    assert len(probe.taught) == 6  # every shuffled step of both epochs, looked up by index
    for live, taught in zip(probe.live, probe.taught, strict=True):
        assert torch.allclose(live, taught, atol=1e-5)
    assert "teacher_logits" not in model.state_dict()

    again = student(teacher_ckpt, teacher_cache=True, teacher_cache_dir=str(tmp_path))
    quiet_trainer(max_epochs=1).fit(again, datamodule=data(augment=False))
    assert again.teacher_encoder.extracted == [] and torch.equal(again.teacher_logits, model.teacher_logits)
    other_data = student(teacher_ckpt, teacher_cache=True, teacher_cache_dir=str(tmp_path))
    quiet_trainer(max_epochs=1).fit(other_data, datamodule=data(augment=False, seed=1))
    assert other_data.teacher_encoder.extracted == ["train"]  # another data fingerprint, another key


def test_cache_with_augmentation_stops_naming_both_keys(teacher_ckpt):
    model = student(teacher_ckpt, teacher_cache=True)
    with pytest.raises(ValueError, match=r"model.teacher_cache=true with data.augment=true.*Beyer"):
        quiet_trainer(max_epochs=1).fit(model, datamodule=data(augment=True))


def test_cache_needs_a_feature_source(teacher_ckpt):
    class Plain(LightningDataModule):
        def train_dataloader(self):
            return data().train_dataloader()

    with pytest.raises(ValueError, match="model.teacher_cache needs a datamodule with feature_source"):
        quiet_trainer(max_epochs=1).fit(student(teacher_ckpt, teacher_cache=True), datamodule=Plain())


# --- teachers and views -----------------------------------------------------------------------------


def test_registry_teacher_uses_its_pretrained_classifier(tmp_path):
    weights = tmp_path / "resnet56.th"
    torch.save({"state_dict": {f"module.{k}": v for k, v in CifarResNet(56).state_dict().items()}}, weights)
    model = Distillation(backbone="cifar_resnet20", pretrained=False, teacher="cifar_resnet56",
                         teacher_weights=str(weights))  # fmt: skip
    assert model.teacher.head is model.teacher.backbone.pretrained_head()
    assert model.teacher.backbone.depth == 56 and model.backbone.depth == 20
    x = torch.randn(2, 3, 32, 32)
    assert model.teacher.view(x) is x  # same preprocessing: the student's batch as it is
    with torch.no_grad():
        assert torch.allclose(model.teacher(x), model.teacher.backbone.linear(model.teacher.backbone(x)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "give exactly one of model.teacher"),
        ({"teacher": "cifar_resnet56", "teacher_ckpt": "x.ckpt"}, "give exactly one of model.teacher"),
        ({"teacher_ckpt": "/no/such/teacher.ckpt"}, "model.teacher_ckpt: /no/such/teacher.ckpt does not exist"),
        ({"teacher": "tiny_cnn"}, "model.teacher='tiny_cnn' needs its pretrained weights.*teacher_weights"),
        ({"alpha": 1.5}, r"model.alpha must be in \[0, 1\]"),
        ({"temperature": 0.0}, "model.temperature must be > 0"),
        ({"student_layers": [0]}, "model.student_layers needs a transformers backbone"),
    ],
)
def test_bad_teacher_settings_name_the_key(kwargs, message, teacher_ckpt):
    if "student_layers" in kwargs or "alpha" in kwargs or "temperature" in kwargs:
        kwargs = {"teacher_ckpt": teacher_ckpt} | kwargs
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        Distillation(backbone="tiny_mlp", pretrained=False, num_classes=4, **kwargs)


def test_teacher_must_match_the_task_and_the_input_kind(teacher_ckpt, tmp_path):
    with pytest.raises(ValueError, match="teacher .* has 4 outputs but model.num_classes is 3"):
        student(teacher_ckpt, num_classes=3)
    with pytest.raises(ValueError, match="must both take images or share a tokenizer"):
        student(teacher_ckpt, backbone="tiny_bert")
    weights = tmp_path / "tiny.pt"
    torch.save(TransferModule(backbone="tiny_cnn", pretrained=False).backbone.state_dict(), weights)
    with pytest.raises(ValueError, match="model.teacher='tiny_cnn' has no pretrained classifier.*teacher_ckpt"):
        Distillation(backbone="tiny_mlp", pretrained=False, teacher="tiny_cnn", teacher_weights=str(weights))


def test_teacher_gets_its_own_resolution_and_normalisation_of_the_same_images(teacher_ckpt):
    """Student cifar_resnet20 (32 px, ImageNet mean/std) taught by tiny_cnn (16 px, mean = std = 0.5): the
    teacher's view of the student's batch is what its own preprocessing makes of the same images."""
    model = Distillation(backbone="cifar_resnet20", pretrained=False, num_classes=4, teacher_ckpt=teacher_ckpt)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    student_tf = image_transform(backbone_preprocessing("cifar_resnet20"), 32, train=False, augment=False)
    teacher_tf = image_transform(backbone_preprocessing("tiny_cnn"), 16, train=False, augment=False)
    student_view = torch.stack([student_tf(image) for image in images])
    expected = torch.stack([teacher_tf(image) for image in images])
    assert torch.allclose(model.teacher.view(student_view), expected, atol=0.02)  # uint8 rounding apart

    sized = Distillation(backbone="cifar_resnet20", pretrained=False, num_classes=4, teacher_ckpt=teacher_ckpt,
                         teacher_image_size=24)  # fmt: skip
    assert sized.teacher.view(student_view).shape[-2:] == (24, 24)
    trainer = quiet_trainer(fast_dev_run=2)
    trainer.fit(model, datamodule=data("cifar_resnet20", image_size=32, batch_size=4))
    assert torch.isfinite(trainer.logged_metrics["train/kd_loss"])


def test_kd_under_bf16_mixed_is_finite(teacher_ckpt):
    model = student(teacher_ckpt)
    trainer = quiet_trainer(fast_dev_run=2, precision="bf16-mixed")
    trainer.fit(model, datamodule=data())
    assert trainer.logged_metrics["train/kd_loss"].dtype == torch.float32
    assert torch.isfinite(trainer.logged_metrics["train/loss"])


# --- text ---------------------------------------------------------------------------------------------


def glue(task: str, tmp_path: Path) -> GLUEDataModule:
    preprocessing = backbone_preprocessing("tiny_bert")
    return GLUEDataModule(task, str(GLUE_FIXTURES), preprocessing=preprocessing, cache_dir=str(tmp_path / "tok"),
                          batch_size=4)  # fmt: skip


def test_keep_layers_selects_encoder_layers():
    backbone = TransferModule(backbone="tiny_bert", pretrained=False).backbone
    second = {k: v.clone() for k, v in backbone.model.encoder.layer[1].state_dict().items()}
    backbone.keep_layers([1])
    assert len(backbone.model.encoder.layer) == 1 == backbone.model.config.num_hidden_layers
    assert all(torch.equal(second[k], v) for k, v in backbone.model.encoder.layer[0].state_dict().items())
    assert len(backbone.layer_groups()) == 2  # embeddings + one layer
    for bad in ([], [1, 0], [0, 0], [2]):
        with pytest.raises(ValueError, match="distinct increasing indices in \\[0, 1\\)"):
            backbone.keep_layers(bad)


def test_distilbert_style_student_takes_every_other_layer_of_a_six_layer_teacher(tmp_path):
    teacher = TransferModule(backbone="minilm_l6", num_classes=2)
    model = Distillation(backbone="minilm_l6", num_classes=2, teacher_ckpt=save_module(teacher, tmp_path / "t.ckpt"),
                         student_layers=[0, 2, 4], student_init="teacher")  # fmt: skip
    layers, source = model.backbone.model.encoder.layer, teacher.backbone.model.encoder.layer
    assert len(layers) == 3 and model.backbone.model.config.num_hidden_layers == 3 and len(source) == 6
    for mine, theirs in zip(layers, [source[0], source[2], source[4]], strict=True):
        assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in mine.state_dict().items())
    embeddings = teacher.backbone.model.embeddings.state_dict()
    assert all(torch.equal(v, embeddings[k]) for k, v in model.backbone.model.embeddings.state_dict().items())
    assert torch.equal(model.head.weight, teacher.head.weight)
    assert len(model.teacher.backbone.model.encoder.layer) == 6  # the teacher keeps all of its layers
    with pytest.raises(ValueError, match="model.student_init=teacher: model.backbone tiny_bert is not the teacher"):
        Distillation(backbone="tiny_bert", pretrained=False, num_classes=2, student_init="teacher",
                     teacher_ckpt=str(tmp_path / "t.ckpt"))  # fmt: skip


@pytest.mark.parametrize("task", ["rte", "stsb"])
def test_text_distillation_with_cached_teacher_logits(task, tmp_path):
    dm = glue(task, tmp_path)
    teacher = TransferModule(backbone="tiny_bert", pretrained=False, num_classes=dm.num_classes)
    model = Distillation(
        backbone="tiny_bert",
        pretrained=False,
        num_classes=dm.num_classes,
        metrics=dm.metrics,
        teacher_ckpt=save_module(teacher, tmp_path / "t.ckpt"),
        student_layers=[1],
        student_init="teacher",
        teacher_cache=True,
        teacher_cache_dir=str(tmp_path / "logits"),
    )
    taught, live = [], []

    class Probe(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            taught.append(module.teacher_outputs(batch))
            with torch.no_grad():
                live.append(module.teacher(batch))

    trainer = quiet_trainer(Probe(), max_epochs=1)
    trainer.fit(model, datamodule=dm)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(taught, live, strict=True)) and taught
    task_loss = "train/mse_loss" if task == "stsb" else "train/ce_loss"
    assert {"train/kd_loss", task_loss} <= set(trainer.logged_metrics)


# --- the real teacher ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_cifar_resnet56_teacher_on_real_cifar10_test_images(cifar_resnet_weights, shared, monkeypatch):
    archive = shared / "data" / "cifar10-jpeg.tar.gz"
    require_shared(archive, "the CIFAR-10 JPEG archive")
    monkeypatch.setenv("TRANSFER_WEIGHTS_DIR", str(cifar_resnet_weights))
    started = time.perf_counter()
    model = Distillation(backbone="cifar_resnet20", pretrained=False, num_classes=10, teacher="cifar_resnet56")
    dm = CIFAR10DataModule(root=str(archive), test_per_class=30, num_workers=0, batch_size=100,
                           preprocessing=backbone_preprocessing("cifar_resnet20"))  # fmt: skip
    correct = total = 0
    with torch.no_grad():
        for batch in dm.test_dataloader():
            correct += (model.teacher(batch["pixel_values"]).argmax(1) == batch["labels"]).sum().item()
            total += len(batch["labels"])
    print(f"cifar_resnet56 on {total} JPEG test images: {correct / total:.3f} ({time.perf_counter() - started:.0f} s)")
    assert total == 300 and 0.72 <= correct / total <= 0.92  # about 81-83 % on the JPEG copy (shared/README)
