import pytest
import torch
from transformers import AutoTokenizer

from lightning_modules import FineTuning
from lightning_modules.backbones import backbone_preprocessing, create_backbone
from lightning_modules.backbones.transformers_encoders import minilm_l6_path


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_l6_path())


def encode(tokenizer, *texts):
    return dict(tokenizer(list(texts), padding=True, return_tensors="pt"))


def test_text_preprocessing_names_the_tokenizer_without_loading_anything():
    assert backbone_preprocessing("minilm_l6").tokenizer == minilm_l6_path()
    assert backbone_preprocessing("hf:bert-base-uncased").tokenizer == "bert-base-uncased"


def test_tiny_bert_contract(tokenizer):
    backbone = create_backbone("tiny_bert", pretrained=False)
    features = backbone(encode(tokenizer, "a short one", "a somewhat longer sentence than the first"))
    assert features.shape == (2, backbone.num_features) == (2, 32)
    groups = backbone.layer_groups()
    assert len(groups) == 1 + 2  # embeddings, two encoder layers; the unused pooler is frozen and left out
    grouped = {id(p) for g in groups for p in g}
    assert grouped == {id(p) for p in backbone.parameters() if p.requires_grad}


def test_minilm_l6_loads_offline_and_embeds_meaning(tokenizer):
    backbone = create_backbone("minilm_l6").eval()
    assert backbone.num_features == 384 and len(backbone.layer_groups()) == 7
    with torch.no_grad():
        a, b, c = backbone(
            encode(
                tokenizer,
                "A man is playing a guitar.",
                "Someone plays the guitar.",
                "The stock market fell sharply today.",
            )
        )
    similar, unrelated = torch.cosine_similarity(a, b, dim=0), torch.cosine_similarity(a, c, dim=0)
    assert similar > 0.6 and unrelated < 0.3


def test_pretrained_encoders_start_in_training_mode():
    # transformers' from_pretrained returns eval mode, and Lightning keeps the modes it finds at fit start.
    backbone = create_backbone("minilm_l6")
    in_eval = [name for name, module in backbone.named_modules() if not module.training]
    assert all(name.startswith("model.pooler") for name in in_eval)  # unused under mean pooling, frozen
    assert backbone.model.encoder.training


def test_mean_pooling_ignores_padding(tokenizer):
    backbone = create_backbone("tiny_bert", pretrained=False).eval()
    backbone.pooling = "mean"
    alone = encode(tokenizer, "padding must not change this")
    padded = encode(
        tokenizer, "padding must not change this", "a much longer companion sentence that forces padding here"
    )
    with torch.no_grad():
        assert torch.allclose(backbone(alone)[0], backbone(padded)[0], atol=1e-5)


def test_fine_tuning_step_on_text(tokenizer):
    model = FineTuning(backbone="tiny_bert", pretrained=False, num_classes=2, lr_decay=0.5)
    batch = encode(tokenizer, "good", "bad") | {"labels": torch.tensor([1, 0])}
    loss = model.compute_loss(batch, "train")["loss"]
    loss.backward()
    assert torch.isfinite(loss) and model.backbone.model.embeddings.word_embeddings.weight.grad is not None
