"""A callback the DDP test injects by class path: every rank saves its parameters when fit ends."""

import os

import torch
from lightning import Callback


class SaveRankParameters(Callback):
    def __init__(self, directory: str):
        self.directory = directory

    def on_fit_end(self, trainer, pl_module):
        parameters = {k: v.detach().cpu() for k, v in pl_module.named_parameters()}
        torch.save(parameters, os.path.join(self.directory, f"rank{trainer.global_rank}.pt"))
