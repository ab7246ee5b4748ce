"""The model card (`README.md` of an export folder), written from the checkpoint's own records."""

from __future__ import annotations

from typing import Any

from inference.folder import CONFIG, FORMATS


def model_card(config: dict[str, Any], checkpoint: dict[str, Any], source: str, files: dict[str, int]) -> str:
    """Markdown: what the model is, what it takes and predicts, how it was trained (command, data fingerprint,
    seed, config, package versions), its validation metrics at this checkpoint, the files and how to use them."""
    run = checkpoint.get("run") or {}
    hparams = checkpoint["hyper_parameters"]
    lines = [
        f"# {config['strategy']} on {config['backbone']['name']}",
        "",
        f"Exported by `transfer export` from `{source}` (epoch {checkpoint.get('epoch')}, "
        f"step {checkpoint.get('global_step')}).",
        "",
        "## Model",
        "",
        f"- backbone: `{config['backbone']['name']}` ({config['backbone']['num_features']} features"
        + (f", {config['backbone']['pooling']} pooling)" if config["backbone"].get("pooling") else ")"),
        f"- strategy: `{hparams['_class_path']}`"
        + (", adapter merged into the weights" if hparams.get("adapter") else ""),
    ]
    if config["pair_head"]:
        lines.append(f"- sentence pairs as a bi-encoder, `{config['pair_head']}` head")
    lines += ["", "| task | output | labels | inputs |", "|---|---|---|---|"]
    for name, task in config["tasks"].items():
        output = "regression" if task["num_classes"] == 1 else f"{task['num_classes']} classes"
        labels = ", ".join(task["labels"] or []) or (str(task["label_range"] or "") if task["num_classes"] == 1 else "")
        lines.append(f"| {name} | {output} | {labels} | {_inputs(task['inputs'])} |")
    lines += ["", "## Training", ""]
    if run.get("command"):
        lines.append(f"- command: `{run['command']}`")
    for key, label in (("data_fingerprint", "data fingerprint (sha256)"), ("seed", "seed")):
        if run.get(key) is not None:
            lines.append(f"- {label}: `{run[key]}`")
    if (run.get("git") or {}).get("commit"):
        lines.append(
            f"- transfer commit: `{run['git']['commit']}`" + (" (with local changes)" if run["git"]["dirty"] else "")
        )
    metrics = run.get("metrics") or {}
    if metrics:
        lines += ["", "## Metrics (validation split, at this checkpoint)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value:.4f} |" for name, value in sorted(metrics.items())]
    lines += ["", "## Files", "", "| file | bytes |", "|---|---|"]
    lines += [f"| {name} | {size:,} |" for name, size in sorted(files.items())]
    for name, label in (("onnx", "ONNX"), ("torchscript", "TorchScript")):
        if config.get(name):
            checked = config[name]
            opset = f" (opset {checked['opset']})" if "opset" in checked else ""
            lines += [
                "",
                f"{label}{opset} checked against PyTorch on {checked['check_inputs']}, at batch sizes "
                f"{' and '.join(map(str, checked['batch_sizes']))}: largest absolute output difference "
                f"{checked['max_abs_diff']:.2e} (tolerance {checked['tolerance']:.0e}).",
            ]
    versions = run.get("packages") or {}
    if versions:
        lines += ["", "## Versions (training)", "", "| package | version |", "|---|---|"]
        lines += [f"| {name} | {version} |" for name, version in versions.items()]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from inference import Predictor  # from the `transfer` package",
        "",
        'predictor = Predictor.load("<this folder>")',
        f"predictor.predict([{_example(config)}])",
        "```",
        "",
        "or `transfer predict --model <this folder> --inputs <images folder, or a .csv / .tsv of texts>`.",
        f"`{CONFIG}` describes the network and its inputs; formats here: "
        + ", ".join(f"`{file}`" for file in FORMATS.values() if file in files)
        + ".",
    ]
    if run.get("config"):
        lines += ["", "## Training config", "", "```yaml", run["config"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def _inputs(spec: dict[str, Any]) -> str:
    if spec["type"] == "image":
        return (
            f"RGB image, short side resized to {spec['image_size']} ({spec['interpolation']}), centre crop "
            f"{spec['image_size']}x{spec['image_size']}, normalised with mean {spec['mean']} std {spec['std']}"
        )
    columns = " + ".join(spec["text_columns"])
    return f"text ({columns}), at most {spec['max_length']} tokens" + (
        ", each sentence encoded alone" if spec["separate_pairs"] else ""
    )


def _example(config: dict[str, Any]) -> str:
    spec = next(iter(config["tasks"].values()))["inputs"]
    if spec["type"] == "image":
        return '"image.jpg"'
    return '("first sentence", "second sentence")' if len(spec["text_columns"]) == 2 else '"a sentence"'
