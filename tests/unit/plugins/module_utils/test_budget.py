# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The phases of a task's timeout: forward work, and a reserve kept for undo, force and read-back."""

from __future__ import annotations

import math

import pytest

from ansible_collections.xen.pci.plugins.module_utils._budget import (
    READBACK_GRACE, TIMEOUT_MAX, TIMEOUT_MIN, Budget, check_timeout, reserve_for)


@pytest.mark.parametrize("seconds, reserve", [(1, 0.5), (4, 2.0), (8, 2.0), (30, 7.5), (60, 15.0), (600, 30.0)])
def test_the_reserve_is_a_quarter_with_a_floor_and_a_cap(seconds, reserve):
    assert math.isclose(reserve_for(seconds), reserve)
    budget = Budget(seconds)
    assert math.isclose(budget.work.seconds, seconds - reserve)
    assert budget.reserve().remaining() >= reserve - 0.05


def test_force_gets_a_share_of_what_is_left_of_the_work():
    budget = Budget(30)
    half = budget.share(0.5, "release")
    assert 11.0 <= half.remaining() <= 11.3


def test_the_read_back_always_gets_its_grace():
    budget = Budget(1)
    budget.total.end = budget.total.start      # as if the whole timeout were spent
    assert budget.final().remaining() >= READBACK_GRACE - 0.05


@pytest.mark.parametrize("value", [0, -1, 0.5, TIMEOUT_MAX + 1, float("inf"), float("-inf"), float("nan"), 1e300, True,
                                   "10", None])
def test_a_timeout_out_of_range_or_not_a_number_is_refused(value):
    problem = check_timeout(value)
    assert problem and problem.startswith("timeout must be")
    with pytest.raises(ValueError):
        Budget(value)


@pytest.mark.parametrize("value", [TIMEOUT_MIN, 2, 60.0, TIMEOUT_MAX])
def test_a_timeout_in_range_is_taken(value):
    assert check_timeout(value) is None
