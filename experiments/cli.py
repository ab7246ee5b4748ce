"""`transfer`: the Lightning CLI of this project (fit / validate / test / predict).

Model and data are given in subclass mode (`--model FineTuning --data CIFAR10DataModule` or
`class_path`/`init_args` in YAML). The backbone's preprocessing flows into the data at parse time and
`num_classes` from the data into the model at instantiate time. `experiments/configs/defaults.yaml` is
always loaded first; experiment files and `-c` pieces stack on it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from callbacks.prediction_writer import PredictionWriter
from callbacks.run_metadata import RunMetadata
from lightning_modules.backbones import backbone_preprocessing
from lightning_modules.base import TransferModule

CONFIGS = Path(__file__).resolve().parent / "configs"
DEFAULTS = CONFIGS / "defaults.yaml"


def preprocessing_of(backbone: str) -> dict[str, Any]:
    """Link function: a backbone name -> its preprocessing as plain values (serialisable config)."""
    return asdict(backbone_preprocessing(backbone))


class SaveConfigToLogger(SaveConfigCallback):
    """Saves the resolved config beside the run (stock behaviour) and into the logger (W&B config)."""

    def save_config(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        config = self.parser.dump(self.config, skip_none=False, format="json")
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": json.loads(config)})


class TransferCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs: Any):
        defaults = {"default_config_files": [str(DEFAULTS)]}
        self._with_subcommands = run
        super().__init__(
            TransferModule,
            LightningDataModule,  # vision datamodules share TransferDataModule, text ones TextDataModule
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=SaveConfigToLogger,
            save_config_kwargs={"overwrite": True},
            # With subcommands (run=True) the arguments live in one parser per subcommand, named by its key.
            parser_kwargs={name: defaults for name in self.subcommands()} if run else defaults,
            auto_configure_optimizers=False,
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(EarlyStopping, "early_stopping", subclass_mode=True, required=False)
        parser.add_lightning_class_args(RunMetadata, "run_metadata")
        parser.add_lightning_class_args(PredictionWriter, "predictions")  # acts on `predict` only
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After `fit`, test the best checkpoint and write results.json into the run directory.",
        )
        if not self._with_subcommands:
            # defaults.yaml sets the subcommands' `weights_only`; with run=False the caller loads checkpoints.
            parser.add_argument("--weights_only", type=bool | None, default=True, help=argparse.SUPPRESS)
        parser.link_arguments(
            "model.init_args.backbone",
            "data.init_args.preprocessing",
            compute_fn=preprocessing_of,
            apply_on="parse",
        )
        for attribute in ("num_classes", "metrics", "val_names"):  # what the data says about its task
            parser.link_arguments(f"data.{attribute}", f"model.init_args.{attribute}", apply_on="instantiate")
        # Multi-task data says it per task. A link whose source attribute or target argument is missing (other
        # datamodules, other strategies) is skipped by jsonargparse, so each pair gets only the links it has.
        parser.link_arguments("data.task_specs", "model.init_args.tasks", apply_on="instantiate")

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (FileNotFoundError, ValueError) as error:
            # A bad path or value in the config: say which, exit 2 like any other config error.
            self._parser(self.subcommand).error(str(error))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # `early_stopping: null` switches early stopping off: drop forced callbacks set to None.
        keys = self._parser(self.subcommand).callback_keys
        extra = [cb for cb in (self._get(self.config_init, k) for k in keys) if cb is not None]
        return self._instantiate_trainer({**self._get(self.config_init, "trainer", default={}), **kwargs}, extra)

    def before_fit(self) -> None:
        self._fit_started = time.perf_counter()

    def after_fit(self) -> None:
        if not self._get(self.config, "test_after_fit", default=False):
            return
        fit_seconds = time.perf_counter() - self._fit_started
        checkpoint = self.trainer.checkpoint_callback
        best, score = None, None
        if isinstance(checkpoint, ModelCheckpoint) and checkpoint.best_model_path:
            best = checkpoint.best_model_path
            score = None if checkpoint.best_model_score is None else float(checkpoint.best_model_score)
        metrics = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best, verbose=False)
        if self.trainer.is_global_zero:
            results = {
                "test": metrics[0] if metrics else {},
                "best_checkpoint": best,
                "best_score": score,
                "fit_seconds": round(fit_seconds, 2),
                "epochs": self.trainer.current_epoch,
            }
            path = Path(self.trainer.log_dir or ".") / "results.json"
            path.write_text(json.dumps(results, indent=2) + "\n")
            print(f"results written to {path}")


def cli_main(args: list[str] | None = None, run: bool = True) -> TransferCLI:
    return TransferCLI(args=args, run=run)


def main() -> None:
    # `transfer ablate` runs many `transfer fit`s; it is no LightningCLI subcommand (it builds no Trainer).
    if sys.argv[1:2] == ["ablate"]:
        from experiments.ablate import main as ablate

        sys.exit(ablate(sys.argv[2:]))
    cli_main()


if __name__ == "__main__":
    main()
