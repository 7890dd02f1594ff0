"""Every labelled metric exists at zero from the start (a dashboard panel shows 0, not "no
data", and ``rate()`` in an alert has a series before the first event of its kind).

Checked in a fresh interpreter: the registry of this test process already holds whatever other
tests incremented.
"""

from __future__ import annotations

import subprocess
import sys
from typing import get_args

from prometheus_client.parser import text_string_to_metric_families

from ccm_core.contracts import Outcome, Reason
from ccm_core.observability import MONTH_STATES, THRESHOLD_KINDS
from ccm_core.tally import CloseTrigger

TRIGGERS: tuple[str, ...] = get_args(CloseTrigger)

PROGRAM = """
import sys
from ccm_core import observability
codes = sys.argv[1:]
if codes:
    observability.initialize_labels(codes)
from prometheus_client import generate_latest
sys.stdout.write(generate_latest().decode())
"""


def fresh_metrics(*codes: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """{sample name: {labels: value}} of a new process that only imported observability."""
    text = subprocess.run(
        [sys.executable, "-c", PROGRAM, *codes], capture_output=True, text=True, check=True
    ).stdout
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_every_known_label_value_is_a_series_at_zero_before_any_event() -> None:
    metrics = fresh_metrics()
    expected: dict[str, list[tuple[tuple[str, str], ...]]] = {
        "ccm_events_total": [(("outcome", o.value),) for o in Outcome],
        "ccm_rejections_total": [(("reason", r.value),) for r in Reason],
        "ccm_billing_records_total": [(("trigger", str(t)),) for t in TRIGGERS],
        "ccm_patient_months": [(("state", s),) for s in MONTH_STATES],
        "ccm_billing_units_total": [(("code", c),) for c in ("99487", "99489")],
        "ccm_thresholds_total": [
            (("code", c), ("kind", k)) for c in ("99487", "99489") for k in THRESHOLD_KINDS
        ],
    }
    for name, series in expected.items():
        assert name in metrics, name
        for labels in series:
            assert metrics[name].get(labels) == 0.0, (name, labels)
    # the month_archived reason the issue names: 0, not absent
    assert metrics["ccm_rejections_total"][(("reason", "month_archived"),)] == 0.0


def test_codes_of_extra_profiles_are_added_at_zero() -> None:
    metrics = fresh_metrics("G0506")
    assert metrics["ccm_billing_units_total"][(("code", "G0506"),)] == 0.0
    assert metrics["ccm_thresholds_total"][(("code", "G0506"), ("kind", "revoked"))] == 0.0
