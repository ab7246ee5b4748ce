"""A pickle planted in a cache (features, teacher logits, token ids) is never run: it is read with
`weights_only=True`, refused, and the cache is computed again; and `--ckpt_path` of every subcommand refuses one."""

import pickle

import pytest
import torch
from support import GLUE_FIXTURES, TINY_RUN, quiet_trainer

from datamodules import GLUEDataModule, SyntheticDataModule
from experiments.cli import cli_main
from lightning_modules import Distillation, FeatureExtraction, FineTuning
from lightning_modules.backbones import backbone_preprocessing


class Payload:
    """Unpickling it creates the marker file: a stand-in for any code a pickle can run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(folder, marker, zipped: bool) -> int:
    """Replace every cache file under `folder` by a payload; how many there were."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        if zipped:
            torch.save({"features": Payload(marker)}, path)
        else:
            path.write_bytes(pickle.dumps(Payload(marker)))
    return len(files)


def images():
    tiny = backbone_preprocessing("tiny_cnn")  # no augmentation: cached logits are of the images as they are
    return SyntheticDataModule(num_classes=3, num_samples=24, batch_size=8, preprocessing=tiny, augment=False)


def probe(cache, teacher):
    return FeatureExtraction(backbone="tiny_cnn", pretrained=False, num_classes=3, cache_features=True,
                             feature_cache_dir=str(cache))  # fmt: skip


def distillation(cache, teacher):
    return Distillation(backbone="tiny_cnn", pretrained=False, num_classes=3, teacher_ckpt=str(teacher),
                        teacher_cache=True, teacher_cache_dir=str(cache))  # fmt: skip


@pytest.fixture
def teacher(tmp_path):
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(FineTuning(backbone="tiny_cnn", pretrained=False, num_classes=3), datamodule=images())
    trainer.save_checkpoint(tmp_path / "teacher.ckpt")
    return tmp_path / "teacher.ckpt"


@pytest.mark.parametrize("zipped", [True, False], ids=["torch-zip", "raw-pickle"])
@pytest.mark.parametrize("make", [probe, distillation], ids=["feature-cache", "teacher-logit-cache"])
def test_a_pickle_planted_in_a_feature_cache_never_runs(make, zipped, teacher, tmp_path):
    marker, cache = tmp_path / "PWNED", tmp_path / "cache"
    torch.manual_seed(0)
    first = make(cache, teacher)
    quiet_trainer(max_epochs=1).fit(first, datamodule=images())
    assert plant(cache, marker, zipped) >= 1
    torch.manual_seed(0)
    again = make(cache, teacher)
    quiet_trainer(max_epochs=1).fit(again, datamodule=images())  # computed again from the data
    assert not marker.exists()
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True))
    with open(next(p for p in cache.rglob("*") if p.is_file()), "rb") as file:
        torch.load(file, weights_only=True)  # overwritten by real tensors


@pytest.mark.parametrize("zipped", [True, False], ids=["torch-zip", "raw-pickle"])
def test_a_pickle_planted_in_the_tokenization_cache_never_runs(zipped, tmp_path):
    marker, cache = tmp_path / "PWNED", tmp_path / "tokens"

    def tokenized():
        data = GLUEDataModule(task="rte", root=str(GLUE_FIXTURES), preprocessing=backbone_preprocessing("tiny_bert"),
                              cache_dir=str(cache))  # fmt: skip
        data.setup("fit")
        return [dataset.parts[""]["input_ids"] for dataset in data.split_datasets("train")]

    first = tokenized()
    assert plant(cache, marker, zipped) >= 1
    assert [torch.equal(a, b) for a, b in zip(tokenized(), first, strict=True)] == [True] * len(first)
    assert not marker.exists()


@pytest.mark.parametrize("command", ["test", "validate", "predict"])
def test_every_subcommand_refuses_a_code_running_checkpoint(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": Payload(marker)}, tmp_path / "evil.ckpt")
    with pytest.raises(SystemExit) as raised:
        cli_main([command, *TINY_RUN, "--ckpt_path", "evil.ckpt"])
    assert raised.value.code == 2 and "ckpt_path: cannot read evil.ckpt" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "runs").exists()
