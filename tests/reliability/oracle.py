"""The oracle of the reliability suite: ``ccm-tally replay`` semantics on the same inputs.

Pure (no broker): :func:`replay` runs the inputs through :class:`ccm_core.ingest.LocalTally`
and closes every month with the scenario's final close command; :func:`compare` sets what the
stream published (and what ``/tally`` answered) against it and returns the :class:`Figures`.
Every figure comes from that comparison; nothing is hard-coded.

What a consumer relies on, and so what is compared (README, "Topics and schemas"):
- outputs are deduplicated on the envelope ``id``; one id must always carry the same envelope
  (``duplicate_ids_different_content``);
- billing records: the highest ``revision`` per ``record_id`` is the record; its content must
  be the replay's (without ``revision``, ``closed_at`` and ``close_trigger``, which say when
  and why it was issued, not what is billed);
- thresholds: the same set of deterministic ids;
- qualifying minutes per patient-month (read from the final records) must be the replay's:
  fewer are minutes lost, more are minutes counted twice;
- dead letters: the same (reason, original payload) multiset after deduplicating on id.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ccm_core.contracts import MonthCloseCommand
from ccm_core.ingest import LocalTally, Source

Envelope = dict[str, Any]
PatientMonth = tuple[str, str, str]  # patient, practice, service month

_ISSUE_FIELDS = ("revision", "closed_at", "close_trigger")
_KINDS = {"rejected": "dlq"}  # output kind -> name in ops.read_outputs (else the kind itself)


def output_name(kind: str) -> str:
    """Where ``ccm_worker.ops.read_outputs`` files outputs of ``kind`` (dead letters as
    ``dlq``; every other kind under its own name, new kinds included)."""
    return _KINDS.get(kind, kind)


@dataclass
class Expected:
    """What replay says about the inputs, closed by the final close command."""

    outputs: dict[str, list[Envelope]]
    summaries: dict[str, list[dict[str, Any]]]
    """Per patient: the look-up view (``/tally``) of each month, as the engine summarises it."""


def replay(inputs: Iterable[bytes], final_close: MonthCloseCommand) -> Expected:
    """``inputs`` in the order each patient's events were produced, then the final close."""
    tally = LocalTally()
    out: dict[str, list[Envelope]] = defaultdict(list)
    for name in ("threshold", "billing_record", "dlq", "status"):
        out[name] = []
    for offset, value in enumerate(inputs):
        for o in tally.feed(value, Source("replay", 0, offset)).outputs:
            out[output_name(o.kind)].append(json.loads(o.to_json()))
    for o in tally.close(final_close):
        out[output_name(o.kind)].append(json.loads(o.to_json()))
    summaries = {
        pid: [m.model_dump(mode="json") for m in tally.engine.summaries(ledger)]
        for pid, ledger in tally.ledgers.items()
    }
    return Expected(out, summaries)


@dataclass
class Figures:
    """One scenario's figures. The data figures (:attr:`DATA`) must all be 0."""

    scenario: str
    events_in: int = 0
    unprocessed: int = 0
    minutes_lost: int = 0
    minutes_twice: int = 0
    records_differ: int = 0
    thresholds_missing: int = 0
    thresholds_extra: int = 0
    duplicate_ids_different_content: int = 0
    dead_letters_expected: int = 0
    dead_letters_out: int = 0
    dead_letters_differ: int = 0
    status_differ: int = 0
    tally_checked: int = 0
    tally_differ: int = 0
    recover_seconds: list[float] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    DATA = (
        "unprocessed",
        "minutes_lost",
        "minutes_twice",
        "records_differ",
        "thresholds_missing",
        "thresholds_extra",
        "duplicate_ids_different_content",
        "dead_letters_differ",
        "status_differ",
        "tally_differ",
    )

    def data(self) -> dict[str, int]:
        return {name: int(getattr(self, name)) for name in self.DATA}

    def failing(self) -> dict[str, int]:
        return {k: v for k, v in self.data().items() if v != 0}

    def line(self) -> str:
        rec = self.recover_seconds
        recovery = (
            f"{len(rec)} x, max {max(rec):.1f} s, mean {sum(rec) / len(rec):.1f} s, "
            f"each [{', '.join(f'{s:.1f}' for s in rec)}]"
            if rec
            else "-"
        )
        parts = [
            f"events in {self.events_in}",
            f"unprocessed {self.unprocessed}",
            f"minutes lost {self.minutes_lost}",
            f"minutes counted twice {self.minutes_twice}",
            f"records differing from replay {self.records_differ}",
            f"threshold ids missing {self.thresholds_missing} / extra {self.thresholds_extra}",
            f"duplicate ids with different content {self.duplicate_ids_different_content}",
            f"dead letters in {self.dead_letters_expected} / out {self.dead_letters_out}"
            f" (differ {self.dead_letters_differ})",
            f"final status differing {self.status_differ}",
            f"/tally differing {self.tally_differ} of {self.tally_checked}",
            f"recovery {recovery}",
        ]
        parts += [f"{k} {v}" for k, v in self.notes.items()]
        return f"{self.scenario}: " + "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "events_in": self.events_in,
            **self.data(),
            "dead_letters_expected": self.dead_letters_expected,
            "dead_letters_out": self.dead_letters_out,
            "tally_checked": self.tally_checked,
            "recover_seconds": [round(s, 2) for s in self.recover_seconds],
            **self.notes,
        }


def _canonical(env: Envelope) -> str:
    return json.dumps(env, sort_keys=True, separators=(",", ":"))


def duplicate_ids_different_content(stream: Mapping[str, Sequence[Envelope]]) -> int:
    """Envelope ids published more than once with different full envelopes."""
    seen: dict[str, set[str]] = defaultdict(set)
    for envelopes in stream.values():
        for env in envelopes:
            seen[env["id"]].add(_canonical(env))
    return sum(1 for contents in seen.values() if len(contents) > 1)


def _unique(envelopes: Sequence[Envelope]) -> list[Envelope]:
    """Deduplicated on the envelope id (first seen wins), as a consumer does."""
    out: dict[str, Envelope] = {}
    for env in envelopes:
        out.setdefault(env["id"], env)
    return list(out.values())


def final_records(records: Sequence[Envelope]) -> dict[str, list[dict[str, Any]]]:
    """Per record id: the distinct contents at its highest revision, without the issue fields.

    More than one content at the highest revision means the stream split the record (two
    owners of one patient-month); :func:`compare` counts that as a record that differs.
    """
    top: dict[str, int] = {}
    for env in records:
        data = env["data"]
        top[data["record_id"]] = max(top.get(data["record_id"], -1), data["revision"])
    contents: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for env in records:
        data = env["data"]
        if data["revision"] == top[data["record_id"]]:
            body = {k: v for k, v in data.items() if k not in _ISSUE_FIELDS}
            contents[data["record_id"]][_canonical(body)] = body
    return {rid: list(bodies.values()) for rid, bodies in contents.items()}


def minutes_by_month(records: Mapping[str, list[dict[str, Any]]]) -> dict[PatientMonth, int]:
    """Qualifying minutes per patient-month from final records (a split record: the most)."""
    out: dict[PatientMonth, int] = {}
    for bodies in records.values():
        for body in bodies:
            key = (body["patient_id"], body["practice_id"], body["service_month"])
            out[key] = max(out.get(key, 0), int(body["qualifying_minutes"]))
    return out


def final_status(status: Sequence[Envelope]) -> dict[PatientMonth, dict[str, Any]]:
    """The last tally status of each patient-month (the status topic's compacted view, read in
    offset order), without ``revision`` (how often a closed month was re-issued)."""
    out: dict[PatientMonth, dict[str, Any]] = {}
    for env in status:
        data = env["data"]
        key = (data["patient_id"], data["practice_id"], data["service_month"])
        out[key] = {k: v for k, v in data.items() if k != "revision"}
    return out


def dead_letters(dlq: Sequence[Envelope]) -> Counter[tuple[str, str]]:
    return Counter((d["data"]["reason"], d["data"]["original"]) for d in _unique(dlq))


def tally_view(months: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """A patient's look-up months without ``revision`` (how often a closed month was
    re-issued depends on when closes met late logs, not on what is billed)."""
    return sorted(
        ({k: v for k, v in m.items() if k != "revision"} for m in months),
        key=lambda m: (m["service_month"], m["practice_id"]),
    )


def compare(
    figures: Figures,
    stream: Mapping[str, Sequence[Envelope]],
    expected: Expected,
    tally: Mapping[str, Any] | None = None,
) -> Figures:
    """Fill ``figures`` from the stream's outputs (``{"threshold", "billing_record", "dlq"}``
    as read with read_committed) and, when given, the ``/tally`` answers per patient
    (``None`` for a patient the workers did not know)."""
    core = expected.outputs
    figures.duplicate_ids_different_content = duplicate_ids_different_content(stream)

    got_ids = {e["id"] for e in stream["threshold"]}
    want_ids = {e["id"] for e in core["threshold"]}
    figures.thresholds_missing = len(want_ids - got_ids)
    figures.thresholds_extra = len(got_ids - want_ids)

    got = final_records(stream["billing_record"])
    want = final_records(core["billing_record"])
    differing = [rid for rid in sorted(got.keys() | want.keys()) if got.get(rid) != want.get(rid)]
    figures.records_differ = len(differing)
    if differing:  # what differs, for whoever reads the failure (fields only, no PHI text)
        g, w = got.get(differing[0], [{}]), want.get(differing[0], [{}])
        figures.notes["first differing record"] = {
            "record_id": differing[0],
            "contents (stream, replay)": (len(g), len(w)),
            "fields": {
                k: (g[0].get(k), w[0].get(k))
                for k in sorted(set(g[0]) | set(w[0]))
                if g[0].get(k) != w[0].get(k)
            },
        }
    got_minutes, want_minutes = minutes_by_month(got), minutes_by_month(want)
    for key in got_minutes.keys() | want_minutes.keys():
        delta = got_minutes.get(key, 0) - want_minutes.get(key, 0)
        if delta < 0:
            figures.minutes_lost += -delta
        else:
            figures.minutes_twice += delta

    got_dlq, want_dlq = dead_letters(stream["dlq"]), dead_letters(core["dlq"])
    figures.dead_letters_expected = sum(want_dlq.values())
    figures.dead_letters_out = sum(got_dlq.values())
    figures.dead_letters_differ = sum(((got_dlq - want_dlq) + (want_dlq - got_dlq)).values())

    if "status" in stream:
        got_status, want_status = final_status(stream["status"]), final_status(core["status"])
        figures.status_differ = sum(
            1
            for key in got_status.keys() | want_status.keys()
            if got_status.get(key) != want_status.get(key)
        )

    if tally is not None:
        figures.tally_checked = len(tally)
        figures.tally_differ = sum(
            1
            for pid, answer in tally.items()
            if answer is None
            or tally_view(answer.get("months", [])) != tally_view(expected.summaries[pid])
        )
    return figures


def rounds(events: Sequence[tuple[bytes, bytes]]) -> list[list[int]]:
    """Indexes of ``events`` in rounds: round r holds each key's r-th event.

    Whatever partitions a patient's events land on, processing them round by round (each
    round committed before the next is produced) keeps every patient's events in the order
    they were produced, which is the order replay applies them in."""
    seen: dict[bytes, int] = {}
    out: list[list[int]] = []
    for i, (key, _) in enumerate(events):
        r = seen.get(key, 0)
        seen[key] = r + 1
        if r == len(out):
            out.append([])
        out[r].append(i)
    return out
