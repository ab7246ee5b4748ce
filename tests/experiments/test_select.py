"""`transfer select` and its validation: candidates, cut points, the ranked report, early errors, offline."""

import json

import pytest
import torch
import yaml

from experiments.select import main as select_main
from experiments.selection.candidates import Candidate, CutBackbone, parse_candidates, prepare
from experiments.selection.run import Scored
from experiments.selection.spec import load_selection
from experiments.selection.validate import Target, correlations, load_validation
from lightning_modules import create_backbone

TINY_DATA = {
    "model": {"class_path": "lightning_modules.FineTuning", "init_args": {"backbone": "tiny_cnn", "pretrained": False}},
    "data": {"class_path": "datamodules.SyntheticDataModule", "init_args": {"num_classes": 3, "num_samples": 48}},
}
CANDIDATES = {
    "cnn": {"backbone": "tiny_cnn", "pretrained": False},
    "cnn_block1": {"backbone": "tiny_cnn", "pretrained": False, "cut": "block1"},
    "mlp": {"backbone": "tiny_mlp", "pretrained": False},
}


@pytest.fixture
def selection_file(tmp_path):
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(TINY_DATA))
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"configs": "data.yaml", "candidates": CANDIDATES, "scores": ["logme", "knn"]}))
    return path


def run_select(args, tmp_path):
    return select_main([*map(str, args), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": {"backbone": "tiny_cnn", "cutt": "block1"}}, "unknown keys ['cutt']"),
        ({"a": {"weights": "x.pt"}}, "expected a backbone name or a mapping with `backbone`"),
        ({"a": {"backbone": "minilm_l6", "layers": 0}}, "a.layers: expected a positive number"),
        ({"a": {"backbone": "minilm_l6", "pooling": "max"}}, "a.pooling: expected one of cls, mean, pooler"),
        ({"a": {"backbone": "tiny_cnn", "set": ["x"]}}, "a.set: expected a mapping"),
        ("tiny_cnn", "expected a list of backbone names or a mapping"),
    ],
)
def test_bad_candidates_are_named(value, message):
    with pytest.raises(ValueError, match="where") as raised:
        parse_candidates(value, "where")
    assert message in str(raised.value)


def test_a_list_of_names_becomes_candidates_named_after_their_backbones():
    candidates = parse_candidates(["tiny_cnn", "tiny_mlp"], "--candidates")
    assert [(c.name, c.backbone, c.pretrained) for c in candidates] == [
        ("tiny_cnn", "tiny_cnn", True),
        ("tiny_mlp", "tiny_mlp", True),
    ]


def test_a_cut_backbone_returns_the_pooled_output_of_the_cut_module_and_stops_there():
    backbone = create_backbone("tiny_cnn", pretrained=False).eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = backbone.block1(images).mean((2, 3))
        cut = CutBackbone(backbone, "block1")
        assert torch.allclose(cut(images), expected)
    calls = []
    backbone.block2.register_forward_hook(lambda *_: calls.append(1))
    cut(images)
    assert calls == []  # the layers after the cut are not computed
    with pytest.raises(ValueError, match=r"cut 'block9'.*\['block1', 'block2', 'pool'\]"):
        CutBackbone(backbone, "block9")


def test_layers_and_pooling_apply_to_text_encoders_only():
    backbone = create_backbone("tiny_cnn", pretrained=False)
    with pytest.raises(ValueError, match="candidate c: `layers` and `pooling` apply to transformers encoders"):
        prepare(backbone, Candidate("c", "tiny_cnn", pretrained=False, pooling="mean"))


def test_a_random_control_has_no_source_classifier():
    assert not Candidate("c", "efficientnet_lite0", pretrained=False).keeps_source_head
    assert Candidate("c", "efficientnet_lite0").keeps_source_head
    assert Candidate("c", "efficientnet_lite0", pretrained=False, weights="w.pt").keeps_source_head


def test_select_ranks_the_candidates_into_a_report_and_reuses_the_feature_cache(selection_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_select([selection_file, "--out", out], tmp_path) == 0
    report = json.loads((out / "results.json").read_text())
    rows = report["candidates"]
    assert {r["candidate"] for r in rows} == set(CANDIDATES)
    assert [r["rank"] for r in rows] == [1, 2, 3]
    logme = [r["logme"] for r in rows]
    assert logme == sorted(logme, reverse=True)  # ranked by the first score given
    assert all(0.0 <= r["knn"] <= 1.0 for r in rows)
    assert "linear_probe" not in rows[0] and "leep" not in rows[0]  # only the scores asked for
    dims = {r["candidate"]: r["dim"] for r in rows}
    assert dims == {"cnn": 16, "cnn_block1": 8, "mlp": 32}
    assert (out / "results.csv").read_text().splitlines()[0].startswith("rank,candidate,backbone")
    assert (out / "plots" / "scores.png").stat().st_size > 0
    assert "| rank | candidate |" in (out / "results.md").read_text()
    capsys.readouterr()

    assert run_select([selection_file, "--out", out, "--rank-by", "knn"], tmp_path) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["rank_by"] == "knn"
    assert {r["candidate"]: r["logme"] for r in again["candidates"]} == {r["candidate"]: r["logme"] for r in rows}
    assert "Features read from the feature cache: cnn, cnn_block1, mlp" in (out / "results.md").read_text()


def test_select_without_a_file_takes_the_data_config_and_candidate_names(tmp_path, capsys):
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(TINY_DATA))
    out = tmp_path / "out"
    # --candidates names build pretrained backbones; the tiny ones have no weights: a clear error, no report
    args = ["-c", tmp_path / "data.yaml", "--candidates", "tiny_mlp", "--scores", "h_score", "--out", out]
    assert run_select(args, tmp_path) == 2
    assert "candidate tiny_mlp: " in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--scores", "logmee"], "unknown score 'logmee'"),
        (["--rank-by", "leep", "--scores", "knn"], "leep"),
        (["--set", "data.init_args.num_classes=1"], "candidate cnn"),
        (["--set", "data.init_args.no_such_key=1"], "no_such_key"),
    ],
)
def test_bad_selections_fail_before_any_work(selection_file, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert run_select([selection_file, "--out", out, *extra], tmp_path) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"configs": "data.yaml", "candidates": {"a": {"backbone": "x", "cutt": 1}}}, r"candidates.a: unknown keys"),
        ({"configs": "nope.yaml", "candidates": ["tiny_cnn"]}, r"configs: config file nope.yaml not found"),
        ({"configs": "data.yaml"}, r"`candidates` is missing"),
        ({"configs": "data.yaml", "candidates": ["tiny_cnn"], "scores": "knn"}, r"scores: expected a list"),
    ],
)
def test_a_selection_file_names_its_bad_keys(tmp_path, content, message):
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(TINY_DATA))
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(ValueError, match=r"bad.yaml: " + message):
        load_selection(path)


def test_the_shipped_selection_files_load():
    from experiments.cli import CONFIGS

    selections = CONFIGS.parent / "selections"
    digits = load_selection(selections / "digits.yaml")
    assert {"lite0", "lite0_block3", "resnet56_layer2", "resnet20_random"} <= {c.name for c in digits.candidates}
    validation = load_validation(selections / "validation_vision.yaml")
    assert [t.name for t in validation.targets] == ["digits", "imagenette", "cifar10"]
    assert validation.study is not None and validation.study.is_file()
    study = yaml.safe_load(validation.study.read_text())
    whole = {c.name for c in validation.candidates if c.cut is None}
    assert set(study["axes"]["candidate"]) <= whole  # arm names are candidate names


def scored(name, value):
    return Scored(Candidate(name, "tiny_cnn"), {"logme": value, "knn": -value}, 4, 10, 0.0)


def test_correlations_are_per_target_rank_correlations_with_the_reached_scores():
    truth = {"a": 0.9, "b": 0.5, "c": 0.7, "d": 0.1}
    agree = Target("agree", (), (), [scored(n, v) for n, v in truth.items()], {"probe": truth})
    too_small = Target("small", (), (), [scored("a", 1.0), scored("b", 2.0)], {"probe": {"a": 1.0, "b": 2.0}})
    found = {(c.score, c.truth): c for c in correlations([agree, too_small])}
    logme, knn = found[("logme", "probe")], found[("knn", "probe")]
    assert set(logme.per_target) == {"agree"}  # fewer than 3 candidates: left out
    assert logme.per_target["agree"] == pytest.approx((1.0, 1.0, 4))
    assert knn.per_target["agree"] == pytest.approx((-1.0, -1.0, 4))
    assert ("logme", "finetune") not in found


@pytest.mark.parametrize("backbone", ["tiny_cnn", "efficientnet_lite0", "cifar_resnet20"])
def test_each_candidate_reads_the_data_with_its_own_backbone_preprocessing(tmp_path, backbone):
    from dataclasses import asdict

    from experiments.ablation.plan import resolve
    from experiments.selection.run import build_datamodule, target_data
    from lightning_modules.backbones import backbone_preprocessing

    (tmp_path / "data.yaml").write_text(yaml.safe_dump(TINY_DATA))
    resolved = resolve(["-c", str(tmp_path / "data.yaml"), "--model.init_args.backbone", backbone])[0]
    expected = backbone_preprocessing(backbone)
    assert target_data(resolved)["init_args"]["preprocessing"] == asdict(expected)
    datamodule = build_datamodule(target_data(resolved))
    assert datamodule.preprocessing == expected and datamodule.image_size == expected.image_size


def test_the_probe_truth_is_scored_on_the_split_transfer_fit_tests():
    from experiments.selection.validate import tested_split

    class HiddenTestLabels:  # GLUE: test labels hidden, `transfer fit` tests on the dev set
        def test_is_labelled(self):
            return False

    assert tested_split(HiddenTestLabels()) == "val"
    assert tested_split(object()) == "test"


def test_the_selection_table_is_logged_to_wandb_offline_and_never_raises(tmp_path, monkeypatch):
    import wandb

    from experiments.selection.report import log_wandb_table

    monkeypatch.setenv("WANDB_MODE", "offline")
    results = [scored("a", 1.0), scored("b", 2.0)]
    message = log_wandb_table(results, "logme", "tiny", "transfer", tmp_path / "wb")
    assert "offline" in message and list((tmp_path / "wb" / "wandb").rglob("*.wandb"))
    monkeypatch.setattr(wandb, "init", lambda **kwargs: (_ for _ in ()).throw(RuntimeError("no service")))
    assert "not logged (RuntimeError: no service)" in log_wandb_table(results, "logme", "t", "p", tmp_path / "wb2")
