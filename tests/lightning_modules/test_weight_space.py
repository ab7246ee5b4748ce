"""WiSE-FT interpolation and model soups on real state dicts of a tiny model."""

import pytest
import torch

from lightning_modules import FineTuning
from lightning_modules.weight_space import average, check_compatible, greedy_soup, interpolate


def state(seed):
    torch.manual_seed(seed)
    model = FineTuning(backbone="tiny_cnn", pretrained=False, num_classes=3)
    for module in model.modules():  # BatchNorm statistics that differ between models
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.num_batches_tracked.fill_(seed + 1)
    return model.state_dict()


def equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_interpolation_at_0_and_1_reproduces_the_end_points_and_mixes_linearly_between():
    start, end = state(0), state(1)
    assert equal(interpolate(start, end, 0.0), start)
    assert equal(interpolate(start, end, 1.0), end)
    middle = interpolate(start, end, 0.25)
    key = next(k for k, v in start.items() if v.is_floating_point() and v.ndim > 1)
    assert torch.allclose(middle[key], 0.75 * start[key] + 0.25 * end[key], atol=1e-6)
    running = next(k for k in start if k.endswith("running_mean"))
    assert torch.allclose(middle[running], 0.75 * start[running] + 0.25 * end[running], atol=1e-6)
    counts = next(k for k in start if k.endswith("num_batches_tracked"))
    assert middle[counts].dtype == torch.int64 and torch.equal(middle[counts], start[counts])
    assert torch.equal(interpolate(start, end, 0.75)[counts], end[counts])


def test_a_soup_of_identical_state_dicts_is_that_state_dict_and_a_uniform_soup_is_the_mean():
    one = state(0)
    soup = average([one, one, one])
    assert all(torch.allclose(soup[k].float(), one[k].float(), atol=1e-7) for k in one)
    two, three = state(1), state(2)
    mean = average([one, two, three])
    for key, value in one.items():
        if value.is_floating_point():
            assert torch.allclose(mean[key], (value + two[key] + three[key]) / 3, atol=1e-6)


def test_the_greedy_soup_adds_an_ingredient_only_when_the_held_out_score_does_not_drop():
    states = [state(seed) for seed in range(4)]
    key = next(k for k, v in states[0].items() if v.is_floating_point() and v.ndim > 1)
    target = states[2][key]  # held-out "score": closeness to ingredient 2's weights

    def score(candidate):
        return -float((candidate[key] - target).norm())

    scores = [score(s) for s in states]
    soup, members = greedy_soup(states, scores, score)
    assert members[0] == 2  # the best ingredient comes first ...
    assert members == [2]  # ... and averaging any other in moves away from it
    assert equal(soup, average([states[2]]))
    calls = []
    soup, members = greedy_soup(states, [3.0, 2.0, 1.0, 0.0], lambda s: calls.append(1) or 5.0)
    assert members == [0, 1, 2, 3] and len(calls) == 3  # every addition kept the score: all join


def test_models_of_different_architectures_are_named():
    first = state(0)
    different = {**first, "head.weight": torch.zeros(5, first["head.weight"].shape[1])}
    with pytest.raises(ValueError, match=r"end does not have the architecture of start: head.weight is \[5, "):
        interpolate(first, different, 0.5)
    fewer = {k: v for k, v in first.items() if k != "head.bias"}
    with pytest.raises(ValueError, match=r"state 1 does not have the architecture of state 0: keys missing \['head.b"):
        average([first, fewer])
    with pytest.raises(ValueError, match="no state dicts"):
        check_compatible([], [])
