"""Table 1 helpers: the budget search and the fits, on functions with known answers."""
import math

import numpy as np
import pytest

from suite.experiments import table1


def test_smallest_budget_brackets_the_threshold_within_five_percent():
    rate = 0.99
    error = lambda k: rate ** k                     # noqa: E731
    exact = math.ceil(math.log(1e-4) / math.log(rate))     # 917
    found = table1.smallest_budget(error, 1e-4, 1, cap=10_000)
    assert error(found) <= 1e-4
    assert exact <= found <= 1.05 * exact + 1


def test_smallest_budget_checks_the_cap_itself_and_reports_failure():
    assert table1.smallest_budget(lambda k: 0.0 if k >= 63 else 1.0, 0.5, 1, cap=63) == 63
    with pytest.raises(table1.NotReached, match="not reached within 63"):
        table1.smallest_budget(lambda k: 1.0, 0.5, 1, cap=63)


def test_fits_recover_known_laws():
    kappa = np.array([10.0, 100.0, 1000.0])
    assert table1.fit_exponent(kappa, 3 * kappa ** 0.5) == pytest.approx(0.5)
    deltas = np.array([1e-2, 1e-4, 1e-6])
    per_decade, r2 = table1.fit_log_delta(deltas, 7 + 40 * np.log10(1 / deltas))
    assert per_decade == pytest.approx(40) and r2 == pytest.approx(1.0)
