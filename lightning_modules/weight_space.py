"""Arithmetic on the weights of models of one architecture: WiSE-FT interpolation and model soups.

Pure functions over state dicts (parameter and buffer name -> tensor); checkpoints stay the exchange format
(`experiments/weight_space.py` reads them, evaluates the results and writes them back).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

StateDict = dict[str, Tensor]


def check_compatible(states: Sequence[StateDict], names: Sequence[str]) -> None:
    """Raise naming the first state dict whose keys or shapes differ from the first one's."""
    if not states:
        raise ValueError("no state dicts to combine")
    reference = states[0]
    for state, name in zip(states[1:], names[1:], strict=True):
        missing, extra = sorted(reference.keys() - state.keys()), sorted(state.keys() - reference.keys())
        if missing or extra:
            raise ValueError(
                f"{name} does not have the architecture of {names[0]}: keys missing {missing[:3]}, extra {extra[:3]}"
            )
        shapes = [key for key in reference if reference[key].shape != state[key].shape]
        if shapes:
            key = shapes[0]
            raise ValueError(
                f"{name} does not have the architecture of {names[0]}: {key} is {list(state[key].shape)}, "
                f"not {list(reference[key].shape)}"
            )


def interpolate(start: StateDict, end: StateDict, alpha: float) -> StateDict:
    """WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022): the weights
    `(1 - alpha) * start + alpha * end`; alpha 0 is `start` and 1 is `end`, exactly (`torch.lerp`).

    Every floating tensor is mixed (BatchNorm's running statistics too); integer buffers such as BatchNorm's
    `num_batches_tracked` come from the nearer end point."""
    check_compatible([start, end], ["start", "end"])
    mixed = {}
    for key, first in start.items():
        last = end[key]
        if first.is_floating_point():
            mixed[key] = torch.lerp(first.float(), last.float(), alpha).to(first.dtype)
        else:
            mixed[key] = (last if alpha >= 0.5 else first).clone()
    return mixed


def average(states: Sequence[StateDict]) -> StateDict:
    """The uniform soup (Wortsman et al., "Model soups", ICML 2022): the mean of every floating tensor;
    integer buffers from the first state dict."""
    check_compatible(states, [f"state {i}" for i in range(len(states))])
    soup = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            soup[key] = torch.stack([state[key].float() for state in states]).mean(0).to(first.dtype)
        else:
            soup[key] = first.clone()
    return soup


def greedy_soup(
    states: Sequence[StateDict], scores: Sequence[float], score: Callable[[StateDict], float]
) -> tuple[StateDict, list[int]]:
    """The greedy soup (Model soups, Recipe 1): the ingredients in order of their held-out `scores`, best
    first; each joins when the soup with it scores (`score`, on held-out data) at least as well as without.
    Returns the soup and the indices (into `states`) of its ingredients, in the order they joined."""
    check_compatible(states, [f"state {i}" for i in range(len(states))])
    if len(scores) != len(states):
        raise ValueError(f"{len(scores)} scores for {len(states)} state dicts")
    order = sorted(range(len(states)), key=lambda i: -scores[i])
    members, best = [order[0]], scores[order[0]]
    for index in order[1:]:
        candidate = score(average([states[i] for i in [*members, index]]))
        if candidate >= best:
            members, best = [*members, index], candidate
    return average([states[i] for i in members]), members
