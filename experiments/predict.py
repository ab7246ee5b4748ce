"""`transfer predict --model M --inputs I`: predictions on unlabelled data, one row per input, in input order.

    transfer predict --model exports/cifar10 --inputs photos/ --out predictions.csv
    transfer predict --model runs/rte/checkpoints/last.ckpt --inputs pairs.tsv --columns premise hypothesis
    transfer predict --model exports/glue_multitask --task cola --inputs sentences.csv

`--model` is an export folder (`transfer export`) or a checkpoint (exported on the fly into a temporary
folder). `--inputs` is a folder of images (recursively, every file PIL reads) or a .csv / .tsv with a header
line whose text columns `--columns` names (default: the columns the model was trained on). Each output row
holds the input (its path under the folder, or its row number), the predicted label with its probability and
the top-k labels (regression: the score), and `error` for an input that could not be read: such inputs are
listed, not dropped, and do not stop the others. Without `--inputs`, `transfer predict` is the Lightning CLI's
(a datamodule's predict split, e.g. GLUE submission files).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import tempfile
from pathlib import Path
from typing import Any

from datamodules.cache import write_atomically
from inference import Prediction, Predictor
from inference.folder import CONFIG
from inference.inputs import image_files, read_texts
from inference.preprocess import TextPreparer

FIELDS = ["input", "prediction", "probability", "top_k", "error"]


def predict_rows(
    predictor: Predictor,
    inputs: str | Path,
    task: str | None = None,
    columns: list[str] | None = None,
    top_k: int = 5,
    batch_size: int = 64,
) -> list[dict[str, str]]:
    """One output row per input of `inputs`, in input order (see the module docstring)."""
    preparer = predictor.preparer(task)
    source = Path(inputs).expanduser()
    readable: list[tuple[int, Any]]  # (position, input) of the inputs read
    if isinstance(preparer, TextPreparer):
        wanted = columns or preparer.columns
        if len(wanted) != len(preparer.columns):
            raise ValueError(f"--columns: this model takes {len(preparer.columns)} text column(s), got {wanted}")
        rows, errors = read_texts(source, wanted)
        names = [str(i) for i in range(len(rows))]
        readable = [(i, row) for i, row in enumerate(rows) if row is not None]
    else:
        if source.is_file():
            raise ValueError(f"--inputs: {inputs} is a file; this model takes images: give a folder of them")
        files = image_files(source)
        names, errors = [file.relative_to(source).as_posix() for file in files], {}
        readable = list(enumerate(files))
    if not names:
        raise ValueError(f"--inputs: no inputs found in {inputs}")
    predictions = predictor.predict(
        [item for _, item in readable], task, batch_size=batch_size, top_k=top_k, skip_unreadable=True
    )
    by_position: dict[int, Prediction] = {i: p for (i, _), p in zip(readable, predictions, strict=True)}
    by_position.update({i: Prediction(error=reason) for i, reason in errors.items()})
    return [_row(name, by_position[i]) for i, name in enumerate(names)]


def _row(name: str, prediction: Prediction) -> dict[str, str]:
    if prediction.error is not None:
        return {"input": name, "prediction": "", "probability": "", "top_k": "", "error": prediction.error}
    if prediction.score is not None:
        return {"input": name, "prediction": f"{prediction.score:.4f}", "probability": "", "top_k": "", "error": ""}
    top = " ".join(f"{label}:{p:.4f}" for label, p in prediction.top_k)
    return {"input": name, "prediction": str(prediction.label), "probability": f"{prediction.probability:.4f}",
            "top_k": top, "error": ""}  # fmt: skip


def write_rows(rows: list[dict[str, str]], path: Path) -> None:
    """CSV (or TSV by suffix), written atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, FIELDS, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, lambda handle: handle.write(text.getvalue().encode()))


def load_predictor(model: Path, device: str, work: Path, own_strategy: str | None = None) -> Predictor:
    """An export folder's predictor, or a checkpoint's (of `own_strategy`, when it is the user's own), exported
    first into `work`."""
    if not model.is_file():
        return Predictor.load(model, device)
    from experiments.export.command import export_checkpoint

    export_checkpoint(model, work / "export", own_strategy=own_strategy)
    return Predictor.load(work / "export", device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="transfer predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, type=Path, help=f"an export folder (with {CONFIG}) or a checkpoint")
    parser.add_argument("--inputs", required=True, help="a folder of images, or a .csv / .tsv file of texts")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"), help="output .csv or .tsv")
    parser.add_argument("--columns", nargs="+", help="the text column(s) of --inputs (default: the model's)")
    parser.add_argument("--task", help="which head of a multi-task model")
    parser.add_argument("--top_k", type=int, default=5, help="labels listed per input, most probable first")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--strategy", help="a checkpoint of your own strategy: its class path (its module is imported), as for export"
    )
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="transfer-predict-") as work:
            predictor = load_predictor(args.model, args.device, Path(work), args.strategy)
            rows = predict_rows(predictor, args.inputs, args.task, args.columns, args.top_k, args.batch_size)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    write_rows(rows, args.out)
    failed = [row for row in rows if row["error"]]
    print(f"predictions: {len(rows) - len(failed)} of {len(rows)} inputs written to {args.out}")
    for row in failed:
        print(f"  unreadable: {row['input']}: {row['error']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
