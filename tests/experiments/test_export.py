"""`transfer export` + `inference.Predictor`: every strategy's checkpoint -> a folder whose model predicts what the
trained model does, on the inputs the training data would have made; bad checkpoints and folders are named."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from support import CONFIGS, TINY_GLUE, TINY_RUN

from experiments.cli import cli_main
from experiments.export.command import main as export
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


def test_the_predictor_equals_the_trained_model_on_the_same_inputs_and_reads_pil_and_files(in_tmp):
    fit(*TINY_RUN)
    predictor = exported()
    model, _ = load_trained_model("checkpoints/last.ckpt")
    images = (torch.rand(6, 3, 20, 28) * 255).to(torch.uint8)  # another size: resized and centre-cropped
    preparer = predictor.preparer()
    batch = preparer.batch([preparer.one(image) for image in images])
    assert batch["pixel_values"].shape == (6, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(predictor.logits(list(images)), model(batch), atol=1e-6)
    from PIL import Image
    from torchvision.io import write_png

    write_png(images[0], "image.png")
    pil = Image.fromarray(images[1].permute(1, 2, 0).numpy())
    logits = predictor.logits(["image.png", pil])
    assert torch.allclose(logits, predictor.logits(list(images[:2])), atol=1e-6)


def test_a_lora_model_exports_merged_with_the_outputs_of_the_adapter_run(in_tmp):
    fit(*TINY_RUN, *LORA)
    predictor = exported()
    assert not any("lora" in key or "base_layer" in key for key in load_file(in_tmp / "export" / WEIGHTS))
    model, _ = load_trained_model("checkpoints/last.ckpt")
    images = (torch.rand(4, 3, 16, 16) * 255).to(torch.uint8)
    preparer = predictor.preparer()
    with torch.no_grad():
        expected = model(preparer.batch([preparer.one(image) for image in images]))
    assert torch.allclose(predictor.logits(list(images)), expected, atol=1e-5)


def test_a_contrastive_probe_exports_with_its_batchnorm_folded_into_the_head(in_tmp):
    fit(*TINY_RUN, "--model", "Contrastive", "--model.backbone", "tiny_cnn", "--model.pretrained", "false",
        "--model.knn_k", "null", "--data.views", "2", "--checkpoint.monitor", "val/linear_acc",
        "--early_stopping.monitor", "val/linear_acc")  # fmt: skip
    predictor = exported()
    assert set(load_file(in_tmp / "export" / WEIGHTS)) >= {"heads.default.weight", "heads.default.bias"}
    model, _ = load_trained_model("checkpoints/last.ckpt")
    assert model.head[0].running_var.sub(1).abs().max() > 1e-3  # a BatchNorm that really changes the features
    images = (torch.rand(4, 3, 16, 16) * 255).to(torch.uint8)
    preparer = predictor.preparer()
    with torch.no_grad():
        expected = model(preparer.batch([preparer.one(image) for image in images]))
    assert torch.allclose(predictor.logits(list(images)), expected, atol=1e-5)


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
