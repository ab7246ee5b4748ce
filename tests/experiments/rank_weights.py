"""Callbacks the DDP tests inject by class path: every rank saves its parameters (or whole state) during fit."""

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


class SaveRankState(Callback):
    """Every rank saves its module's whole state (parameters and buffers: weighting state, teacher) when fit
    ends, as `state_rank<r>.pt`."""

    def __init__(self, directory: str):
        self.directory = directory

    def on_fit_end(self, trainer, pl_module):
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, os.path.join(self.directory, f"state_rank{trainer.global_rank}.pt"))
