from collections import Counter
from functools import partial
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.utilities import CombinedLoader
from support import GLUE_FIXTURES
from torch.utils.data import DataLoader

from datamodules import GLUEDataModule, MultiTaskDataModule, RelabeledDataModule, SyntheticDataModule
from datamodules.multi_task import TaskSchedule, apportion, epoch_steps, task_probabilities
from datamodules.samplers import ResumableDataLoader
from lightning_modules import backbone_preprocessing


class Rows(L.LightningDataModule):
    """`rows` labelled rows, each batch `{"labels", "index"}`: exact counts, no images or tokens."""

    def __init__(self, rows: int, batch_size: int = 10, root: str | None = None):
        super().__init__()
        self.rows, self.batch_size, self.root = rows, batch_size, root
        self.num_classes, self.metrics, self.val_names = 2, ["acc"], [""]

    def _items(self, n):
        return [{"labels": torch.tensor(i % 2), "index": torch.tensor(i)} for i in range(n)]

    def train_dataloader(self):
        return DataLoader(self._items(self.rows), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self._items(4), batch_size=self.batch_size)


def two_tasks(sampling="proportional", epoch="max_size_cycle", small=40, large=120, **kwargs):
    tasks = {"small": partial(Rows, small), "large": partial(Rows, large)}
    return MultiTaskDataModule(tasks, sampling=sampling, epoch=epoch, **kwargs)


def epoch_batches(data: MultiTaskDataModule, epoch: int = 0) -> list[dict]:
    loader = data.train_dataloader()
    if isinstance(loader, CombinedLoader):
        return [batch for batch, _, _ in iter(loader)]
    loader.sampler.set_epoch(epoch)
    return list(loader)


def test_proportional_sampling_is_one_pass_over_every_task_per_epoch():
    batches = epoch_batches(two_tasks("proportional"))
    assert len(batches) == 4 + 12 and all(len(b) == 1 for b in batches)  # one task per step
    tasks = Counter(next(iter(b)) for b in batches)
    assert tasks == {"small": 4, "large": 12}
    for task, rows in (("small", 40), ("large", 120)):
        seen = torch.cat([b[task]["index"] for b in batches if task in b])
        assert sorted(seen.tolist()) == list(range(rows))  # every row once
    order = [next(iter(b)) for b in batches]
    assert order != sorted(order)  # shuffled, not task after task


@pytest.mark.parametrize(
    ("sampling", "epoch", "steps", "counts"),
    [
        ("uniform", "max_size_cycle", 24, {"small": 12, "large": 12}),  # the large task once, the small one cycles
        ("uniform", "min_size", 8, {"small": 4, "large": 4}),  # until the small task runs out
        ("temperature", "max_size_cycle", 19, {"small": 7, "large": 12}),  # p ~ sqrt([4, 12]) = [.366, .634]
        ("temperature", "min_size", 11, {"small": 4, "large": 7}),
    ],
)
def test_sampling_task_frequencies_and_epoch_lengths(sampling, epoch, steps, counts):
    data = two_tasks(sampling, epoch, temperature=2.0)
    batches = epoch_batches(data)
    assert len(batches) == steps == len(data.train_dataloader())
    assert Counter(next(iter(b)) for b in batches) == counts
    assert all(len(b["small"]["labels"]) == 10 for b in batches if "small" in b)  # full batches, cycling


def test_probability_math_by_hand():
    assert task_probabilities([4, 12], "proportional").tolist() == [0.25, 0.75]
    assert task_probabilities([4, 12], "uniform").tolist() == [0.5, 0.5]
    p = task_probabilities([4, 12], "temperature", 2.0)
    assert p.tolist() == pytest.approx([2 / (2 + 12**0.5), 12**0.5 / (2 + 12**0.5)])
    assert task_probabilities([4, 12], "temperature", 1.0).tolist() == pytest.approx([0.25, 0.75])
    assert epoch_steps([4, 12], [0.25, 0.75], "max_size_cycle") == 16 == epoch_steps([4, 12], [0.25, 0.75], "min_size")
    assert apportion([0.5, 0.25, 0.25], 5).tolist() == [3, 1, 1] and apportion([1 / 3] * 3, 7).sum() == 7


@pytest.mark.parametrize(("epoch", "steps"), [("max_size_cycle", 12), ("min_size", 4)])
def test_all_tasks_every_step_uses_combined_loader_epochs(epoch, steps):
    batches = epoch_batches(two_tasks("all", epoch))
    assert len(batches) == steps and all(set(b) == {"small", "large"} for b in batches)


def test_task_order_is_seeded_by_epoch_and_shared_by_ranks_that_read_disjoint_rows():
    ranks = [TaskSchedule([40, 120], [5, 5], [0.25, 0.75], 16, num_replicas=2, rank=r, seed=3) for r in (0, 1)]
    elements = [list(s) for s in ranks]
    assert [t for t, _ in elements[0]] == [t for t, _ in elements[1]]  # same task at each step on both ranks
    for (_, rows0), (_, rows1) in zip(*elements, strict=True):
        assert len(rows0) == len(rows1) == 5 and not set(rows0) & set(rows1)
    first = [t for t, _ in elements[0]]
    ranks[0].set_epoch(1)
    assert [t for t, _ in ranks[0]] != first and sorted(t for t, _ in ranks[0]) == sorted(first)


def test_a_task_with_lengths_gets_length_grouped_batches_of_the_same_rows():
    lengths = np.random.default_rng(0).integers(1, 200, size=400)

    def schedule(grouped):
        return TaskSchedule(
            [400, 40], [10, 10], [0.5, 0.5], 80, seed=1, lengths=[lengths if grouped else None, None], chunk_batches=8
        )

    grouped, plain = list(schedule(True)), list(schedule(False))
    assert [t for t, _ in grouped] == [t for t, _ in plain]  # the task order does not change
    rows = {g: [r for t, r in elements if t == 0] for g, elements in (("grouped", grouped), ("plain", plain))}
    assert sorted(sum(rows["grouped"], [])) == sorted(sum(rows["plain"], [])) == list(range(400))  # each row once
    spread = {g: np.mean([np.ptp(lengths[batch]) for batch in batches]) for g, batches in rows.items()}
    assert spread["grouped"] < spread["plain"] / 4  # similar lengths within a batch
    longest = [lengths[batch].max() for batch in rows["grouped"][:8]]  # the first chunk's batches
    assert longest != sorted(longest, reverse=True)  # shuffled after sorting
    assert [r for t, r in grouped if t == 1] == [r for t, r in plain if t == 1]  # other tasks unaffected
    assert [r for _, r in schedule(True)] == [r for _, r in grouped]  # seeded


def test_a_resumed_schedule_continues_the_epoch_where_it_stopped():
    def schedule():
        return TaskSchedule(
            [40, 120], [5, 5], [0.25, 0.75], 16, seed=3, lengths=[None, np.arange(120)], chunk_batches=2
        )

    full = list(schedule())
    loader = ResumableDataLoader(range(16), sampler=schedule(), batch_size=None, progress=lambda: (6, 16))
    loader.sampler.set_epoch(0)
    state = loader.state_dict()
    resumed = ResumableDataLoader(range(16), sampler=schedule(), batch_size=None)
    resumed.load_state_dict(state)
    assert state["samples"] == 6 and list(resumed.sampler) == full[6:]  # the same rows, none repeated
    assert list(resumed.sampler) == full  # the next epoch (or iteration) starts from its beginning


def test_a_member_with_group_by_length_keeps_it_under_drawn_task_sampling():
    data = MultiTaskDataModule(
        {
            "rte": partial(GLUEDataModule, task="rte", batch_size=2, group_by_length=True),
            "stsb": partial(GLUEDataModule, task="stsb", batch_size=2),
        },
        root=str(GLUE_FIXTURES),
        preprocessing=backbone_preprocessing("tiny_bert"),
        sampling="proportional",
    )
    data.setup("fit")
    schedule = data.train_dataloader().sampler
    assert schedule.lengths[0] is not None and schedule.lengths[1] is None
    assert len(schedule.lengths[0]) == len(data.members["rte"].train_dataloader().dataset)


def test_members_built_with_the_shared_root_and_preprocessing_unless_they_set_their_own():
    preprocessing = backbone_preprocessing("tiny_bert")
    data = MultiTaskDataModule(
        {
            "rte": partial(GLUEDataModule, task="rte", root=str(GLUE_FIXTURES / "RTE")),  # its own root wins
            "mnli": partial(GLUEDataModule, task="mnli"),
            "stsb": partial(GLUEDataModule, task="stsb", batch_size=4),
        },
        root=str(GLUE_FIXTURES),
        preprocessing=preprocessing,
    )
    members = data.members
    assert members["rte"].task_dir == GLUE_FIXTURES / "RTE" and members["mnli"].root == GLUE_FIXTURES
    assert members["stsb"].task_dir == GLUE_FIXTURES / "STS-B" and members["stsb"].batch_size == 4
    assert all(m.tokenizer_name == preprocessing.tokenizer for m in members.values())
    assert data.task_specs == {
        "rte": {"num_classes": 2, "metrics": ["acc"], "val_names": [""]},
        "mnli": {"num_classes": 3, "metrics": ["acc"], "val_names": ["m", "mm"]},
        "stsb": {"num_classes": 1, "metrics": ["pearson", "spearman"], "val_names": [""]},
    }
    assert data.val_sets == [("rte", ""), ("mnli", "m"), ("mnli", "mm"), ("stsb", "")]
    loaders = data.val_dataloader()
    assert [next(iter(next(iter(loader)))) for loader in loaders] == ["rte", "mnli", "mnli", "stsb"]
    batch = next(iter(loaders[-1]))["stsb"]
    assert batch["labels"].dtype == torch.float32 and {"input_ids", "attention_mask"} <= set(batch)
    assert len(data.fingerprint()) == 64


def test_member_errors_name_the_task():
    with pytest.raises(FileNotFoundError, match=r"data\.tasks\.rte: data\.root"):
        MultiTaskDataModule({"rte": partial(GLUEDataModule, task="rte")}, root="/no/such/glue",
                            preprocessing=backbone_preprocessing("tiny_bert"))  # fmt: skip
    with pytest.raises(ValueError, match="task names"):
        MultiTaskDataModule({"train": partial(Rows, 4)})
    with pytest.raises(ValueError, match="data.sampling"):
        MultiTaskDataModule({"a": partial(Rows, 4)}, sampling="random")  # type: ignore[arg-type]


def test_setup_refuses_a_single_task_model():
    data = two_tasks()
    data.trainer = SimpleNamespace(lightning_module=SimpleNamespace(), world_size=1, global_rank=0)
    with pytest.raises(ValueError, match="needs model MultiTask"):
        data.setup("fit")


def test_relabeled_datamodule_groups_source_classes():
    source = partial(SyntheticDataModule, num_classes=4, num_samples=32, batch_size=32, val_fraction=0.25)
    groups = {"low": ["class_0", "class_1"], "high": ["class_2", "class_3"]}
    data = RelabeledDataModule(source, groups)
    data.setup("fit")
    fine = next(iter(data.source.val_dataloader()))["labels"]
    coarse = next(iter(data.val_dataloader()))["labels"]
    assert torch.equal(coarse, (fine >= 2).long()) and data.num_classes == 2 and data.class_names == ["low", "high"]
    assert set(next(iter(data.train_dataloader()))["labels"].tolist()) <= {0, 1}
    with pytest.raises(ValueError, match=r"in none \['class_3'\]"):
        RelabeledDataModule(source, {"low": ["class_0", "class_1"], "high": ["class_2"]})


def test_all_tasks_resume_mid_epoch_with_the_cycled_shorter_task_at_its_place():
    """With every task at every step, `CombinedLoader` restarts the shorter task when it runs out; a resumed
    epoch continues each task where the interrupted one stood, the relabelled task (its own loader) included."""
    low_high = {"low": ["class_0", "class_1"], "high": ["class_2", "class_3"]}
    tasks = {
        "large": partial(SyntheticDataModule, num_samples=80, batch_size=8, augment=False),  # 64 train rows: 8 batches
        "small": partial(  # 24 training rows: 3 batches, cycled
            RelabeledDataModule,
            source=partial(SyntheticDataModule, num_samples=30, batch_size=8, seed=1, augment=False),
            groups=low_high,
        ),
    }

    def loader(processed: int) -> CombinedLoader:
        data = MultiTaskDataModule(tasks, sampling="all")
        loop = SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(
            current=SimpleNamespace(processed=processed))))  # fmt: skip
        data.trainer = SimpleNamespace(fit_loop=loop, num_training_batches=8, world_size=1, global_rank=0)
        data.setup("fit")
        return data.train_dataloader()

    def rows(combined: CombinedLoader) -> list[tuple[list[int], list[int]]]:
        return [(b["large"]["index"].tolist(), b["small"]["index"].tolist()) for b, _, _ in iter(combined)]

    full = rows(loader(0))
    assert len(full) == 8 and full[3][1] == full[0][1]  # the small task restarts at the fourth step
    for done in (2, 4, 5):  # in its first cycle, in the second (4 = 3 + 1), at the end of one
        state = [part.state_dict() for part in loader(done).flattened]
        resumed = loader(0)
        for part, saved in zip(resumed.flattened, state, strict=True):
            part.load_state_dict(saved)
        assert rows(resumed) == full[done:], done
