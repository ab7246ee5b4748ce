"""`transfer export` + `inference.Predictor`: every strategy's checkpoint -> a folder whose model predicts what the
trained model does, on the inputs the training data would have made; bad checkpoints and folders are named."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support import CONFIGS, TINY_GLUE, TINY_RUN
from torchvision.io import write_jpeg, write_png

from experiments.cli import cli_main
from experiments.export.command import main as export
from experiments.predict import main as predict
from experiments.run_model import load_trained_model
from inference import Predictor
from inference.folder import CONFIG, TOKENIZER, WEIGHTS, ExportFolderError

LORA = ["--model.adapter", "peft.LoraConfig", "--model.adapter.r", "4", "--model.adapter.lora_alpha", "8"]
CSV = ["-c", str(CONFIGS / "logger" / "csv.yaml")]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRANSFER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def fit(*args: str, epochs: int = 1):
    return cli_main(["fit", *args, "--trainer.max_epochs", str(epochs), "--checkpoint.dirpath", "checkpoints"])


def exported(out: str = "export", *extra: str) -> Predictor:
    assert export(["--ckpt_path", "checkpoints/last.ckpt", "--out", out, *extra]) == 0
    return Predictor.load(out)


def assert_predicts_like_the_trained_model(
    predictor: Predictor, atol: float, size=(16, 16), own_strategy: str | None = None
) -> torch.Tensor:
    """The export's logits on random images equal those of the checkpoint's own model on the same prepared batch
    (16 x 16, the tiny runs' size); returns the images."""
    model, _ = load_trained_model("checkpoints/last.ckpt", own_strategy=own_strategy)
    images = (torch.rand(6, 3, *size) * 255).to(torch.uint8)
    preparer = predictor.preparer()
    batch = preparer.batch([preparer.one(image) for image in images])
    assert batch["pixel_values"].shape == (6, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(predictor.logits(list(images)), model(batch), atol=atol)
    return images


def test_an_image_model_exports_and_predicts_like_transfer_test_on_the_test_images(in_tmp, capsys):
    cli = fit(*TINY_RUN, epochs=2)
    predictor = exported()
    test = cli_main(["test", *TINY_RUN, "--ckpt_path", "checkpoints/last.ckpt"]).trainer.callback_metrics
    samples = cli.datamodule.datasets["test"]
    images = [samples.load_image(i) for i in range(len(samples))]
    predictions = predictor.predict(images, batch_size=5)  # batches of another size than the test's
    labels = predictor.labels()
    assert labels == ["class_0", "class_1", "class_2", "class_3"]
    correct = [p.label == labels[int(y)] for p, y in zip(predictions, samples.labels, strict=True)]
    assert sum(correct) / len(correct) == pytest.approx(float(test["test/acc"]), abs=1e-6)
    first = predictions[0]
    assert first.probability == first.top_k[0][1] and len(first.top_k) == 4
    assert [p for _, p in first.top_k] == sorted((p for _, p in first.top_k), reverse=True)

    config = json.loads((in_tmp / "export" / CONFIG).read_text())
    assert config["strategy"] == "FineTuning" and config["tasks"]["default"]["inputs"]["image_size"] == 16
    card = (in_tmp / "export" / "README.md").read_text()
    assert "transfer fit" in card and "val/acc" in card and "data fingerprint" in card and "torch" in card
    assert str(in_tmp) not in card  # relative paths as typed, nothing of this machine's temporary folder


@pytest.mark.parametrize("strategy", ["FineTuning", "FeatureExtraction"])
def test_the_predictor_equals_the_trained_model_on_the_same_inputs_and_reads_pil_and_files(strategy, in_tmp):
    fit(*TINY_RUN, "--model", strategy, "--model.backbone", "tiny_cnn", "--model.pretrained", "false")
    predictor = exported()
    images = assert_predicts_like_the_trained_model(predictor, atol=1e-6, size=(20, 28))  # resized, centre-cropped
    from PIL import Image

    write_png(images[0], "image.png")
    pil = Image.fromarray(images[1].permute(1, 2, 0).numpy())
    logits = predictor.logits(["image.png", pil])
    assert torch.allclose(logits, predictor.logits(list(images[:2])), atol=1e-6)


def test_a_timm_model_built_with_backbone_kwargs_exports_and_is_rebuilt_with_them(in_tmp):
    vit = {"img_size": 16, "patch_size": 8, "depth": 1, "embed_dim": 16, "num_heads": 2}  # the data follows img_size
    fit(*TINY_RUN, "--model.backbone", "timm:vit_tiny_patch16_224", "--model.backbone_kwargs", json.dumps(vit))
    predictor = exported()
    config = json.loads((in_tmp / "export" / CONFIG).read_text())
    assert config["backbone"]["kwargs"] == vit
    assert_predicts_like_the_trained_model(predictor, atol=1e-5)


def test_a_lora_model_exports_merged_with_the_outputs_of_the_adapter_run(in_tmp):
    fit(*TINY_RUN, *LORA)
    predictor = exported()
    assert not any("lora" in key or "base_layer" in key for key in load_file(in_tmp / "export" / WEIGHTS))
    assert_predicts_like_the_trained_model(predictor, atol=1e-5)


def test_a_contrastive_probe_exports_with_its_batchnorm_folded_into_the_head(in_tmp):
    fit(*TINY_RUN, "--model", "Contrastive", "--model.backbone", "tiny_cnn", "--model.pretrained", "false",
        "--model.knn_k", "null", "--data.views", "2", "--checkpoint.monitor", "val/linear_acc",
        "--early_stopping.monitor", "val/linear_acc")  # fmt: skip
    predictor = exported()
    assert set(load_file(in_tmp / "export" / WEIGHTS)) >= {"heads.default.weight", "heads.default.bias"}
    model, _ = load_trained_model("checkpoints/last.ckpt")
    assert model.head[0].running_var.sub(1).abs().max() > 1e-3  # a BatchNorm that really changes the features
    assert_predicts_like_the_trained_model(predictor, atol=1e-5)


def test_a_text_model_exports_with_its_tokenizer_and_tokenizes_like_its_data(in_tmp):
    cli = fit("-c", str(CONFIGS / "glue" / "rte.yaml"), *TINY_GLUE, *CSV, "--data.init_args.max_length", "12")
    predictor = exported()  # at 12 tokens most pairs are truncated: the export must truncate them alike
    assert (in_tmp / "export" / TOKENIZER).is_dir()
    assert predictor.labels() == ["entailment", "not_entailment"]
    data = cli.datamodule
    rows = data._rows["val"][0]
    pairs = list(zip(*rows.texts, strict=True))[:8]
    batch = next(iter(data.val_dataloader()))
    prepared = predictor.preparer().batch([predictor.preparer().one(pair) for pair in pairs])
    assert torch.equal(prepared["input_ids"], batch["input_ids"][:8].to(prepared["input_ids"].dtype))
    model, _ = load_trained_model("checkpoints/last.ckpt")
    with torch.no_grad():
        assert torch.allclose(predictor.logits(pairs), model(prepared), atol=1e-5)
    with pytest.raises(ValueError, match="a pair of strings"):
        predictor.predict(["one sentence alone"])


def test_a_bi_encoder_regression_model_exports_with_its_cosine_head_and_label_range(in_tmp):
    fit("-c", str(CONFIGS / "glue" / "stsb.yaml"), "-c", str(CONFIGS / "glue" / "bi_encoder.yaml"), *TINY_GLUE, *CSV)
    predictor = exported()
    config = predictor.config
    assert config["pair_head"] == "cosine" and config["tasks"]["default"]["label_range"] == [0.0, 5.0]
    assert predictor.labels() is None
    pairs = [("A man is playing a guitar.", "A man plays the guitar."), ("A cat sleeps.", "Stocks fell sharply.")]
    predictions = predictor.predict(pairs)
    assert all(p.score is not None and 0.0 <= p.score <= 5.0 and p.label is None for p in predictions)
    model, _ = load_trained_model("checkpoints/last.ckpt")
    prepared = predictor.preparer().batch([predictor.preparer().one(pair) for pair in pairs])
    assert "pair_input_ids" in prepared
    with torch.no_grad():
        assert torch.allclose(predictor.logits(pairs), model(prepared).squeeze(-1), atol=1e-5)


def test_a_multi_task_model_exports_every_head_by_task_name(in_tmp):
    fit("-c", str(CONFIGS / "glue" / "multitask_small.yaml"), *TINY_GLUE, *CSV)
    predictor = exported()
    assert predictor.tasks == ["rte", "mrpc", "stsb", "cola"]
    assert predictor.labels("cola") == ["unacceptable", "acceptable"] and predictor.labels("stsb") is None
    with pytest.raises(ValueError, match="rte, mrpc, stsb, cola"):
        predictor.predict(["a sentence"])  # which task?
    assert predictor.predict(["The book was read by me."], task="cola")[0].label in ("unacceptable", "acceptable")
    model, _ = load_trained_model("checkpoints/last.ckpt")
    pairs = [("It rains.", "The street is wet."), ("He left.", "He stayed.")]
    prepared = predictor.preparer("mrpc").batch([predictor.preparer("mrpc").one(pair) for pair in pairs])
    with torch.no_grad():
        assert torch.allclose(predictor.logits(pairs, task="mrpc"), model.task_logits(prepared, "mrpc"), atol=1e-5)


def test_a_distilled_student_exports_alone(in_tmp):
    fit(*TINY_RUN)  # the teacher
    teacher = in_tmp / "teacher.ckpt"
    (in_tmp / "checkpoints" / "last.ckpt").rename(teacher)
    fit(*TINY_RUN, "--model", "Distillation", "--model.backbone", "tiny_mlp", "--model.pretrained", "false",
        "--model.teacher_ckpt", str(teacher))  # fmt: skip
    teacher.unlink()  # the export needs no teacher
    predictor = exported()
    assert predictor.config["backbone"]["name"] == "tiny_mlp"
    assert all(key.startswith(("backbone.", "heads.default.")) for key in load_file(in_tmp / "export" / WEIGHTS))


def test_export_errors_name_the_checkpoint_or_the_folder_and_what_is_wrong(in_tmp, capsys):
    fit(*TINY_RUN)
    checkpoint = torch.load("checkpoints/last.ckpt", weights_only=True)
    del checkpoint["hyper_parameters"]["inputs"]  # as written before runs recorded their inputs
    torch.save(checkpoint, "old.ckpt")
    with pytest.raises(SystemExit):
        export(["--ckpt_path", "old.ckpt", "--out", "old"])
    assert "old.ckpt does not record how its inputs were made ready" in capsys.readouterr().err
    checkpoint["hyper_parameters"]["_class_path"] = "os.system"
    torch.save(checkpoint, "evil.ckpt")
    with pytest.raises(SystemExit):
        export(["--ckpt_path", "evil.ckpt", "--out", "evil"])
    assert "names the class 'os.system'" in capsys.readouterr().err
    assert not (in_tmp / "old").exists() and not (in_tmp / "evil").exists()

    exported()
    (in_tmp / "export" / WEIGHTS).unlink()
    with pytest.raises(ExportFolderError, match=f"export folder export: is missing {WEIGHTS}"):
        Predictor.load("export")
    with pytest.raises(ExportFolderError, match="not found"):
        Predictor.load("nowhere")


def test_a_swapped_tokenizer_is_refused(in_tmp):
    fit("-c", str(CONFIGS / "glue" / "cola.yaml"), *TINY_GLUE, *CSV)
    exported()
    vocabulary = in_tmp / "export" / TOKENIZER / "tokenizer.json"
    vocabulary.write_text(vocabulary.read_text().replace('"the"', '"teh"', 1))
    with pytest.raises(ExportFolderError, match="not the tokenizer this model was exported with"):
        Predictor.load("export")


def test_the_predictor_imports_no_lightning(in_tmp):
    fit(*TINY_RUN)
    exported()
    code = (
        "import sys; from inference import Predictor; p = Predictor.load('export'); p.predict([__import__('torch')"
        ".zeros(3, 16, 16, dtype=__import__('torch').uint8)]); print(sorted(m for m in sys.modules if "
        "m.split('.')[0] in ('lightning', 'pytorch_lightning', 'lightning_fabric')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=in_tmp, check=True)
    assert done.stdout.strip() == "[]"


# --- other formats, checked against PyTorch -------------------------------------------------------------------


def test_onnx_and_torchscript_compute_the_model_at_other_batch_sizes(in_tmp):
    fit(*TINY_RUN)
    images = in_tmp / "images"
    images.mkdir()
    for i in range(5):
        write_png((torch.rand(3, 24, 20) * 255).to(torch.uint8), str(images / f"{i}.png"))
    predictor = exported("export", "--format", "onnx", "torchscript", "--check_inputs", str(images))
    config = predictor.config
    assert config["onnx"]["max_abs_diff"] <= 1e-4 and config["onnx"]["batch_sizes"] == [5, 1]
    assert config["onnx"]["check_inputs"] == f"5 images of {images}" and config["torchscript"]["max_abs_diff"] <= 1e-4
    assert "ONNX (opset" in (in_tmp / "export" / "README.md").read_text()
    import onnxruntime

    pixels = torch.stack([predictor.preparer().one(image) for image in (torch.rand(7, 3, 16, 16) * 255).byte()])
    expected = predictor.model({"pixel_values": pixels}, "default")
    session = onnxruntime.InferenceSession(str(in_tmp / "export" / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["pixel_values"] and session.get_outputs()[0].name == "default"
    (onnx_out,) = session.run(None, {"pixel_values": pixels.numpy()})
    assert torch.allclose(torch.from_numpy(onnx_out), expected, atol=1e-4)
    (scripted,) = torch.jit.load(str(in_tmp / "export" / "model.torchscript.pt"))(pixels)
    assert torch.allclose(scripted, expected, atol=1e-5)


@pytest.mark.slow
def test_an_export_that_fails_its_check_or_its_opset_is_refused_and_named(in_tmp, capsys, monkeypatch):
    import onnxruntime

    fit(*TINY_RUN)
    config = exported().config
    with pytest.raises(SystemExit):  # a tolerance no export meets: refused, and the folder left as it was
        export(["--ckpt_path", "checkpoints/last.ckpt", "--out", "export", "--format", "onnx", "--tolerance", "0"])
    assert "more than the tolerance 0" in capsys.readouterr().err
    assert Predictor.load("export").config == config
    with pytest.raises(SystemExit):
        export(["--ckpt_path", "checkpoints/last.ckpt", "--out", "other", "--format", "onnx", "--opset", "99"])
    assert "--opset 99: the exporter could not convert" in capsys.readouterr().err

    def refuse(path, providers=None):
        raise RuntimeError(f"Load model from {path} failed: ONNX Runtime only *guarantees* support for opset <= 22")

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)
    with pytest.raises(SystemExit):
        export(["--ckpt_path", "checkpoints/last.ckpt", "--out", "other", "--format", "onnx", "--opset", "24"])
    assert f"--opset 24: onnxruntime {onnxruntime.__version__} cannot run this ONNX opset" in capsys.readouterr().err
    assert not (in_tmp / "other").exists()


@pytest.mark.slow
def test_a_text_model_exports_to_onnx_with_dynamic_batch_and_sequence_axes(in_tmp):
    fit("-c", str(CONFIGS / "glue" / "stsb.yaml"), "-c", str(CONFIGS / "glue" / "bi_encoder.yaml"), *TINY_GLUE, *CSV)
    predictor = exported("export", "--format", "onnx")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(in_tmp / "export" / "model.onnx"))
    pairs = [("A very long first sentence with quite a few words in it.", "Short."), ("One.", "Two words.")] * 3
    batch = predictor.preparer().batch([predictor.preparer().one(pair) for pair in pairs])
    assert batch["input_ids"].shape[1] != batch["pair_input_ids"].shape[1]  # two sequence axes, each its own
    (onnx_out,) = session.run(None, {k: v.numpy() for k, v in batch.items()})
    assert torch.allclose(torch.from_numpy(onnx_out).squeeze(-1), predictor.logits(pairs), atol=1e-4)


# --- predictions on unlabelled inputs ----------------------------------------------------------------------------


def test_predict_lists_every_image_in_path_order_unreadable_ones_included(in_tmp, capsys):
    fit(*TINY_RUN)
    exported()
    folder = in_tmp / "new"
    (folder / "b").mkdir(parents=True)
    images = (torch.rand(3, 3, 18, 22) * 255).to(torch.uint8)
    write_png(images[0], str(folder / "z.png"))
    write_jpeg(images[1], str(folder / "b" / "x.JPEG"))
    write_png(images[2], str(folder / "a.png"))
    (folder / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "notes.txt").write_text("not an image")
    for model in ("export", "checkpoints/last.ckpt"):  # an export folder, or a checkpoint exported on the fly
        assert predict(["--model", model, "--inputs", str(folder), "--out", "out.csv", "--top_k", "2"]) == 0
        rows = list(csv.DictReader(Path("out.csv").read_text().splitlines()))
        assert [row["input"] for row in rows] == ["a.png", "b/broken.png", "b/x.JPEG", "z.png"]
        assert rows[1]["prediction"] == "" and "unreadable image file" in rows[1]["error"]
        expected = Predictor.load("export").predict([folder / "a.png", folder / "b" / "x.JPEG", folder / "z.png"])
        for row, prediction in zip([rows[0], rows[2], rows[3]], expected, strict=True):
            assert row["prediction"] == prediction.label and row["error"] == ""
            assert float(row["probability"]) == pytest.approx(prediction.probability, abs=1e-4)
            assert len(row["top_k"].split()) == 2
        assert "unreadable: b/broken.png" in capsys.readouterr().err


def test_predict_reads_texts_by_column_and_lists_malformed_rows(in_tmp, capsys):
    fit("-c", str(CONFIGS / "glue" / "rte.yaml"), *TINY_GLUE, *CSV)
    exported()
    Path("pairs.tsv").write_text("id\tfirst\tsecond\n1\tIt rains.\tThe street is wet.\n2\tonly two fields\n3\tA.\tB.\n")
    assert (
        predict(["--model", "export", "--inputs", "pairs.tsv", "--columns", "first", "second", "--out", "o.tsv"]) == 0
    )
    rows = list(csv.DictReader(Path("o.tsv").read_text().splitlines(), delimiter="\t"))
    assert [row["input"] for row in rows] == ["0", "1", "2"] and "line 3 has 2 fields" in rows[1]["error"]
    expected = Predictor.load("export").predict([("It rains.", "The street is wet."), ("A.", "B.")])
    assert [rows[0]["prediction"], rows[2]["prediction"]] == [p.label for p in expected]
    with pytest.raises(SystemExit):
        predict(["--model", "export", "--inputs", "pairs.tsv"])  # the model's own columns are not in this file
    assert "has no column 'sentence1'" in capsys.readouterr().err


def test_a_checkpoint_of_the_users_own_strategy_exports_and_predicts_when_they_name_it(in_tmp, monkeypatch, capsys):
    (in_tmp / "my_strategies.py").write_text(
        "from lightning_modules import FineTuning\nclass MyFineTuning(FineTuning):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(in_tmp))
    fit(*TINY_RUN, "--model", "my_strategies.MyFineTuning")
    monkeypatch.delitem(sys.modules, "my_strategies")  # a new process: nothing imported it
    with pytest.raises(SystemExit):
        export(["--ckpt_path", "checkpoints/last.ckpt", "--out", "export"])
    refused = capsys.readouterr().err
    assert "own: --strategy my_strategies.MyFineTuning" in refused and "my_strategies" not in sys.modules
    with pytest.raises(SystemExit):
        export(["--ckpt_path", "checkpoints/last.ckpt", "--out", "export", "--strategy", "my_strategies.Other"])
    assert "--strategy my_strategies.Other: checkpoint" in capsys.readouterr().err
    predictor = exported("export", "--strategy", "my_strategies.MyFineTuning")
    assert json.loads((in_tmp / "export" / CONFIG).read_text())["strategy"] == "MyFineTuning"
    assert_predicts_like_the_trained_model(predictor, atol=1e-6, own_strategy="my_strategies.MyFineTuning")
    images = in_tmp / "images"
    images.mkdir()
    write_png((torch.rand(3, 16, 16) * 255).to(torch.uint8), str(images / "a.png"))
    args = ["--model", "checkpoints/last.ckpt", "--inputs", str(images), "--out", "out.csv"]
    assert predict([*args, "--strategy", "my_strategies.MyFineTuning"]) == 0
    assert (
        next(csv.DictReader(Path("out.csv").read_text().splitlines()))["prediction"]
        == predictor.predict([images / "a.png"])[0].label
    )
