"""`transfer`: the Lightning CLI of this project (fit / validate / test / predict).

Model and data are given in subclass mode (`--model FineTuning --data CIFAR10DataModule` or
`class_path`/`init_args` in YAML). The backbone's preprocessing flows into the data at parse time and
`num_classes` from the data into the model at instantiate time. `experiments/configs/defaults.yaml` is
always loaded first; experiment files and `-c` pieces stack on it.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, Timer, WeightAveraging
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_only

import datamodules
import lightning_modules
from callbacks import AtomicCheckpointIO, CheckpointOnSigterm, ExactResume, Speed
from callbacks.model_checkpoint import ModelCheckpoint as LastAlwaysModelCheckpoint
from callbacks.prediction_writer import PredictionWriter
from callbacks.run_metadata import RunMetadata
from datamodules.archives import ArchiveError
from datamodules.decode import UnreadableImageError
from datamodules.splits import describe_splits
from experiments.config_files import yaml_file_error
from experiments.tracking import WandbLogger, WandbRunId, wandb_run_id
from experiments.trainer import Trainer as TransferTrainer
from lightning_modules.backbones import backbone_preprocessing
from lightning_modules.base import TransferModule, label_map
from lightning_modules.checkpoints import (
    LINKED_FROM_DATA,
    check_hyperparameters,
    class_paths,
    config_differences,
    read_checkpoint,
)
from lightning_modules.lightning_internals import checkpoint_folder, last_checkpoints

# `--model FineTuning` / `--data GLUEDataModule` resolve among imported subclasses (the packages import lazily).
lightning_modules.import_all()
datamodules.import_all()

CONFIGS = Path(__file__).resolve().parent / "configs"
DEFAULTS = CONFIGS / "defaults.yaml"
# `ckpt_path` values that name no file: Lightning resolves them itself.
SPECIAL_CKPT_PATHS = ("last", "best", "hpc")
LIGHTNING_KEYS = ("state_dict", "pytorch-lightning_version")  # what every checkpoint a Trainer writes holds


@rank_zero_only
def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fail(message: str) -> NoReturn:
    """A bad config, checkpoint or dataset: the message alone (the parser would add its whole usage), exit 2."""
    say(f"error: {message}")
    sys.exit(2)


def preprocessing_of(backbone: str, backbone_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """Link function: a backbone name and options -> its preprocessing as plain values (serialisable config)."""
    return asdict(backbone_preprocessing(backbone, backbone_kwargs))


def report_differences(source: str, used: str, differences: list[tuple[str, Any, Any]], hint: str = "") -> None:
    """Each model setting of the config that differs from the checkpoint's, one line per key."""
    if differences:
        lines = [f"  {key}: config {given!r}, checkpoint {stored!r}" for key, given, stored in differences]
        say(f"{source}: {len(differences)} model settings differ from the checkpoint's; {used} are used{hint}:")
        say("\n".join(lines))


def default_argument(cls: type, name: str) -> Any:
    """The default of argument `name` of `cls`, or of the `__init__` it passes `**kwargs` on to."""
    for klass in cls.__mro__:
        parameter = inspect.signature(klass).parameters.get(name) if "__init__" in vars(klass) else None
        if parameter is not None:
            return parameter.default
    return None


class SaveConfigToLogger(SaveConfigCallback):
    """Saves the resolved config beside the run (stock behaviour) and into the logger (W&B config)."""

    def save_config(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        config = self.parser.dump(self.config, skip_none=False, format="json")
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": json.loads(config)})


class TransferCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs: Any):
        # No abbreviations: `--trainer.max_epoch 1` is an error, not silently `max_epochs`.
        defaults = {"default_config_files": [str(DEFAULTS)], "allow_abbrev": False}
        self._with_subcommands = run
        self._wandb_run_id: str | None = None  # of the checkpoint a run resumes from
        self._checkpoint: Path | None = None  # `--ckpt_path FILE`, whose hyper_parameters the model was built from
        self._checkpoint_classes: list[str] | None = None  # the class names that checkpoint was trained on
        self._command = ["transfer", *(args if args is not None else sys.argv[1:])]  # recorded in checkpoints
        super().__init__(
            TransferModule,
            LightningDataModule,  # vision datamodules share TransferDataModule, text ones TextDataModule
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=SaveConfigToLogger,
            save_config_kwargs={"overwrite": True},
            # With subcommands (run=True) the arguments live in one parser per subcommand, named by its key.
            parser_kwargs={"allow_abbrev": False, **{name: defaults for name in self.subcommands()}}
            if run
            else defaults,
            auto_configure_optimizers=False,
            trainer_class=TransferTrainer,  # precision: auto
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(LastAlwaysModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(EarlyStopping, "early_stopping", subclass_mode=True, required=False)
        # Weight averaging (`-c experiments/configs/trainer/ema.yaml`): validation, checkpoints and test use the average
        parser.add_lightning_class_args(WeightAveraging, "weight_averaging", subclass_mode=True, required=False)
        parser.add_lightning_class_args(RunMetadata, "run_metadata")
        parser.add_lightning_class_args(PredictionWriter, "predictions")  # acts on `predict` only
        parser.add_lightning_class_args(Speed, "speed")  # channels_last, torch.compile
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
            ("model.init_args.backbone", "model.init_args.backbone_kwargs"),
            "data.init_args.preprocessing",
            compute_fn=preprocessing_of,
            apply_on="parse",
        )
        # What the data says about its task (multi-task data: per task). A link whose source attribute or target
        # argument is missing (other datamodules, other strategies) is skipped by jsonargparse, so each pair
        # gets only the links it has.
        for argument, attribute in LINKED_FROM_DATA.items():
            compute = self._classes_of_model if argument == "num_classes" else None
            parser.link_arguments(
                f"data.{attribute}", f"model.init_args.{argument}", compute_fn=compute, apply_on="instantiate"
            )

    def _tested_by_name(self) -> list[str] | None:
        """The class names of `test --ckpt_path`'s model, when it recorded them: the model keeps its classes and
        the test data's labels are mapped to them by name (a cross-dataset test, perhaps on some of the classes)."""
        return self._checkpoint_classes if self.config.get("subcommand") == "test" else None

    def _classes_of_model(self, num_classes: int) -> int:
        """The data's number of classes, except in a test by name (`_tested_by_name`): the model's own."""
        trained = self._tested_by_name()
        return len(trained) if trained else num_classes

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        if args is None or isinstance(args, list):
            error = yaml_file_error(list(sys.argv[1:] if args is None else args))
            if error:
                fail(error)
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """`--ckpt_path FILE`: refuse a missing or unsafe file (exit 2, naming it), list key by key the model
        settings of the config that differ from the checkpoint's, then overlay the checkpoint's (LightningCLI's
        behaviour: the model is rebuilt as it was trained, so that its weights fit)."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path is None or ckpt_path in SPECIAL_CKPT_PATHS or str(ckpt_path).startswith("registry"):
            return
        if not Path(ckpt_path).expanduser().is_file():
            fail(f"ckpt_path: {ckpt_path} does not exist (give a checkpoint file, or `last` to resume the "
                         "last checkpoint of this run's folder)")  # fmt: skip
        try:
            file, checkpoint = read_checkpoint(ckpt_path, "ckpt_path")
            missing = [k for k in LIGHTNING_KEYS if not isinstance(checkpoint, dict) or k not in checkpoint]
            if missing:
                raise ValueError(f"ckpt_path: {file} is not a Lightning checkpoint of a run (no {', '.join(missing)})")
            hparams = checkpoint.get("hyper_parameters", {})
            check_hyperparameters(hparams, file, TransferModule, class_paths(self.config[subcommand].get("model")))
        except ValueError as error:
            fail(str(error))
        self._wandb_run_id = wandb_run_id(checkpoint)
        self._checkpoint = file
        self._checkpoint_classes = hparams.get("class_names")
        hparams = {k: v for k, v in hparams.items() if k != "_instantiator"}
        config = self.config[subcommand]
        report_differences(f"ckpt_path {file}", "the checkpoint's", config_differences(config.get("model"), hparams))
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            say(f"ckpt_path {file}: its hyper_parameters do not parse as a model config (see above)")
            raise

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (FileNotFoundError, ValueError) as error:
            # A bad path or value in the config: say which, exit 2 like any other config error.
            fail(str(error))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # `early_stopping: null` switches early stopping off: drop forced callbacks set to None.
        keys = self._parser(self.subcommand).callback_keys
        extra = [cb for cb in (self._get(self.config_init, k) for k in keys) if cb is not None]
        # What makes an interrupted run resumable is always on, whatever list of callbacks a config sets.
        extra += [CheckpointOnSigterm(), ExactResume()]
        trainer = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        given = trainer.get("callbacks") or []
        if not any(isinstance(cb, Timer) for cb in [*extra, *(given if isinstance(given, list) else [given])]):
            extra.append(Timer(verbose=False))  # `fit_seconds`; it keeps the time so far in every checkpoint
        loggers = trainer.get("logger")
        loggers = loggers if isinstance(loggers, list) else [loggers]
        extra += [WandbRunId(logger) for logger in loggers if isinstance(logger, WandbLogger)]
        plugins = trainer.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            trainer["plugins"] = [*plugins, AtomicCheckpointIO()]  # checkpoints complete or absent, never partial
        return self._instantiate_trainer(trainer, extra)

    def _run_subcommand(self, subcommand: str) -> None:
        self._read_data(subcommand)
        failed = True
        try:
            super()._run_subcommand(subcommand)
            failed = False
        finally:
            for logger in self.trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.finish(failed)

    def _read_data(self, subcommand: str) -> None:
        """Read and check the data `subcommand` uses before anything is written (no run folder, no W&B run): a
        missing or malformed file, an unreadable image or a label out of range exits 2 naming it, as a config
        error does. Lightning's own setup then finds the data read (every datamodule keeps what it read)."""
        if self.datamodule is None:
            return
        try:
            self.datamodule.prepare_data()
            self.datamodule.setup(subcommand)  # the subcommands are Lightning's stage names
            self.model.check_data(self.datamodule)
            split_labels = getattr(self.datamodule, "split_labels", None)
            if split_labels is not None:
                say(f"data: {describe_splits(split_labels())}")
        except (ValueError, FileNotFoundError, ArchiveError, UnreadableImageError) as error:
            fail(str(error))
        trained = self._tested_by_name()
        if trained:
            self._check_test_classes(trained)
        self._check_num_classes(subcommand)

    def _check_test_classes(self, trained: list[str]) -> None:
        """In a test by name the test data's classes must be among the model's (by name; by number where the data
        has no names); names the model does not know are refused before anything runs."""
        names, count = getattr(self.datamodule, "class_names", None), getattr(self.datamodule, "num_classes", None)
        if names is None and count is not None and count != len(trained):
            self._fail_checkpoint_classes(len(trained), count)
        try:
            label_map(trained, names)
        except ValueError as error:
            fail(f"ckpt_path: {self._checkpoint}: {error}")

    def _check_num_classes(self, subcommand: str) -> None:
        """`num_classes` comes from the data: a different one given (`--model.num_classes`) or held by
        `--ckpt_path`'s model would be silently replaced, or fail later as a raw size mismatch."""
        init_args = (self.config[subcommand].get("model") or {}).get("init_args") or {}
        given, used = init_args.get("num_classes"), self.model.hparams.get("num_classes")
        if given is None or used is None or given == used:
            return
        if self._checkpoint is None and given == default_argument(type(self.model), "num_classes"):
            return  # not given: the class default
        if self._checkpoint is not None:
            self._fail_checkpoint_classes(given, used)
        data = type(self.datamodule).__name__
        fail(f"model.num_classes={given}, but the data ({data}) has {used} classes: the model takes its num_classes "
             "from the data, leave model.num_classes out")  # fmt: skip

    def _fail_checkpoint_classes(self, given: int, used: int) -> NoReturn:
        data = type(self.datamodule).__name__
        fail(f"ckpt_path: {self._checkpoint} holds a model of {given} classes, but the data ({data}) has {used}")

    def before_fit(self) -> None:
        for callback in self.trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, RunMetadata):
                callback.command = shlex.join(self._command)
        if self.config_init[self.subcommand].get("ckpt_path") == "last":
            self._resolve_last()
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger) and self._wandb_run_id:  # a resumed run continues its W&B run
                logger.continue_run(self._wandb_run_id)

    def _resolve_last(self) -> None:
        """`--ckpt_path last`: resume this run folder's newest last checkpoint, or say that training starts
        fresh (Lightning's own note is easy to miss), listing config values that differ from it."""
        found, folders = set(), []
        for callback in self.trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint):
                found |= last_checkpoints(callback, self.trainer)
                folders.append(os.path.abspath(checkpoint_folder(callback, self.trainer)))
        if not found:
            say(
                f"ckpt_path=last: no last checkpoint in {', '.join(folders) or 'any checkpoint folder'}; training "
                "starts fresh. (Each run writes into a folder of its own: to resume an earlier run, give its "
                "checkpoints/last.ckpt as ckpt_path, or set checkpoint.dirpath to that run's checkpoint folder.)"
            )
            self.config_init[self.subcommand]["ckpt_path"] = None
            return
        newest = max(found, key=lambda path: Path(path).stat().st_mtime)
        try:
            file, checkpoint = read_checkpoint(newest, "ckpt_path")
        except ValueError as error:  # an unreadable last.ckpt: exit 2 naming it, as for an explicit path
            fail(str(error))
        self._wandb_run_id = wandb_run_id(checkpoint)
        hparams = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
        differences = config_differences(self.config[self.subcommand].get("model"), hparams)
        hint = " (to rebuild the model as it was trained instead, give the file as ckpt_path)"
        report_differences(f"ckpt_path=last ({file})", "the config's", differences, hint)

    def after_fit(self) -> None:
        if not self._get(self.config, "test_after_fit", default=False):
            return
        timer = next(cb for cb in self.trainer.callbacks if isinstance(cb, Timer))  # type: ignore[attr-defined]
        fit_seconds = timer.time_elapsed("train")  # all the parts of an interrupted and resumed run
        checkpoint = self.trainer.checkpoint_callback
        best, score = None, None
        if isinstance(checkpoint, ModelCheckpoint) and checkpoint.best_model_path:
            best = checkpoint.best_model_path
            score = None if checkpoint.best_model_score is None else float(checkpoint.best_model_score)
        if self.trainer.global_step == 0:
            say("warning: test_after_fit: no training step was taken (see trainer.max_epochs / max_steps), so the "
                "results are those of the model as it started, untrained")  # fmt: skip
        test = scores_of_test_as_validation(self.datamodule, best)
        if test is None:
            metrics = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best, verbose=False)
            test = {name: value for per_loader in metrics for name, value in per_loader.items()}  # + shift sets
        else:
            say("test_after_fit: the test files have no labels (GLUE hides them), so the test set is the "
                "validation set: results.json takes the best checkpoint's validation scores instead of evaluating "
                "it again")  # fmt: skip
        if self.trainer.is_global_zero:
            results = {
                "test": test,
                "test_is_validation": self.datamodule is not None and not tests_labelled_files(self.datamodule),
                "best_checkpoint": best,
                "best_score": score,
                "fit_seconds": round(fit_seconds, 2),
                "epochs": self.trainer.current_epoch,
                "steps": self.trainer.global_step,
            }
            path = Path(self.trainer.log_dir or ".") / "results.json"
            path.write_text(json.dumps(results, indent=2) + "\n")
            print(f"results written to {path}")


def tests_labelled_files(datamodule: LightningDataModule) -> bool:
    """False for a datamodule whose `test_dataloader` serves the validation sets (GLUE without test labels)."""
    labelled = getattr(datamodule, "test_is_labelled", None)
    return labelled() if callable(labelled) else True


def scores_of_test_as_validation(datamodule: LightningDataModule | None, best: str | None) -> dict[str, float] | None:
    """The best checkpoint's validation scores renamed `test/...`, where testing would evaluate the validation set
    again (a GLUE task: 9 of a 41-minute QNLI run); None where the test set is its own or the scores are not there."""
    if datamodule is None or best is None or tests_labelled_files(datamodule):
        return None
    _, checkpoint = read_checkpoint(best, "best checkpoint")
    scores = (checkpoint.get("run") or {}).get("metrics") or {}
    test = {"test/" + name.removeprefix("val/"): value for name, value in scores.items() if name.startswith("val/")}
    return test or None


def cli_main(args: list[str] | None = None, run: bool = True) -> TransferCLI:
    return TransferCLI(args=args, run=run)


def main() -> None:
    """The Lightning CLI alone (`python -m experiments.cli fit ...`); the `transfer` command is `experiments.entry`."""
    cli_main()


if __name__ == "__main__":
    main()
