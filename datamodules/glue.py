"""GLUE: the nine task specs and the quirks of the original TSVs, on top of `TextDataModule`.

Files follow the original GLUE layout, `<root>/<TASK>/{train,dev,test}.tsv` (MNLI: `dev_matched.tsv`,
`dev_mismatched.tsv`, `test_matched.tsv`, `test_mismatched.tsv`). Their quirks, as distributed:

- every file is read with quoting off: MRPC, RTE, STS-B, MNLI hold unbalanced quote characters;
- CoLA's train/dev have no header (source, label, original label, sentence); its test.tsv has one;
- MRPC's train/dev headers start with a UTF-8 byte-order mark (read as utf-8-sig);
- RTE, QNLI and MNLI labels are strings, mapped to the Hugging Face `datasets` label order;
- QQP names its id column `id`; rows with missing fields (older QQP releases) are skipped, as HF does;
- test files have no labels (-1 here) but an index column that submission files need.

Without `root`, the data comes from Hugging Face `datasets` (optional, needs the network once).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from datamodules.text import SPLITS, TextDataModule, TextFile, TextRows


@dataclass(frozen=True)
class GlueTask:
    """How one GLUE task's files look and what it measures.

    `labels` are the label strings of the TSVs and of GLUE submission files, in the Hugging Face
    `datasets` class order; `class_names` are HF's names for those classes.
    """

    folder: str
    text_columns: tuple[str, ...]
    hf_columns: tuple[str, ...]
    label_column: str
    labels: tuple[str, ...] | None  # None: regression
    class_names: tuple[str, ...] | None
    metrics: tuple[str, ...]
    val_files: tuple[str, ...] = ("dev.tsv",)
    test_files: tuple[str, ...] = ("test.tsv",)
    val_names: tuple[str, ...] = ("",)
    hf_val: tuple[str, ...] = ("validation",)
    hf_test: tuple[str, ...] = ("test",)
    index_column: str = "index"
    headerless_columns: tuple[str, ...] | None = None  # train/dev files without a header line
    skip_malformed: bool = False


_BINARY = ("0", "1")
_ENTAIL = ("entailment", "not_entailment")
_NLI = ("entailment", "neutral", "contradiction")
_PAIR = ("sentence1", "sentence2")

GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask(
        "CoLA", ("sentence",), ("sentence",), "label", _BINARY, ("unacceptable", "acceptable"), ("mcc",),
        headerless_columns=("source", "label", "original_label", "sentence"),
    ),
    "sst2": GlueTask("SST-2", ("sentence",), ("sentence",), "label", _BINARY, ("negative", "positive"), ("acc",)),
    "mrpc": GlueTask(
        "MRPC", ("#1 String", "#2 String"), _PAIR, "Quality", _BINARY, ("not_equivalent", "equivalent"),
        ("acc", "f1"),
    ),
    "qqp": GlueTask(
        "QQP", ("question1", "question2"), ("question1", "question2"), "is_duplicate", _BINARY,
        ("not_duplicate", "duplicate"), ("acc", "f1"), index_column="id", skip_malformed=True,
    ),
    "stsb": GlueTask("STS-B", _PAIR, _PAIR, "score", None, None, ("pearson", "spearman")),
    "mnli": GlueTask(
        "MNLI", _PAIR, ("premise", "hypothesis"), "gold_label", _NLI, _NLI, ("acc",),
        val_files=("dev_matched.tsv", "dev_mismatched.tsv"),
        test_files=("test_matched.tsv", "test_mismatched.tsv"),
        val_names=("m", "mm"),
        hf_val=("validation_matched", "validation_mismatched"),
        hf_test=("test_matched", "test_mismatched"),
    ),
    "qnli": GlueTask("QNLI", ("question", "sentence"), ("question", "sentence"), "label", _ENTAIL, _ENTAIL, ("acc",)),
    "rte": GlueTask("RTE", _PAIR, _PAIR, "label", _ENTAIL, _ENTAIL, ("acc",)),
    "wnli": GlueTask("WNLI", _PAIR, _PAIR, "label", _BINARY, ("not_entailment", "entailment"), ("acc",)),
}  # fmt: skip

STSB_RANGE = (0.0, 5.0)


def _datasets_installed() -> bool:
    try:
        return importlib.util.find_spec("datasets") is not None
    except ValueError:  # present in sys.modules without a spec (e.g. blocked by a test)
        return False


class GLUEDataModule(TextDataModule):
    """One GLUE task: CoLA, SST-2, MRPC, QQP, STS-B, MNLI, QNLI, RTE or WNLI.

    "train" is train.tsv, "val" the dev set(s) (MNLI: matched and mismatched, `val_names` ["m", "mm"]),
    "test" the unlabelled test set(s), served by `predict_dataloader` with GLUE's `index` in the batch;
    `test_dataloader` serves the dev set(s), since GLUE's test labels are hidden.

    Args:
        task: The Hugging Face `datasets` name: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte or wnli.
        root: A folder in the original GLUE layout, `<root>/<TASK>/train.tsv` with GLUE's folder names
            (CoLA, SST-2, MRPC, QQP, STS-B, MNLI, QNLI, RTE, WNLI), or the task folder itself; None loads
            `datasets.load_dataset("glue", task)` (needs the `datasets` package and the network once).
    """

    def __init__(self, task: str, root: str | None = None, **kwargs: Any):
        if task not in GLUE_TASKS:
            raise ValueError(f"data.task={task!r} is not a GLUE task; choose one of {', '.join(GLUE_TASKS)}")
        spec = GLUE_TASKS[task]
        super().__init__(
            train_file=None,
            val_file=None,
            test_file=None,
            text_columns=spec.text_columns,
            label_column=spec.label_column,
            label_names=list(spec.labels) if spec.labels is not None else None,
            num_classes=None,
            regression=spec.labels is None,
            index_column=spec.index_column,
            column_names=None,
            quoting=False,
            metrics=list(spec.metrics),
            **kwargs,
        )
        self.task = task
        self.spec = spec
        if spec.labels is None:
            self.label_range = STSB_RANGE
        self.root = Path(root).expanduser() if root is not None else None
        self.task_dir = self._locate(self.root) if self.root is not None else None
        if self.root is None and not _datasets_installed():
            raise ValueError(self._no_data_message("the Hugging Face `datasets` package is not installed"))
        self._hf: Any = None

    def _locate(self, root: Path) -> Path:
        if not root.is_dir():
            raise FileNotFoundError(f"data.root: {root} does not exist (expected <root>/{self.glue_folder}/train.tsv)")
        for folder in (root / self.glue_folder, root):
            if (folder / "train.tsv").is_file() or (folder.name == self.glue_folder and folder.is_dir()):
                return folder
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise FileNotFoundError(
            f"data.root: {root} has no {self.glue_folder}/ folder for data.task={self.task!r} (folders: {found}); "
            f"expected the GLUE layout <root>/{self.glue_folder}/{{train,dev,test}}.tsv"
        )

    def _no_data_message(self, reason: str) -> str:
        return (
            f"data.root is not set and {reason}: pass --data.root pointing at a GLUE folder "
            f"(<root>/{self.glue_folder}/{{train,dev,test}}.tsv), or install `datasets` on a machine with internet"
        )

    # --- what the model reads right after __init__ ---------------------------------------------------

    @property
    def data_name(self) -> str:
        return self.task

    @property
    def glue_folder(self) -> str:
        """GLUE's folder name of the task, e.g. "RTE"."""
        return self.spec.folder

    @property
    def class_names(self) -> list[str] | None:
        """Hugging Face `datasets` names of the classes (e.g. CoLA unacceptable, acceptable); None for stsb."""
        return list(self.spec.class_names) if self.spec.class_names is not None else None

    @property
    def val_names(self) -> list[str]:
        return list(self.spec.val_names)

    @property
    def prediction_names(self) -> list[str]:
        """Submission file names, one per test set: GLUE's folder name (`RTE`), MNLI's `MNLI-m`, `MNLI-mm`."""
        return [f"{self.glue_folder}-{name}" if name else self.glue_folder for name in self.spec.val_names]

    def __repr__(self) -> str:
        shown: dict[str, object] = {"task": self.task, "root": str(self.root) if self.root is not None else None}
        shown |= {"tokenizer": self.tokenizer_name, "max_length": self.max_length, "batch_size": self.batch_size}
        shown |= {"train_limit": self.train_limit, "seed": self.seed}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    __str__ = __repr__

    # --- rows ----------------------------------------------------------------------------------------

    def available_splits(self) -> list[str]:
        """Every split, but a task folder's test files only where they are: fitting needs train and dev alone (many
        keep GLUE without its unlabelled test files); predict still asks for them, naming the missing file."""
        if self.task_dir is None:
            return list(SPLITS)
        return [s for s in SPLITS if s != "test" or all(file.path.is_file() for file in self.split_files(s))]

    def test_is_labelled(self) -> bool:
        return False

    def split_files(self, split: str) -> list[TextFile]:
        assert self.task_dir is not None
        spec = self.spec
        names = {"train": ("train.tsv",), "val": spec.val_files, "test": spec.test_files}[split]
        # CoLA's test.tsv is the one CoLA file with a header.
        headerless = spec.headerless_columns if split != "test" else None
        return [
            TextFile(
                self.task_dir / name,
                spec.text_columns,
                spec.label_column if split != "test" else None,
                spec.index_column if split == "test" else None,
                headerless,
                quoting=False,
                skip_malformed=spec.skip_malformed,
            )
            for name in names
        ]

    def load_rows(self, split: str) -> list[TextRows]:
        if self.task_dir is not None:
            return super().load_rows(split)
        names = {"train": ("train",), "val": self.spec.hf_val, "test": self.spec.hf_test}[split]
        return [self._hf_rows(name, split) for name in names]

    def _hf_rows(self, name: str, split: str) -> TextRows:
        if self._hf is None:
            try:
                import datasets
            except ImportError:
                raise ValueError(self._no_data_message("the Hugging Face `datasets` package is missing")) from None
            try:
                self._hf = datasets.load_dataset("glue", self.task)
            except Exception as error:  # offline, hub errors: all mean "give me the files"
                raise ValueError(self._no_data_message(f"loading GLUE from Hugging Face failed ({error})")) from error
        table = self._hf[name]
        texts = [list(table[column]) for column in self.spec.hf_columns]
        where = f"{self.task} {split} split (Hugging Face glue/{self.task} {name})"
        dtype = torch.float32 if self.regression else torch.int64
        if split == "test":
            labels = torch.full((len(texts[0]),), -1, dtype=dtype)
            index = torch.as_tensor(list(table["idx"]), dtype=torch.int64)
            return TextRows(texts, labels, index, where, labelled=False)
        values = []
        for row, value in enumerate(table["label"]):
            try:
                values.append(self.parse_label(value))
            except ValueError as error:
                raise ValueError(f"{where} row {row}: {error}") from None
        return TextRows(texts, torch.tensor(values, dtype=dtype), None, where)
