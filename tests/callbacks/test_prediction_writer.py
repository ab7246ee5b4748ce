import csv
from pathlib import Path

import pytest
import torch
from support import GLUE_FIXTURES, TINY_GLUE, TINY_RUN, quiet_trainer

from callbacks.prediction_writer import PredictionWriter, _unique_sorted, format_predictions
from datamodules import SyntheticDataModule, TextDataModule
from datamodules.glue import GLUE_TASKS
from experiments.cli import CONFIGS, cli_main
from lightning_modules import FineTuning
from lightning_modules.backbones import backbone_preprocessing


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def test_unique_sorted_drops_the_rows_a_distributed_sampler_repeats():
    index, first = _unique_sorted(torch.tensor([5, 2, 9, 2, 5]))
    assert index.tolist() == [2, 5, 9]
    assert first.tolist() == [1, 0, 2]


def test_format_predictions_names_classes_and_clips_scores():
    class Labelled:
        label_names = ["entailment", "not_entailment"]

    class Scored:
        label_range = (0.0, 5.0)

    probabilities = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    assert format_predictions(probabilities, Labelled()) == ["entailment", "not_entailment"]
    assert format_predictions(probabilities, None) == ["0", "1"]
    assert format_predictions(torch.tensor([-0.3, 2.5, 5.7]), Scored()) == ["0.0000", "2.5000", "5.0000"]


def test_predict_writes_every_test_row_once_with_the_model_argmax(tmp_path):
    data = SyntheticDataModule(num_classes=3, num_samples=40, preprocessing=backbone_preprocessing("tiny_cnn"))
    model = FineTuning(backbone="tiny_cnn", pretrained=False, num_classes=3)
    trainer = quiet_trainer(PredictionWriter(str(tmp_path)))
    outputs = torch.cat(trainer.predict(model, datamodule=data))
    rows = read_tsv(tmp_path / "predictions.tsv")
    assert [int(r["index"]) for r in rows] == list(range(len(outputs)))
    assert [r["prediction"] for r in rows] == [data.class_names[c] for c in outputs.argmax(-1).tolist()]


def glue_predict(task: str, tmp_path: Path) -> Path:
    out = tmp_path / "submission"
    cli_main(
        [
            "predict",
            "-c",
            str(CONFIGS / "glue" / f"{task}.yaml"),
            "-c",
            str(CONFIGS / "logger" / "csv.yaml"),
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
            "--trainer.enable_progress_bar",
            "false",
            *TINY_GLUE,
            "--data.init_args.cache_dir",
            str(tmp_path / "cache"),
            "--predictions.output_dir",
            str(out),
        ]
    )
    return out


@pytest.mark.parametrize("task", ["rte", "stsb", "mnli"])
def test_transfer_predict_writes_glue_submission_files(task, tmp_path):
    out = glue_predict(task, tmp_path)
    spec = GLUE_TASKS[task]
    names = {"rte": ["RTE"], "stsb": ["STS-B"], "mnli": ["MNLI-m", "MNLI-mm"]}[task]
    assert sorted(p.stem for p in out.glob("*.tsv")) == sorted(names)
    for name, test_file in zip(names, spec.test_files, strict=True):
        expected_ids = [int(r["index"]) for r in read_tsv(GLUE_FIXTURES / spec.folder / test_file)]
        rows = read_tsv(out / f"{name}.tsv")
        assert [int(r["index"]) for r in rows] == sorted(expected_ids)
        if spec.labels is None:
            assert all(0.0 <= float(r["prediction"]) <= 5.0 for r in rows)
        else:
            assert {r["prediction"] for r in rows} <= set(spec.labels)


def test_a_users_text_predictions_carry_its_ids_and_label_names(tmp_path):
    folder = tmp_path / "reviews"
    folder.mkdir()
    (folder / "train.csv").write_text("id,text,sentiment\n1,Great value,pos\n2,Broke at once,neg\n")
    (folder / "new.csv").write_text("id,text\n70,Solid value\n71,Never again\n")
    data = TextDataModule(
        train_file=str(folder / "train.csv"),
        val_file=str(folder / "train.csv"),
        test_file=str(folder / "new.csv"),
        text_columns=["text"],
        label_column="sentiment",
        label_names=["neg", "pos"],
        index_column="id",
        preprocessing=backbone_preprocessing("tiny_bert"),
        cache_dir=str(tmp_path / "cache"),
    )
    model = FineTuning(backbone="tiny_bert", pretrained=False, num_classes=2)
    trainer = quiet_trainer(PredictionWriter(str(tmp_path / "out")))
    trainer.predict(model, datamodule=data)
    rows = read_tsv(tmp_path / "out" / "new_predictions.tsv")
    assert [r["index"] for r in rows] == ["70", "71"]
    assert {r["prediction"] for r in rows} <= {"neg", "pos"}


@pytest.mark.parametrize("command", ["predict", "test"])
def test_sigterm_stops_predict_and_test_with_exit_143_keeping_the_rows_done(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "helpers"))
    run = [command, *TINY_RUN, "--data.num_samples", "160", "--predictions.output_dir", str(tmp_path / "out")]
    cli_main(["predict", *run[1:]])  # uninterrupted: 20 test rows (of 160 synthetic samples), 8 per batch
    everything = read_tsv(tmp_path / "out" / "predictions.tsv")
    (tmp_path / "out" / "predictions.tsv").unlink()
    with pytest.raises(SystemExit) as raised:
        cli_main([*run, "--trainer.callbacks+", "reliability_probes.SigtermAtBatch", "--trainer.callbacks.batch", "0"])
    assert raised.value.code == 143  # pre-empted, not finished: the caller can tell
    assert not (tmp_path / "out" / "predictions.tsv").exists()
    if command == "predict":
        done = read_tsv(tmp_path / "out" / "predictions.partial.tsv")
        assert 0 < len(done) < len(everything) and done == everything[: len(done)]
