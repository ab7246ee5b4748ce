"""A callback the DDP tests inject by class path: every rank saves its parameters when fit starts and ends."""

import os

import torch
from lightning import Callback


class SaveRankParameters(Callback):
    def __init__(self, directory: str):
        self.directory = directory

    def save(self, trainer, pl_module, prefix):
        parameters = {k: v.detach().cpu().clone() for k, v in pl_module.named_parameters()}
        torch.save(parameters, os.path.join(self.directory, f"{prefix}rank{trainer.global_rank}.pt"))

    def on_fit_start(self, trainer, pl_module):
        self.save(trainer, pl_module, "start_")

    def on_fit_end(self, trainer, pl_module):
        self.save(trainer, pl_module, "")
