"""Testing on other data with the same class names: labels mapped by name, unknown names refused."""

import shutil

import pytest
import torch
from image_trees import imagenet_tree
from lightning import seed_everything
from support import TINY_RUN, quiet_trainer

from datamodules import SyntheticDataModule
from experiments.cli import cli_main
from lightning_modules import FineTuning
from lightning_modules.base import label_map


class Renamed(SyntheticDataModule):
    """The synthetic images with other class names (each pattern keeps its label index)."""

    def __init__(self, names, **kwargs):
        super().__init__(num_classes=len(names), **kwargs)
        self.names = names

    @property
    def class_names(self):
        return self.names


def test_label_map_maps_by_name_and_refuses_unknown_names():
    assert label_map(["a", "b", "c"], ["a", "b", "c"]) is None
    assert label_map(None, ["a"]) is None and label_map(["a"], None) is None
    assert label_map(["a", "b", "c"], ["c", "a"]).tolist() == [2, 0]
    with pytest.raises(ValueError, match=r"the test data's classes \['d'\] are not among the 3 classes"):
        label_map(["a", "b", "c"], ["a", "d"])


def test_training_records_the_class_names_and_a_test_on_renamed_data_scores_against_the_names():
    seed_everything(0)  # the model must learn to tell the patterns apart: not left to the initial weights
    trained = ["cat", "dog", "emu", "fox"]
    model = FineTuning(
        backbone="tiny_cnn", pretrained=False, num_classes=4, optimizer=lambda p: torch.optim.Adam(p, 0.01)
    )
    sizes = {"num_samples": 256, "num_test_samples": 32}  # the same sizes draw the same images and patterns
    quiet_trainer(max_epochs=4).fit(model, datamodule=Renamed(trained, **sizes))
    assert model.hparams["class_names"] == trained

    other = Renamed(["fox", "emu", "dog", "cat"], **sizes)  # the same images, the names reversed
    (metrics,) = quiet_trainer().test(model, datamodule=other, verbose=False)
    model.eval()
    hits, unmapped, total = 0, 0, 0
    with torch.no_grad():
        for batch in other.test_dataloader():
            predicted = model(batch).argmax(-1)
            hits += int((predicted == 3 - batch["labels"]).sum())  # data label i is named trained[3 - i]
            unmapped += int((predicted == batch["labels"]).sum())
            total += len(predicted)
    assert unmapped / total > 0.5  # the model tells the patterns apart: the names decide what counts as right
    assert metrics["test/acc"] == pytest.approx(hits / total)

    with pytest.raises(ValueError, match=r"the test data's classes \['gnu'\] are not among"):
        quiet_trainer().test(model, datamodule=Renamed(["cat", "gnu"], num_samples=8, num_test_samples=4))


def test_transfer_test_of_a_checkpoint_on_some_of_its_classes_keeps_the_model_and_maps_the_labels(
    tmp_path, monkeypatch
):
    """The CLI: a model trained on four classes, tested on a folder of two of them in another order."""
    monkeypatch.chdir(tmp_path)
    trained = ["ant", "bee", "cat", "dog"]
    imagenet_tree(tmp_path / "four", {"train": 12, "test": 2}, classes=trained)
    folder = ["--data", "ImageFolderDataModule", "--data.batch_size", "8", "--data.val_fraction", "0.25"]
    cli_main(["fit", *TINY_RUN, *folder, "--data.root", "four", "--trainer.max_epochs", "20",
              "--model.optimizer.init_args.lr", "0.003", "--early_stopping", "null"])  # fmt: skip
    for name in ("dog", "bee"):  # images of the training classes, in a tree whose labels are dog 1, bee 0
        shutil.copytree(tmp_path / "four" / "train" / name, tmp_path / "two" / "test" / name)
    checkpoint = next((tmp_path / "runs").rglob("last.ckpt"))

    cli = cli_main(["test", *TINY_RUN, *folder, "--data.root", "two", "--data.train_split", "null",
                    "--ckpt_path", str(checkpoint), "--trainer.logger", "false"])  # fmt: skip
    assert cli.model.head.out_features == 4  # the model as trained, not rebuilt for the data's two classes
    model, hits, unmapped, total = cli.model.eval(), 0, 0, 0
    with torch.no_grad():
        for batch in cli.datamodule.test_dataloader():
            predicted = model(batch).argmax(-1)
            hits += int((predicted == torch.tensor([1, 3])[batch["labels"]]).sum())  # bee is 1, dog 3
            unmapped += int((predicted == batch["labels"]).sum())
            total += len(predicted)
    assert hits / total > 0.5 > unmapped / total  # it knows the images; the names decide what counts as right
    assert cli.trainer.callback_metrics["test/acc"].item() == pytest.approx(hits / total)
