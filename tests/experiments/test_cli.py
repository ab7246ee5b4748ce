import json
from pathlib import Path

import pytest
import torch
import yaml
from config_checks import check_monitors, check_multi_task, stand_in_teacher
from image_trees import imagenet_tree
from support import GLUE_FIXTURES, TINY_GLUE

from datamodules.imagenet_classes import IMAGENETTE
from experiments.cli import CONFIGS, cli_main

GLUE_TASK_FILES = [CONFIGS / "glue" / "rte.yaml", CONFIGS / "glue" / "stsb.yaml"]
STACKED = {  # pieces that stack on experiment files -> the files to check them on
    CONFIGS / "glue" / "feature_extraction.yaml": GLUE_TASK_FILES,
    CONFIGS / "glue" / "lora.yaml": GLUE_TASK_FILES,
    CONFIGS / "glue" / "bitfit.yaml": GLUE_TASK_FILES,
    CONFIGS / "glue" / "bi_encoder.yaml": GLUE_TASK_FILES,
    CONFIGS / "cifar10" / "lora.yaml": [CONFIGS / "cifar10" / "fine_tuning.yaml"],
}
EXPERIMENTS = sorted(
    p for p in CONFIGS.glob("*/*.yaml") if p.parent.name not in ("trainer", "logger", "model") and p not in STACKED
)
METHOD_TASKS = {"simcse": "sst2"}  # GLUE experiment files named for their method, not their task
PIECES = sorted(CONFIGS.glob("trainer/*.yaml")) + sorted(CONFIGS.glob("logger/*.yaml"))
TINY = [
    "--model",
    "FineTuning",
    "--model.backbone",
    "tiny_cnn",
    "--model.pretrained",
    "false",
    "--data",
    "SyntheticDataModule",
    "--trainer.max_epochs",
    "2",
]


def exit_code(args, capsys=None):
    with pytest.raises(SystemExit) as raised:
        cli_main(args)
    return raised.value.code


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def csv_logger(save_dir):
    return ["-c", str(CONFIGS / "logger" / "csv.yaml"), "--trainer.logger.init_args.save_dir", str(save_dir)]


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_experiment_config_parses_through_the_real_cli(config, capsys):
    assert exit_code(["fit", "-c", str(config), "--print_config"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["model"]["class_path"].startswith("lightning_modules.")
    assert resolved["checkpoint"]["monitor"] == resolved["early_stopping"]["init_args"]["monitor"]
    assert isinstance(resolved["seed_everything"], int)


@pytest.mark.parametrize("piece", PIECES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_piece_stacks_on_an_experiment(piece, capsys):
    experiment = CONFIGS / "digits" / "feature_extraction.yaml"
    assert exit_code(["fit", "-c", str(experiment), "-c", str(piece), "--print_config"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    for section, expected in yaml.safe_load(piece.read_text()).items():  # trainer:, speed:
        for key, value in expected.items():
            if key != "logger":
                assert resolved[section][key] == value or isinstance(value, dict)


def instantiate(config: Path, tmp: Path, *extra: str):
    data = stand_in_teacher(config, tmp) if config.stem.startswith("distill") else []
    if config.parent.name == "glue":
        data += ["--data.init_args.root", str(GLUE_FIXTURES)]
        if not config.stem.startswith("multitask"):  # multi-task: root reaches every task, cache_dir is per task
            data += ["--data.init_args.cache_dir", str(tmp / "cache")]
    if config.parent.name == "imagenette":
        data += ["--data.init_args.root", str(imagenet_tree(tmp / "imagenette", {"val": 1}, IMAGENETTE))]
    return cli_main(["-c", str(config), *extra, *csv_logger(tmp), *data], run=False)


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_experiment_config_instantiates_and_monitors_a_logged_metric(config, in_tmp):
    cli = instantiate(config, in_tmp)
    if hasattr(cli.datamodule, "task_specs"):  # multi-task: each task's classes and metrics, linked
        check_multi_task(cli)
        return
    assert cli.model.hparams.num_classes == cli.datamodule.num_classes
    if config.parent.name == "glue":
        assert cli.datamodule.task == METHOD_TASKS.get(config.stem, config.stem.removeprefix("distill_"))
        assert cli.datamodule.preprocessing.tokenizer == cli.model.backbone.preprocessing.tokenizer  # linked
    else:
        assert cli.datamodule.num_classes == 10
        assert cli.datamodule.preprocessing.image_size == cli.model.backbone.preprocessing.image_size  # linked
    check_monitors(cli)


@pytest.mark.parametrize("piece", STACKED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_stacked_pieces_change_the_strategy_or_the_input_of_every_experiment(piece, in_tmp):
    for experiment in STACKED[piece]:
        cli = instantiate(experiment, in_tmp, "-c", str(piece))
        if experiment.parent.name == "glue":
            assert cli.datamodule.task == experiment.stem
        if piece.stem == "feature_extraction":
            assert type(cli.model).__name__ == "FeatureExtraction" and cli.model.backbone_is_frozen()
            continue
        if piece.stem == "bi_encoder":
            assert cli.model.pair_head == "cosine" and cli.datamodule.separate_pairs and cli.model.head.in_features == 1
            continue
        assert type(cli.model).__name__ == "FineTuning" and cli.model.adapter is not None
        trained = sum(p.numel() for p in cli.model.backbone.parameters() if p.requires_grad)
        assert 0 < trained < 0.05 * sum(p.numel() for p in cli.model.backbone.parameters())


def test_backbone_preprocessing_flows_into_the_data(in_tmp):
    cli = cli_main(
        [
            "-c",
            str(CONFIGS / "digits" / "fine_tuning.yaml"),
            "--model.backbone",
            "cifar_resnet20",
            "--model.pretrained",
            "false",
            *csv_logger(in_tmp),
        ],
        run=False,
    )
    assert cli.datamodule.preprocessing.mean == (0.485, 0.456, 0.406) and cli.datamodule.preprocessing.image_size == 32
    assert cli.datamodule.image_size == 64  # the user's value still wins over the backbone's default


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--trainer.max_epocks", "3"], "max_epocks"),
        (["--trainer.max_epochs", "three"], "max_epochs"),
        (["-c", "/no/such/config.yaml"], "/no/such/config.yaml"),
        (["--model.backbone", "no_such_net"], "no_such_net"),
        (["--data", "CIFAR10DataModule", "--data.root", "/no/such/cifar"], "data.root"),
        (["--model.init_args.lr_decay", "2.0"], "model.lr_decay"),
    ],
)
def test_bad_config_exits_2_naming_the_key_or_path(args, named, in_tmp, capsys):
    assert exit_code(["fit", *TINY, *csv_logger(in_tmp), *args]) == 2
    assert named in capsys.readouterr().err


def test_help_lists_strategies_and_model_help_shows_typed_arguments(capsys):
    assert exit_code(["fit", "--help"]) == 0
    text = capsys.readouterr().out
    assert "FineTuning" in text and "FeatureExtraction" in text and "CIFAR10DataModule" in text
    assert exit_code(["fit", "--model.help", "FineTuning"]) == 0
    text = capsys.readouterr().out
    assert "--model.lr_decay LR_DECAY" in text and "(type: float, default: 1.0)" in text


def test_fit_records_config_metadata_and_test_results(in_tmp):
    cli_main(["fit", *TINY, *csv_logger(in_tmp), "--test_after_fit", "true", "--seed_everything", "7"])
    run = next(in_tmp.glob("csv/version_*"))
    results = json.loads((run / "results.json").read_text())
    assert 0 <= results["test"]["test/acc"] <= 1 and Path(results["best_checkpoint"]).exists()
    metadata = json.loads((run / "run_metadata.json").read_text())
    assert metadata["seed"] == 7 and len(metadata["data_fingerprint"]) == 64
    assert metadata["packages"]["torch"] == torch.__version__.split("+")[0]
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]["backbone"] == "tiny_cnn"
    assert (run / "checkpoints" / "last.ckpt").exists()
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)  # safe to load
    assert checkpoint["hyper_parameters"]["backbone"] == "tiny_cnn"
    resumed = cli_main(["fit", *TINY, *csv_logger(in_tmp), "--trainer.max_epochs", "3",
                        "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])  # fmt: skip
    assert resumed.config.fit.weights_only is True and resumed.trainer.current_epoch == 3


def test_test_after_fit_of_an_untrained_model_says_so(in_tmp, capsys):
    cli_main(["fit", *TINY, *csv_logger(in_tmp), "--test_after_fit", "true", "--trainer.max_epochs", "0"])
    results = json.loads(next(in_tmp.glob("csv/version_*/results.json")).read_text())
    assert results["steps"] == 0 and "test/acc" in results["test"]
    assert "no training step was taken" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["rte", "stsb"])
def test_test_after_fit_on_glue_reuses_the_validation_scores_that_testing_would_compute(in_tmp, capsys, task):
    config = ["-c", str(CONFIGS / "glue" / f"{task}.yaml"), *TINY_GLUE, *csv_logger(in_tmp)]
    cli_main(["fit", *config, "--trainer.max_epochs", "2", "--test_after_fit", "true"])
    results = json.loads(next(in_tmp.glob("csv/version_*/results.json")).read_text())
    assert results["test_is_validation"] is True and "validation scores instead" in capsys.readouterr().err
    tested = cli_main(["test", *config, "--ckpt_path", results["best_checkpoint"]]).trainer.callback_metrics
    assert results["test"]["test/score"] == pytest.approx(results["best_score"])  # the score best was chosen by
    assert results["test"].keys() == {name for name in tested if name.startswith("test/")}
    for name, value in results["test"].items():
        assert value == pytest.approx(float(tested[name]), abs=1e-6), name


def test_the_cli_says_what_each_split_holds_after_caps_and_carve_outs(in_tmp, capsys):
    cli_main(["fit", *TINY, *csv_logger(in_tmp), "--trainer.max_epochs", "0", "--data.num_samples", "80"])
    assert "data: train 60 (15 per class), val 20 (5 per class), test 80 (20 per class)" in capsys.readouterr().err


def test_early_stopping_can_be_switched_off(in_tmp):
    cli = cli_main(
        [
            "-c",
            str(CONFIGS / "digits" / "fine_tuning.yaml"),
            "--early_stopping",
            "null",
            "--model.backbone",
            "tiny_cnn",
            "--model.pretrained",
            "false",
            *csv_logger(in_tmp),
        ],
        run=False,
    )
    assert cli.trainer.early_stopping_callback is None and cli.trainer.checkpoint_callback is not None


TINY_TEXT = ["-c", str(CONFIGS / "glue" / "rte.yaml"), *TINY_GLUE]


@pytest.mark.parametrize("task", [TINY, TINY_TEXT], ids=["vision", "text"])
def test_bf16_mixed_fits_on_cpu(task, in_tmp):
    cli = cli_main(
        [
            "fit",
            *task,
            *csv_logger(in_tmp),
            "-c",
            str(CONFIGS / "trainer" / "bf16.yaml"),
            "--trainer.fast_dev_run",
            "2",
        ]
    )
    assert cli.trainer.precision == "bf16-mixed"
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in cli.model.parameters())
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])


def test_wandb_goes_offline_and_never_writes_the_api_key(in_tmp, monkeypatch, capsys):
    sentinel = "sentinel-api-key-0123456789abcdef"
    monkeypatch.setenv("WANDB_API_KEY", sentinel)
    cli_main(
        [
            "fit",
            *TINY,
            "-c",
            str(CONFIGS / "logger" / "wandb.yaml"),
            "--trainer.logger.init_args.save_dir",
            str(in_tmp / "runs"),
            "--test_after_fit",
            "true",
        ]
    )
    files = [p for p in (in_tmp / "runs").rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in files) and any(p.suffix == ".wandb" for p in files)
    assert not [p for p in files if sentinel.encode() in p.read_bytes()]
    assert sentinel not in capsys.readouterr().err
