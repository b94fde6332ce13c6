"""The real tier's own deadline (tests/support.TimeBudget, issue 18 kind 9c): a test out of
time fails by its own check naming each phase and its duration, before pytest's timeout."""

from __future__ import annotations

import pytest

from tests.support import TimeBudget, budget_below_timeout


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_budget_says_where_the_time_went() -> None:
    clock = Clock()
    budget = TimeBudget(600, "smoke campaign test", clock=clock)
    with budget.phase("boot"):
        clock.now += 250
    assert budget.remaining() == pytest.approx(350)
    assert not budget.spent
    with pytest.raises(pytest.fail.Exception) as caught:
        with budget.phase("resume to the end"):
            clock.now += 400
            budget.check("3 of 36 runs stored")
    message = str(caught.value)
    assert message == (
        "smoke campaign test: its 600 s budget is spent (3 of 36 runs stored); "
        "the time went: 1. boot 250 s; 2. resume to the end 400 s (running)"
    )
    assert budget.remaining() == 1.0  # the floor: a last wait still gets to report
    assert "2. resume to the end 400 s;" not in budget.where()  # closed after the block
    assert budget.where().endswith("2. resume to the end 400 s")


def test_no_phase_yet() -> None:
    budget = TimeBudget(10, "t", clock=Clock())
    assert budget.where() == "no phase started"


@pytest.mark.timeout(900)
def test_budget_is_below_this_tests_timeout(request: pytest.FixtureRequest) -> None:
    assert budget_below_timeout(request) == 900 - 240
    assert budget_below_timeout(request, margin=100) == 800


def test_budget_follows_the_ini_timeout(request: pytest.FixtureRequest) -> None:
    assert budget_below_timeout(request) == float(request.config.getini("timeout")) - 240
