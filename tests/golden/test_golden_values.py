"""Every strategy's seeded few-step run against its pinned values (`values.json`); see `golden_cases.py` in
tests/helpers for the cases, the tolerance and how to regenerate them after a change meant to move them."""

import pytest
from golden_cases import CASES, differences, pinned, run

PINNED = pinned()


def test_every_case_is_pinned_and_every_pinned_value_has_a_case():
    assert PINNED.keys() == CASES.keys()


@pytest.mark.parametrize("case", list(CASES))
def test_a_seeded_run_reproduces_its_golden_values(case):
    measured = run(case)
    assert len(measured["losses"]) >= 4 and measured["test"]  # a few steps, and metrics to compare
    moved = differences(PINNED[case], measured)
    assert not moved, f"{case} moved (regenerate with tests/helpers/golden_cases.py if meant):\n" + "\n".join(moved)
