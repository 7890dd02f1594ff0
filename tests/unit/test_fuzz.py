"""Fuzzing as properties (hypothesis): arbitrary bytes, arbitrary JSON and mutated valid events
through decode, apply, output serialisation and the ledger codec round trip.

``process`` turns a failure of the service into an ``internal_error`` dead letter rather than
raising, so "nothing raises" is asserted as: no input ends as ``internal_error``, and every
input has exactly one outcome (a rejected input exactly one dead letter, any other none).
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccm_core import codec
from ccm_core.contracts import Outcome, Reason
from ccm_core.ingest import LocalTally, Processed, Source
from ccm_core.tally import PatientLedger
from tests.unit.enrollment_helpers import attestation, code_billed, consent, withdrawal
from tests.unit.hostile import HOSTILE_PAYLOADS, base_log
from tests.unit.test_schema_oracle import FIELDS, mutate, timestamps, values
from tests.unit.unit_helpers import CLOSE_AT, local, log, void

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_one(tally: LocalTally, raw: bytes, offset: int) -> Processed:
    """Feed one input; assert it has exactly one outcome and serialisable outputs."""
    processed = tally.feed(raw, Source("fuzz", 0, offset))
    assert processed.reason is not Reason.INTERNAL_ERROR, processed.detail
    dead = [o for o in processed.outputs if o.kind == "rejected"]
    if processed.outcome is Outcome.REJECTED:
        assert processed.reason is not None and len(dead) == 1
    else:
        assert processed.reason is None and dead == []
    for out in processed.outputs:
        json.loads(out.to_json())
    return processed


def check_state(tally: LocalTally, fed: int) -> None:
    """Every input counted once; every ledger survives the codec; closing serialises."""
    assert sum(tally.outcomes.values()) == fed
    for ledger in tally.ledgers.values():
        raw = codec.dumps(ledger)
        assert codec.dumps(codec.loads(raw)) == raw
    for out in tally.close_all(CLOSE_AT + timedelta(days=400)):
        json.loads(out.to_json())


@FUZZ
@given(st.lists(st.binary(max_size=2000), min_size=1, max_size=5))
def test_fuzz_arbitrary_bytes(inputs: list[bytes]) -> None:
    """Arbitrary bytes: each is an outcome (a dead letter), nothing raises."""
    tally = LocalTally()
    for offset, raw in enumerate(inputs):
        assert check_one(tally, raw, offset).outcome is Outcome.REJECTED
    check_state(tally, len(inputs))


@FUZZ
@given(st.lists(values, min_size=1, max_size=5))
def test_fuzz_arbitrary_json(inputs: list[Any]) -> None:
    """Arbitrary JSON values (and lone surrogates among their strings): one outcome each."""
    tally = LocalTally()
    for offset, value in enumerate(inputs):
        check_one(tally, json.dumps(value).encode(), offset)
    check_state(tally, len(inputs))


_ids = st.sampled_from(["e-1", "e-2", "e-3", "v-1", "v-2"])
_valid_events = st.one_of(
    st.builds(
        lambda eid, day, minutes, role, payer: log(
            eid, local(day), minutes, role=role, payer=payer
        ),
        _ids,
        st.integers(min_value=1, max_value=28),
        st.integers(min_value=1, max_value=600),
        st.sampled_from(["rn", "ma", "physician", "chw"]),
        st.sampled_from(["cms", "bcbsm", "priority_health", "medicaid", "unknown"]),
    ),
    st.builds(void, _ids, _ids),
    # the enrollment feed's events, decoded by the same union
    st.builds(lambda eid, day: consent(eid, date(2026, 3, day)), _ids, st.integers(1, 28)),
    st.builds(lambda eid, day: withdrawal(eid, date(2026, 3, day)), _ids, st.integers(1, 28)),
    st.builds(
        lambda eid, n, plan: attestation(eid, conditions=n, care_plan=plan),
        _ids,
        st.integers(0, 4),
        st.sampled_from(["established", "revised", "unchanged", "none"]),
    ),
    st.builds(
        lambda eid, code, ids: code_billed(eid, code, log_ids=ids),
        _ids,
        st.sampled_from(["99490", "99491", "G0556", "99484"]),
        st.lists(_ids, max_size=3),
    ),
)
_mutations = st.lists(
    st.tuples(st.sampled_from([*FIELDS, "extra"]), st.one_of(st.just(...), values, timestamps)),
    max_size=2,
)


@FUZZ
@given(st.lists(st.tuples(_valid_events, _mutations), min_size=1, max_size=12))
def test_fuzz_mutated_valid_events_through_apply_and_codec(
    inputs: list[tuple[dict[str, Any], list[tuple[str, Any]]]],
) -> None:
    """Sequences of valid events, some mutated, of one patient: every one an outcome, the
    ledger always persistable, the records serialisable."""
    tally = LocalTally()
    for offset, (event, changes) in enumerate(inputs):
        check_one(tally, json.dumps(mutate(event, changes)).encode(), offset)
    check_state(tally, len(inputs))


_HOSTILE_NAMES = [name for name, _ in HOSTILE_PAYLOADS]  # drawn by name: short reports


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(_HOSTILE_NAMES), min_size=1, max_size=4), st.data())
def test_fuzz_hostile_payloads_interleaved_with_valid_events(
    hostile: list[str], data: st.DataObject
) -> None:
    """The hostile list among valid events: valid events are tallied exactly as without the
    hostile ones, and each hostile payload is one dead letter. A hostile log whose patient,
    practice and start are valid is also listed on its month's record (rules 6: the record
    lists rejected logs), with its dead letter's reason and nothing else changed."""
    payloads = dict(HOSTILE_PAYLOADS)
    valid = [
        json.dumps(base_log(f"ok-{i}", start=local(2 + i).isoformat())).encode() for i in range(4)
    ]
    mixed: list[bytes] = list(valid)
    for name in hostile:
        mixed.insert(data.draw(st.integers(0, len(mixed))), payloads[name])
    clean, dirty = LocalTally(), LocalTally()
    for offset, raw in enumerate(valid):
        check_one(clean, raw, offset)
    reasons: list[str] = []
    for offset, raw in enumerate(mixed):
        processed = check_one(dirty, raw, offset)
        if processed.outcome is Outcome.REJECTED:
            assert processed.reason is not None
            reasons.append(processed.reason.value)
    assert len(reasons) == len(hostile)
    ledger = codec.loads(codec.dumps(dirty.ledgers["pat-1"]))  # a copy
    for reason in without_listed_rejections(ledger):
        reasons.remove(reason)  # each listing is one hostile payload's, with its reason
    assert codec.dumps(ledger) == codec.dumps(clean.ledgers["pat-1"])
    check_state(dirty, len(mixed))


def without_listed_rejections(ledger: PatientLedger) -> list[str]:
    """Remove the rejected logs listed on the months (and a month only they opened); return
    their reasons."""
    reasons: list[str] = []
    for key, month in list(ledger.months.items()):
        reasons += [reason for _, reason, _ in month.rejected]
        month.rejected = []
        if not month.logs:
            del ledger.months[key]
    return reasons
