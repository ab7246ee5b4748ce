"""`transfer`: the command line. `ablate`, `export`, `merge`, `select`, `soup`, `tune` and `wise-ft` are commands of
their own, and so is `predict --inputs` (`experiments.predict`); every other subcommand (`fit`, `validate`, `test`,
`predict`) is the Lightning CLI of `experiments.cli`."""

from __future__ import annotations

import importlib
import sys

# command -> (module whose `main(argv) -> int` runs it, what it does)
COMMANDS = {
    "ablate": ("experiments.ablate", "run a study (grid x seeds of `transfer fit`) into a table and plots"),
    "export": ("experiments.export.command", "write a checkpoint as a folder to use it from: safetensors, ONNX, card"),
    "merge": ("experiments.merge", "fold an adapter run's adapter into a plain checkpoint (and peft's format)"),
    "select": ("experiments.select", "rank candidate pretrained models on your data by transferability scores"),
    "soup": ("experiments.soup", "average fine-tuned checkpoints (uniform and greedy model soups), evaluated"),
    "tune": ("experiments.tune", "search hyper-parameters and strategies with Optuna, pruning bad trials early"),
    "wise-ft": ("experiments.wise_ft", "interpolate a zero-shot/probe and a fine-tuned checkpoint, chosen on val"),
}


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else None
    if command in COMMANDS:
        sys.exit(importlib.import_module(COMMANDS[command][0]).main(sys.argv[2:]))
    if command == "predict" and any(arg.split("=")[0] == "--inputs" for arg in sys.argv[2:]):
        sys.exit(importlib.import_module("experiments.predict").main(sys.argv[2:]))  # unlabelled inputs
    if command in (None, "-h", "--help"):
        print("transfer commands: fit, validate, test, predict (Lightning CLI, below), and")
        for name, (_, summary) in COMMANDS.items():
            print(f"  {name:<8} {summary}; `transfer {name} --help`")
        print("  predict --model M --inputs I: predictions on a folder of images or a CSV / TSV of texts;")
        print("           `python -m experiments.predict --help`")
        print()
    from experiments.cli import cli_main

    cli_main()


if __name__ == "__main__":
    main()
