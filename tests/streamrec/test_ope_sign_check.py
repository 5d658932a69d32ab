"""The demo's OPE-versus-online check: a sign is claimed only where the estimate's interval settles it."""

import pytest

from streamrec.demo import ope_sign_check


@pytest.mark.parametrize(
    ("estimate", "interval", "online_diff", "agrees", "established"),
    [
        (0.30, (0.26, 0.34), +0.10, True, True),  # above the logged 0.24, interval too: a gain, as online
        (0.20, (0.16, 0.23), +0.10, False, True),  # wholly below: a loss, against the online gain
        (0.20, (0.16, 0.23), -0.10, True, True),
        (-0.02, (-0.68, 0.65), +0.27, False, False),  # the demo's LinUCB DR of 2026-12-07: spans 0.24
        (0.30, (-0.10, 0.70), +0.10, True, False),  # the right side by its point value alone
        (0.30, (None, None), +0.10, True, False),  # no interval: nothing established
        (0.30, (0.24, 0.40), +0.10, True, False),  # touching the logged value is not excluding it
    ],
)
def test_a_sign_is_established_only_by_an_interval_that_excludes_the_logged_value(
    estimate, interval, online_diff, agrees, established
) -> None:
    check = ope_sign_check(estimate, interval, 0.24, online_diff)
    assert (check.agrees, check.established) == (agrees, established)
    assert check.verdict.startswith("agrees" if agrees else "DISAGREES")
    assert ("not established" in check.verdict) == (not established)
