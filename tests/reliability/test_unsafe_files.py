"""Item 9: nothing we load runs code. Checkpoints we write load with `weights_only=True`; a pickle that would
run code is refused wherever a file is given; class paths in a checkpoint's hyper_parameters are never
imported; archive members that would land outside the target are refused."""

import io
import pickle
import sys
import tarfile

import pytest
import torch

from datamodules.archives import ArchiveError, extract_archive
from experiments.cli import CONFIGS, cli_main
from lightning_modules import Distillation, FineTuning

TINY = [
    "--model.backbone", "tiny_cnn", "--model.pretrained", "false", "--data", "SyntheticDataModule",
    "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
    "-c", str(CONFIGS / "logger" / "csv.yaml"), "--trainer.logger.init_args.save_dir", "runs",
]  # fmt: skip
EVIL_MODULE = "evil_checkpoint_payload"
EVIL = f"{EVIL_MODULE}.build"  # a function of that module


class Payload:
    """Unpickling it opens (creates) the marker file: a stand-in for any code a pickle can run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def evil(in_tmp, monkeypatch):
    """A module on the import path whose import creates a marker; `(marker, module name)`."""
    marker = in_tmp / "IMPORTED"
    (in_tmp / f"{EVIL_MODULE}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nclass Evil:\n    pass\ndef build(*a, **k):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(in_tmp))
    monkeypatch.delitem(sys.modules, EVIL_MODULE, raising=False)
    yield marker
    assert EVIL_MODULE not in sys.modules


def exit_code(args):
    with pytest.raises(SystemExit) as raised:
        cli_main(args)
    return raised.value.code


CONTRASTIVE = ["--data.views", "2", "--checkpoint.monitor", "val/knn_acc", "--early_stopping", "null"]


@pytest.mark.parametrize("strategy", ["FineTuning", "FeatureExtraction", "Contrastive"])
def test_every_checkpoint_a_run_writes_loads_with_weights_only(strategy, in_tmp):
    extra = CONTRASTIVE if strategy == "Contrastive" else []
    cli_main(["fit", "--model", strategy, *TINY, *extra, "--trainer.limit_train_batches", "2"])
    written = sorted(in_tmp.rglob("*.ckpt"))
    assert {p.name for p in written} >= {"last.ckpt"} and len(written) >= 2  # best and last
    for path in written:
        checkpoint = torch.load(path, weights_only=True)
        assert checkpoint["state_dict"] and checkpoint["hyper_parameters"]["backbone"] == "tiny_cnn"


def test_a_distillation_checkpoint_loads_with_weights_only_and_holds_no_teacher(in_tmp):
    teacher = FineTuning(backbone="tiny_cnn", pretrained=False, num_classes=4)
    torch.save({"hyper_parameters": dict(teacher.hparams), "state_dict": teacher.state_dict()}, in_tmp / "t.ckpt")
    cli_main(["fit", "--model", "Distillation", *TINY, "--model.teacher_ckpt", "t.ckpt"])
    for path in (in_tmp / "runs").rglob("*.ckpt"):
        checkpoint = torch.load(path, weights_only=True)
        assert not [k for k in checkpoint["state_dict"] if k.startswith("teacher")]


def write_payload(path, marker, zipped: bool):
    if zipped:  # torch.save's zip format, the payload inside a checkpoint-like dict
        torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": Payload(marker)}, path)
    else:  # a bare pickle stream (torch's legacy format)
        path.write_bytes(pickle.dumps(Payload(marker)))
    return str(path)


@pytest.mark.parametrize("zipped", [True, False], ids=["torch-zip", "raw-pickle"])
@pytest.mark.parametrize(
    ("key", "model"),
    [
        ("--ckpt_path", "FineTuning"),
        ("--model.backbone_ckpt", "FineTuning"),
        ("--model.weights", "FineTuning"),
        ("--model.teacher_ckpt", "Distillation"),
        ("--model.teacher_weights", "Distillation"),
    ],
)
def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(key, model, zipped, in_tmp):
    marker = in_tmp / "PWNED"
    path = write_payload(in_tmp / "evil.ckpt", marker, zipped)
    extra = ["--model.teacher", "tiny_cnn"] if key == "--model.teacher_weights" else []
    assert exit_code(["fit", "--model", model, *TINY, *extra, key, path]) == 2
    assert not marker.exists(), f"{key}: loading ran the payload"
    assert not (in_tmp / "runs").exists()
    with open(path, "rb") as file:  # the payload is live: a plain unpickler runs it
        if zipped:
            torch.load(file, weights_only=False)
        else:
            pickle.load(file)
    assert marker.exists()


def checkpoint_naming(path, evil_hparams: dict) -> str:
    """A real checkpoint of a run whose hyper_parameters were edited to name a class or an instantiator."""
    cli_main(["fit", "--model", "FineTuning", *TINY, "--trainer.limit_train_batches", "1"])
    source = next(p for p in (path.parent / "runs").rglob("last.ckpt"))
    checkpoint = torch.load(source, weights_only=True)
    checkpoint["hyper_parameters"].update(evil_hparams)
    torch.save(checkpoint, path)
    return str(path)


@pytest.mark.parametrize(
    ("hparams", "named"),
    [
        ({"_class_path": f"{EVIL_MODULE}.Evil"}, f"names the class '{EVIL_MODULE}.Evil'"),
        ({"_instantiator": f"{EVIL_MODULE}.build"}, f"names the instantiator '{EVIL_MODULE}.build'"),
        (
            {"optimizer": {"class_path": f"{EVIL_MODULE}.Optimizer"}},
            f"names '{EVIL_MODULE}.Optimizer' at hyper_parameters.optimizer.class_path",
        ),
        (  # a trusted class whose argument is typed as a callable: jsonargparse would import the string
            {"lr_scheduler": {"class_path": "torch.optim.lr_scheduler.LambdaLR", "init_args": {"lr_lambda": EVIL}}},
            f"names '{EVIL}' at hyper_parameters.lr_scheduler.init_args.lr_lambda",
        ),
        (  # the same inside a list (LambdaLR takes one function per group); `this` prints the Zen of Python
            {
                "lr_scheduler": {
                    "class_path": "torch.optim.lr_scheduler.LambdaLR",
                    "init_args": {"lr_lambda": ["this.s"]},
                }
            },
            "names 'this.s' at hyper_parameters.lr_scheduler.init_args.lr_lambda[0]",
        ),
        ({"optimizer": EVIL}, f"names '{EVIL}' at hyper_parameters.optimizer,"),  # a string where a callable is typed
        (  # an imported class, but not from a package a checkpoint may name
            {"adapter": {"class_path": "subprocess.Popen", "init_args": {"args": ["true"]}}},
            "names 'subprocess.Popen' at hyper_parameters.adapter.class_path",
        ),
        (  # a trusted class whose arguments carry a payload of their own
            {
                "adapter": {
                    "class_path": "peft.LoraConfig",
                    "init_args": {"r": 2, "layers_pattern": {"class_path": EVIL}},
                }
            },
            f"names '{EVIL}' at hyper_parameters.adapter.init_args.layers_pattern.class_path",
        ),
    ],
    ids=[
        "class_path",
        "instantiator",
        "nested-class_path",
        "callable-argument",
        "callable-in-list",
        "string-as-callable",
        "untrusted-class",
        "nested-init_args",
    ],
)
def test_class_paths_in_a_checkpoint_are_never_imported(hparams, named, evil, in_tmp, capsys):
    path = checkpoint_naming(in_tmp / "edited.ckpt", hparams)
    capsys.readouterr()
    assert exit_code(["fit", "--model", "FineTuning", *TINY, "--ckpt_path", path]) == 2
    assert named in capsys.readouterr().err
    assert not evil.exists()
    # Read as weights by our own keys, only tensors and the backbone name are used: nothing imported either.
    student = Distillation(backbone="tiny_cnn", pretrained=False, num_classes=4, teacher_ckpt=path)
    FineTuning(backbone="tiny_cnn", pretrained=False, num_classes=4, backbone_ckpt=path)
    assert torch.equal(student.teacher.head.weight, torch.load(path, weights_only=True)["state_dict"]["head.weight"])
    if {"_class_path", "_instantiator"} & set(hparams):  # Lightning's own guard; nested values get past it
        with pytest.raises(ValueError, match="blocked to prevent arbitrary code execution"):
            FineTuning.load_from_checkpoint(path, weights_only=True)
    assert not evil.exists()
    assert "this" not in sys.modules


def tar_with(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def member(name, data=b"x", kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


@pytest.mark.parametrize(
    "members",
    [
        lambda out: [member("../outside/escape.txt")],
        lambda out: [member(f"{out}/escape.txt")],
        lambda out: [member("data/link", kind=tarfile.SYMTYPE, link="../../outside"), member("data/link/escape.txt")],
        lambda out: [member("data/abs", kind=tarfile.SYMTYPE, link=str(out)), member("data/abs/escape.txt")],
        lambda out: [member("data/hard", kind=tarfile.LNKTYPE, link=f"{out}/escape.txt")],
    ],
    ids=["dotdot", "absolute", "symlink-dir-then-write", "absolute-symlink", "hardlink-out"],
)
def test_archive_members_out_of_the_target_are_refused_and_nothing_is_written_outside(members, tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_CACHE_DIR", str(tmp_path / "cache"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "escape.txt").write_bytes(b"original")  # what a hard link or an overwrite would reach
    archive = tar_with(tmp_path / "evil.tar.gz", [member("data/fine.txt"), *members(outside)])
    before = set(tmp_path.rglob("*"))
    with pytest.raises(ArchiveError, match="evil.tar.gz"):
        extract_archive(archive)
    assert set(tmp_path.rglob("*")) - before <= {tmp_path / "cache", tmp_path / "cache" / "data"}
    assert (outside / "escape.txt").read_bytes() == b"original" and list(outside.iterdir()) == [outside / "escape.txt"]


def test_a_checkpoint_of_the_users_own_strategy_loads_when_their_command_names_it(in_tmp, monkeypatch, capsys):
    """The class a checkpoint names is imported only when the user's own config names it too."""
    (in_tmp / "my_strategies.py").write_text(
        "from lightning_modules import FineTuning\nclass MyFineTuning(FineTuning):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(in_tmp))
    monkeypatch.delitem(sys.modules, "my_strategies", raising=False)
    mine = ["--model", "my_strategies.MyFineTuning", *TINY]
    cli_main(["fit", *mine, "--checkpoint.dirpath", "checkpoints"])
    cli_main(["test", *mine, "--ckpt_path", "checkpoints/last.ckpt"])
    assert "test/acc" in capsys.readouterr().out
    assert exit_code(["test", "--model", "FineTuning", *TINY, "--ckpt_path", "checkpoints/last.ckpt"]) == 2
    assert "names the class 'my_strategies.MyFineTuning'" in capsys.readouterr().err
