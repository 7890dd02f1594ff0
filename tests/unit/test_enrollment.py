"""Rules 7 and 8: consent, eligibility and other codes (enrollment feed), one billing practice
per patient-month where the payer says so. Gates are on (the shipped default) unless a test
says otherwise."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from ccm_core import codec
from ccm_core.config import CoreConfig, PracticeSettings
from ccm_core.contracts import (
    BillingLine,
    HoldReason,
    Outcome,
    Reason,
)
from tests.unit.enrollment_helpers import (
    GATED,
    NO_FEED,
    THRESHOLD_MET_GATED,
    attestation,
    code_billed,
    consent,
    enrolled,
    withdrawal,
)
from tests.unit.unit_helpers import (
    CLOSE_AT,
    PRACTICE,
    Harness,
    daily_logs,
    lines_of,
    local,
    log,
)

OTHER = "prac-2"
# rules section 7, written out here rather than read from the code under test
RULES_TIME_NOT_COUNTED_AGAIN = [
    "99491",
    "99437",
    "99424",
    "99425",
    "99426",
    "99427",
    "99484",
    "99492",
    "99493",
    "99494",
    "99495",
    "99496",
]


def gated() -> Harness:
    return Harness(GATED)


# ------------------------------------------------------------------ the gates (rule 7)


def test_rule_7_enrolled_month_is_billable_and_says_why() -> None:
    harness = gated()
    harness.feed(*enrolled(), *daily_logs(90))
    harness.close()
    record = harness.record()
    assert record.billable and record.hold_reasons == []
    assert lines_of(record) == {"99487": 1, "99489": 1} and record.held_lines == []
    assert record.enrollment is not None
    assert record.enrollment.feed is True
    assert record.enrollment.requirements == ["consent", "eligibility"]
    assert record.enrollment.consent.status == "active"
    assert record.enrollment.consent.event_id == f"consent-{PRACTICE}"
    assert record.enrollment.consent.checked_on == date(2026, 3, 31)
    assert record.enrollment.eligibility.status == "eligible"


def test_rule_7_no_consent_holds_the_month_with_its_lines_kept_aside() -> None:
    harness = gated()
    harness.feed(attestation("att"), *daily_logs(90))
    harness.close()
    record = harness.record()
    assert not record.billable
    assert record.hold_reasons == [HoldReason.NO_CONSENT]
    assert record.lines == []
    assert record.held_lines == [
        BillingLine(code="99487", units=1),
        BillingLine(code="99489", units=1),
    ]
    assert record.enrollment is not None and record.enrollment.consent.status == "none"


def test_rule_7_consent_dated_after_the_date_of_service_does_not_count() -> None:
    harness = gated()
    harness.feed(consent("c", date(2026, 4, 2)), attestation("att"), *daily_logs(60))
    harness.close()
    assert harness.record().hold_reasons == [HoldReason.NO_CONSENT]


def test_rule_7_consent_is_checked_on_the_threshold_met_date_when_that_is_the_policy() -> None:
    """threshold_met policy: the date of service is 3 March, consent from 10 March is late."""
    harness = Harness(THRESHOLD_MET_GATED)
    harness.feed(consent("c", date(2026, 3, 10)), attestation("att"), *daily_logs(60, chunk=30))
    harness.close()
    record = harness.record()
    assert record.date_of_service == date(2026, 3, 3)
    assert record.hold_reasons == [HoldReason.NO_CONSENT]
    assert record.enrollment is not None
    assert record.enrollment.consent.checked_on == date(2026, 3, 3)


@pytest.mark.parametrize(
    ("withdrawn_on", "billable"),
    [(date(2026, 3, 20), False), (date(2026, 4, 1), True)],
    ids=["withdrawn-before-dos", "withdrawn-after-dos"],
)
def test_rule_7_withdrawal_before_the_date_of_service_holds(
    withdrawn_on: date, billable: bool
) -> None:
    harness = gated()
    harness.feed(*enrolled(), withdrawal("w", withdrawn_on), *daily_logs(60))
    harness.close()
    record = harness.record()
    assert record.billable is billable
    assert record.hold_reasons == ([] if billable else [HoldReason.NO_CONSENT])
    assert record.enrollment is not None
    assert record.enrollment.consent.status == ("active" if billable else "withdrawn")


def test_rule_7_consent_recorded_again_after_a_withdrawal_counts() -> None:
    harness = gated()
    harness.feed(
        *enrolled(),
        withdrawal("w", date(2026, 2, 10)),
        consent("again", date(2026, 3, 5)),
        *daily_logs(60),
    )
    harness.close()
    assert harness.record().billable


def test_rule_7_consent_of_another_practice_does_not_count() -> None:
    harness = gated()
    harness.feed(consent("c", practice_id=OTHER), attestation("att"), *daily_logs(60))
    harness.close()
    assert harness.record().hold_reasons == [HoldReason.NO_CONSENT]


def test_rule_7_not_attested_holds_the_month() -> None:
    harness = gated()
    harness.feed(consent("c"), attestation("feb", "2026-02"), *daily_logs(60))
    harness.close()
    record = harness.record()
    assert record.hold_reasons == [HoldReason.NOT_ATTESTED]
    assert record.enrollment is not None
    assert record.enrollment.eligibility.status == "not_attested"


@pytest.mark.parametrize(
    "criteria",
    [
        {"conditions": 1},
        {"care_plan": "unchanged"},
        {"care_plan": "none"},
        {"decision_making": "low"},
        {"decision_making": "straightforward"},
    ],
)
def test_rule_7_attestation_short_of_a_criterion_holds_as_not_eligible(
    criteria: dict[str, object],
) -> None:
    harness = gated()
    harness.feed(consent("c"), attestation("att", **criteria), *daily_logs(60))  # type: ignore[arg-type]
    harness.close()
    assert harness.record().hold_reasons == [HoldReason.NOT_ELIGIBLE]


def test_rule_7_the_latest_attestation_of_the_month_holds() -> None:
    harness = gated()
    harness.feed(
        consent("c"),
        attestation("late-good", recorded_at=local(20, 9)),
        attestation("early-bad", conditions=1, recorded_at=local(5, 9)),
        *daily_logs(60),
    )
    harness.close()
    record = harness.record()
    assert record.billable
    assert record.enrollment is not None
    assert record.enrollment.eligibility.event_id == "late-good"


@pytest.mark.parametrize("code", ["99490", "99439", "G0556", "G0557", "G0558"])
def test_rule_7_excluding_code_billed_by_anyone_holds_the_month(code: str) -> None:
    harness = gated()
    harness.feed(*enrolled(), code_billed("other", code), *daily_logs(90))
    harness.close()
    record = harness.record()
    assert record.hold_reasons == [HoldReason.EXCLUDING_CODE_BILLED]
    assert record.enrollment is not None
    [line] = record.enrollment.other_codes
    assert (line.code, line.effect, line.practice_id) == (code, "excludes_month", "other-practice")


def test_rule_7_excluding_code_of_another_month_does_not_hold() -> None:
    harness = gated()
    harness.feed(*enrolled(), code_billed("other", "99490", "2026-02"), *daily_logs(60))
    harness.close()
    assert harness.record().billable


@pytest.mark.parametrize(
    "code",
    RULES_TIME_NOT_COUNTED_AGAIN,
)
@pytest.mark.parametrize("code_first", [True, False], ids=["code-first", "log-first"])
def test_rule_7_time_billed_under_another_code_is_never_counted_again(
    code: str, code_first: bool
) -> None:
    """60 minutes, of which a 30-minute log was billed under ``code``: 30 qualify."""
    harness = gated()
    logs = daily_logs(60, chunk=30)
    billed = code_billed("tcm", code, log_ids=[logs[0]["event_id"]], practice_id=PRACTICE)
    harness.feed(*enrolled())
    harness.feed(*([billed, *logs] if code_first else [*logs, billed]))
    harness.close()
    record = harness.record()
    assert record.qualifying_minutes == 30 and not record.billable
    assert record.hold_reasons == []  # not held: the time is short
    assert record.excluded_minutes_by_rule == {f"billed_under:{code}": 30}
    excluded = [line for line in record.logs if line.status == "excluded"]
    assert [line.event_id for line in excluded] == [logs[0]["event_id"]]


def test_rule_7_time_billed_elsewhere_revokes_a_reached_threshold() -> None:
    harness = gated()
    logs = daily_logs(60, chunk=30)
    harness.feed(*enrolled(), *logs)
    harness.feed(code_billed("tcm", "99495", log_ids=[logs[1]["event_id"]]))
    assert [(t.kind, t.code) for t in harness.thresholds()] == [
        ("reached", "99487"),
        ("revoked", "99487"),
    ]


def test_rule_7_practice_without_feed_switches_the_gates_off_and_says_so() -> None:
    harness = Harness(NO_FEED)
    harness.feed(*daily_logs(60))
    harness.close()
    record = harness.record()
    assert record.billable
    assert record.enrollment is not None
    assert record.enrollment.feed is False and record.enrollment.requirements == []
    assert record.enrollment.consent.status == "none"  # reported, not applied


def test_rule_7_practice_without_feed_is_still_held_by_an_excluding_code() -> None:
    harness = Harness(NO_FEED)
    harness.feed(code_billed("x", "99490"), *daily_logs(60))
    harness.close()
    assert harness.record().hold_reasons == [HoldReason.EXCLUDING_CODE_BILLED]


def test_rule_7_requirements_are_profile_data() -> None:
    """A profile without requirements bills without consent or attestation."""
    from ccm_core.profiles import ProfileSet, load_profiles

    shipped = load_profiles()
    lenient = shipped.profiles["cms"].model_copy(update={"enrollment_requirements": frozenset()})
    config = CoreConfig(profiles=ProfileSet({**shipped.profiles, "cms": lenient}))
    harness = Harness(config)
    harness.feed(*daily_logs(60))
    harness.close()
    record = harness.record()
    assert record.billable
    assert record.enrollment is not None and record.enrollment.requirements == []


def test_rule_7_threshold_event_says_whether_billable_as_things_stand() -> None:
    harness = gated()
    harness.feed(*daily_logs(60))
    harness.feed(*enrolled())
    harness.feed(log("more", local(20), 30))
    reached = {t.code: t for t in harness.thresholds() if t.kind == "reached"}
    assert reached["99487"].billable is False
    assert reached["99487"].hold_reasons == [HoldReason.NO_CONSENT, HoldReason.NOT_ATTESTED]
    assert reached["99489"].billable is True and reached["99489"].hold_reasons == []


# ------------------------------------------------------------------ revisions on enrollment changes


def test_rule_7_consent_arriving_after_close_reissues_the_record_billable() -> None:
    harness = gated()
    harness.feed(attestation("att"), *daily_logs(60))
    harness.close()
    assert harness.record().hold_reasons == [HoldReason.NO_CONSENT]
    result = harness.feed_one(consent("c", recorded_at=CLOSE_AT + timedelta(days=1)))
    assert result.outcome is Outcome.RECORDED
    record = harness.record()
    assert (record.revision, record.billable, record.close_trigger) == (1, True, "late_event")
    assert record.closed_at == CLOSE_AT + timedelta(days=1)


def test_rule_7_withdrawal_and_excluding_code_after_close_each_reissue() -> None:
    harness = gated()
    harness.feed(*enrolled(), *daily_logs(60))
    harness.close()
    later = CLOSE_AT + timedelta(days=2)
    harness.feed(code_billed("apcm", "G0556", recorded_at=later))
    harness.feed(withdrawal("w", date(2026, 3, 1), recorded_at=later + timedelta(hours=1)))
    revisions = sorted(harness.records(), key=lambda r: r.revision)
    assert [(r.revision, r.hold_reasons) for r in revisions] == [
        (0, []),
        (1, [HoldReason.EXCLUDING_CODE_BILLED]),
        (2, [HoldReason.NO_CONSENT, HoldReason.EXCLUDING_CODE_BILLED]),
    ]


def test_rule_7_enrollment_event_that_changes_nothing_does_not_reissue() -> None:
    harness = gated()
    harness.feed(*enrolled(), *daily_logs(60))
    harness.close()
    result = harness.feed_one(consent("again", date(2026, 1, 1)))
    assert result.outputs == []  # the consent in force is still the earlier one: same record


def test_rule_7_enrollment_redelivery_is_a_duplicate_and_reuse_is_a_conflict() -> None:
    harness = gated()
    event = consent("c")
    assert harness.feed_one(event).outcome is Outcome.RECORDED
    assert harness.feed_one(event).outcome is Outcome.DUPLICATE
    changed = consent("c", date(2026, 2, 1))
    conflict = harness.feed_one(changed)
    assert (conflict.outcome, conflict.reason) == (Outcome.REJECTED, Reason.EVENT_ID_CONFLICT)
    log_reuse = harness.feed_one(log("c", local(10), 20))
    assert log_reuse.reason is Reason.EVENT_ID_CONFLICT


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"code": "99487"}, "code"),
        ({"service_month": "2026-13"}, "service_month"),
        ({"chronic_conditions": -1}, "chronic_conditions"),
    ],
)
def test_rule_7_invalid_enrollment_events_are_dead_lettered(
    change: dict[str, object], field: str
) -> None:
    base = code_billed("x", "99490") if "code" in change else attestation("x")
    base.update(change)
    harness = gated()
    result = harness.feed_one(base)
    assert result.outcome is Outcome.REJECTED
    assert result.reason is Reason.INVALID_FIELD
    [dead] = [o for o in harness.outputs if o.kind == "rejected"]
    assert field in dead.envelope.data.message  # type: ignore[union-attr]


def test_rule_7_enrollment_state_survives_the_changelog_codec() -> None:
    harness = gated()
    harness.feed(*enrolled(), code_billed("tcm", "99495", log_ids=["e2"]), *daily_logs(60))
    ledger = harness.local.ledgers["pat-1"]
    restored = codec.loads(codec.dumps(ledger))
    assert restored.enrollment == ledger.enrollment
    body = harness.engine.record_body("pat-1", ledger.months[(PRACTICE, "2026-03")], ledger)
    again = harness.engine.record_body("pat-1", restored.months[(PRACTICE, "2026-03")], restored)
    assert body == again


# ------------------------------------------------------------------ one billing practice (rule 8)


def two_practices(first_minutes: int, second_minutes: int, payer: str) -> list[dict[str, object]]:
    """PRACTICE logs on 2-3 March, OTHER from 10 March: PRACTICE reaches the entry first."""
    return [
        *daily_logs(first_minutes, prefix="a", payer=payer),
        *daily_logs(second_minutes, prefix="b", first_day=10, payer=payer, practice_id=OTHER),
    ]


def test_rule_8_single_biller_first_to_reach_the_entry_threshold_bills() -> None:
    harness = Harness(NO_FEED)
    harness.feed(*two_practices(70, 95, "cms"))
    harness.close_all()
    first, second = harness.record(), _other(harness)
    assert first.single_biller and first.billing_practice_id == PRACTICE
    assert first.billable and lines_of(first) == {"99487": 1}
    assert [(o.practice_id, o.qualifying_minutes, o.billable) for o in first.other_practices] == [
        (OTHER, 95, False)
    ]
    assert not second.billable and second.hold_reasons == [HoldReason.OTHER_PRACTICE_BILLS]
    assert second.held_lines == [
        BillingLine(code="99487", units=1),
        BillingLine(code="99489", units=1),
    ]
    assert [(o.practice_id, o.qualifying_minutes, o.billable) for o in second.other_practices] == [
        (PRACTICE, 70, True)
    ]


def test_rule_8_single_biller_the_consent_holder_bills_before_the_first_to_reach() -> None:
    harness = Harness(NO_FEED)
    harness.feed(consent("c", practice_id=OTHER), *two_practices(70, 95, "cms"))
    harness.close_all()
    assert harness.record().hold_reasons == [HoldReason.OTHER_PRACTICE_BILLS]
    assert _other(harness).billable and _other(harness).billing_practice_id == OTHER


def test_rule_8_single_biller_a_practice_held_by_its_own_gate_leaves_the_month_to_the_other() -> (
    None
):
    harness = gated()
    harness.feed(*enrolled(OTHER), *two_practices(70, 95, "cms"))
    harness.close_all()
    first = harness.record()
    assert first.hold_reasons == [HoldReason.NO_CONSENT, HoldReason.NOT_ATTESTED]
    assert _other(harness).billable and first.billing_practice_id == OTHER


def test_rule_8_bcbsm_both_care_teams_bill() -> None:
    harness = Harness(NO_FEED)
    harness.feed(*two_practices(40, 35, "bcbsm"))
    harness.close_all()
    first, second = harness.record(), _other(harness)
    assert first.billable and second.billable
    assert not first.single_biller and first.billing_practice_id is None
    assert [(o.practice_id, o.billable) for o in first.other_practices] == [(OTHER, True)]


def test_rule_8_time_is_never_pooled_across_practices() -> None:
    harness = Harness(NO_FEED)
    harness.feed(*two_practices(40, 40, "cms"))
    harness.close_all()
    for record in (harness.record(), _other(harness)):
        assert record.qualifying_minutes == 40 and not record.billable
        assert record.hold_reasons == [] and record.billing_practice_id is None


def test_rule_8_a_late_log_at_the_other_practice_reissues_both_records() -> None:
    """OTHER reaches 60 minutes earlier in service time once a late log arrives: the month
    moves to OTHER and both closed records are re-issued."""
    harness = Harness(NO_FEED)
    harness.feed(*two_practices(70, 0, "cms"))
    harness.feed(log("b-early", local(5, 6), 60, practice_id=OTHER))
    harness.close_all()
    assert harness.record().billable and not _other(harness).billable
    late = CLOSE_AT + timedelta(days=1)
    harness.feed(log("b-earlier", local(1, 6), 60, practice_id=OTHER, recorded_at=late))
    first, second = harness.record(), _other(harness)
    assert (first.revision, first.hold_reasons) == (1, [HoldReason.OTHER_PRACTICE_BILLS])
    assert (second.revision, second.billable) == (1, True)


def _other(harness: Harness):  # type: ignore[no-untyped-def]
    found = [r for r in harness.records() if r.practice_id == OTHER]
    return max(found, key=lambda r: r.revision)


def test_rule_8_profile_parameter_decides() -> None:
    config = CoreConfig(default_practice=PracticeSettings(enrollment_feed=False))
    shipped = config.profiles.profiles
    assert shipped["cms"].single_biller and not shipped["bcbsm"].single_biller


@pytest.mark.parametrize("order", [0, 1, 2])
def test_rule_7_a_log_billed_under_two_codes_names_one_rule_whatever_the_order(order: int) -> None:
    logs = daily_logs(60, chunk=30)
    first = code_billed("code-a", "99495", log_ids=[logs[0]["event_id"]])
    second = code_billed("code-b", "99491", log_ids=[logs[0]["event_id"]])
    sequences = [[*logs, first, second], [second, *logs, first], [second, first, *logs]]
    harness = gated()
    harness.feed(*enrolled(), *sequences[order])
    harness.close()
    assert harness.record().excluded_minutes_by_rule == {"billed_under:99495": 30}


def test_rule_7_lookup_summary_says_whether_billable_as_things_stand() -> None:
    harness = gated()
    harness.feed(*daily_logs(60))
    ledger = harness.local.ledgers["pat-1"]
    [summary] = harness.engine.summaries(ledger)
    assert (summary.billable, summary.hold_reasons) == (
        False,
        [HoldReason.NO_CONSENT, HoldReason.NOT_ATTESTED],
    )
    harness.feed(*enrolled())
    [summary] = harness.engine.summaries(ledger)
    assert summary.billable and summary.hold_reasons == []


def test_rule_7_time_billed_elsewhere_updates_the_month_status() -> None:
    harness = gated()
    logs = daily_logs(60, chunk=30)
    harness.feed(*enrolled(), *logs)
    result = harness.feed_one(code_billed("tcm", "99495", log_ids=[logs[1]["event_id"]]))
    [status] = [o.envelope.data for o in result.outputs if o.kind == "status"]
    assert status.qualifying_minutes == 30  # type: ignore[union-attr]
