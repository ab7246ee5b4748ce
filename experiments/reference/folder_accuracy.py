"""Accuracy of an exported model on a labelled image tree (`<root>/<class name>/<image>`), through the Python
API alone (`inference.Predictor`, no Lightning): the check that an export predicts what `transfer test` measured.

    python -m experiments.reference.folder_accuracy exports/cifar10 <extracted cifar10-jpeg>/test [--batch_size 100]
"""

from __future__ import annotations

import argparse
import json
import time

from inference import Predictor
from inference.inputs import image_files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export", help="an export folder (`transfer export --out`)")
    parser.add_argument("images", help="a folder of class folders named by the model's labels")
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    predictor = Predictor.load(args.export, args.device)
    files = image_files(args.images)
    labels = predictor.labels() or []
    unknown = sorted({f.parent.name for f in files} - set(labels))
    if unknown:
        parser.error(f"class folders {unknown} are not labels of the model ({labels})")
    started = time.perf_counter()
    predictions = predictor.predict(files, batch_size=args.batch_size)
    seconds = time.perf_counter() - started
    correct = sum(p.label == f.parent.name for p, f in zip(predictions, files, strict=True))
    result = {"images": len(files), "correct": correct, "acc": correct / len(files), "seconds": round(seconds, 1)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
