"""A strategy of your own: fine-tuning with the L2-SP penalty (Li, Grandvalet & Davoine, ICML 2018), which
pulls the backbone towards its starting (pretrained) weights instead of towards zero.

Subclass the strategy closest to yours and override `compute_loss`; the base module does the rest (metrics,
logging, optimizer groups, checkpoints, resume). The starting weights are a buffer, so a resumed run keeps
pulling towards the weights it started from, not towards the checkpoint's."""

import torch
from torch import Tensor

from lightning_modules import FineTuning


class L2SPFineTuning(FineTuning):
    """Fine-tuning whose training loss adds alpha / 2 * ||w - w0||^2 over the backbone's weights.

    Args:
        alpha: Strength of the pull towards the starting weights w0.
    """

    def __init__(self, alpha: float = 0.01, **kwargs):
        super().__init__(**kwargs)
        self.alpha = alpha
        self.register_buffer("start", self._backbone_vector().detach().clone())

    def _backbone_vector(self) -> Tensor:
        return torch.cat([p.flatten() for p in self.backbone.parameters()])

    def compute_loss(self, batch, stage):
        out = super().compute_loss(batch, stage)
        if stage == "train":
            out["loss"] = out["loss"] + self.alpha / 2 * (self._backbone_vector() - self.start).pow(2).sum()
        return out


if __name__ == "__main__":
    from functools import partial

    from lightning import Trainer, seed_everything

    from datamodules import SyntheticDataModule

    def distance_travelled(alpha: float) -> float:
        seed_everything(0)
        sgd = partial(torch.optim.SGD, lr=0.05)
        model = L2SPFineTuning(alpha=alpha, backbone="tiny_cnn", pretrained=False, num_classes=4, optimizer=sgd)
        trainer = Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
        trainer.fit(model, datamodule=SyntheticDataModule(batch_size=8))
        return float((model._backbone_vector() - model.start).norm())

    print(f"backbone moved {distance_travelled(0.0):.3f} without the pull, {distance_travelled(10.0):.3f} with it")
