"""Rule 3 preamble: every profile rule is data; a new payer is added without code changes."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ccm_core.config import CoreConfig, load_config
from ccm_core.contracts import Activity, Role
from ccm_core.profiles import load_profiles, parse_profiles
from tests.unit.unit_helpers import bill, lines_of, local, log

CUSTOM = """
[profiles.acme_health]
description = "A payer added as data"
version = "2027-01-01"
entry_minutes = 40
addon_first_minutes = 70
addon_every_minutes = 20
addon_max_units = 1
counted_roles = ["rn", "lpn", "ma"]
licensed_only = false
excluded_activities = ["email"]
"""


def test_rule_3_shipped_profiles_are_the_four_of_the_rules_table() -> None:
    """Rule 3: cms, bcbsm, priority_health and medicaid ship as data, each versioned."""
    profiles = load_profiles()
    assert profiles.names() == ["bcbsm", "cms", "medicaid", "priority_health"]
    for name in profiles.names():
        profile = profiles.get(name)
        assert profile is not None and profile.version


def test_rule_3_shipped_profile_rules_match_the_table() -> None:
    """Rule 3 table: who counts and which activities are excluded, per profile."""
    p = load_profiles()
    cms, bcbsm, ph, mcd = (p.get(n) for n in ("cms", "bcbsm", "priority_health", "medicaid"))
    assert cms and bcbsm and ph and mcd
    as_cms = {Activity.PRIOR_AUTHORIZATION, Activity.BENEFIT_CHECK}
    assert cms.excluded_activities == as_cms
    assert ph.excluded_activities == as_cms
    assert mcd.excluded_activities == as_cms
    assert bcbsm.excluded_activities == as_cms | {
        Activity.DOCUMENTATION,
        Activity.GAP_REMINDER,
        Activity.CHART_PREP,
        Activity.EMAIL,
    }
    assert (cms.licensed_only, bcbsm.licensed_only, ph.licensed_only) == (False, False, True)
    assert mcd.excluded_roles == {Role.PHYSICIAN}
    assert (cms.addon_max_units, ph.addon_max_units) == (None, 2)


def test_rule_3_custom_payer_profile_from_user_toml_works_without_code_change(
    tmp_path: Path,
) -> None:
    """Rule 3: a profile loaded from a user TOML file (load_profiles(extra_file)) is billed
    by the unchanged engine: entry 40, add-on at 70, every 20, cap 1, RN/LPN/MA only,
    email excluded."""
    extra = tmp_path / "profiles.toml"
    extra.write_text(CUSTOM, encoding="utf-8")
    profiles = load_profiles(extra)
    assert "acme_health" in profiles.names()
    assert "cms" in profiles.names()  # the shipped ones are kept
    config = CoreConfig(profiles=profiles)

    def run(*events: dict[str, object]) -> dict[str, int]:
        return lines_of(bill(list(events), config))

    assert run(log("a", local(10), 39, payer="acme_health")) == {}
    assert run(log("a", local(10), 40, payer="acme_health")) == {"99487": 1}
    assert run(log("a", local(10), 70, payer="acme_health")) == {"99487": 1, "99489": 1}
    assert run(log("a", local(10), 200, payer="acme_health")) == {"99487": 1, "99489": 1}
    # a physician is not in counted_roles; email is an excluded activity
    record = bill(
        [
            log("md", local(10), 30, payer="acme_health", role="physician"),
            log("em", local(11), 30, payer="acme_health", activity="email"),
            log("rn", local(12), 30, payer="acme_health"),
        ],
        config,
    )
    assert record.qualifying_minutes == 30
    assert record.excluded_minutes_by_rule == {
        "acme_health:excluded_activity:email": 30,
        "acme_health:role_not_counted:physician": 30,
    }
    assert record.profile_version == "2027-01-01"


def test_rule_3_user_file_overrides_a_shipped_profile(tmp_path: Path) -> None:
    """Rule 3 Decision: the BCBSM >75 reading is a profile parameter, correctable as data."""
    extra = tmp_path / "profiles.toml"
    extra.write_text(
        """
[profiles.bcbsm]
version = "2027-02-01"
entry_minutes = 31
addon_first_minutes = 90
addon_every_minutes = 30
excluded_activities = ["email"]
""",
        encoding="utf-8",
    )
    config = load_config(profiles_file=extra)
    record = bill([log("a", local(10), 76, payer="bcbsm")], config)
    assert lines_of(record) == {"99487": 1}  # the add-on now starts at 90
    assert record.profile_version == "2027-02-01"


def test_rule_3_inconsistent_profile_is_refused() -> None:
    """Rule 3: a profile whose add-on threshold is not above its entry threshold is invalid."""
    with pytest.raises(ValidationError):
        parse_profiles(
            "[profiles.bad]\nversion = '1'\nentry_minutes = 60\n"
            "addon_first_minutes = 60\naddon_every_minutes = 30\n"
        )
