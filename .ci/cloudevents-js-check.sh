#!/usr/bin/env bash
# The official CloudEvents JavaScript SDK (npm `cloudevents`, installed into .tools/ when
# missing) reads every kind of ccm-tally output as a structured-mode CloudEvent: the messages
# are `ccm-tally replay`'s outputs of the sample month with the headers the worker attaches
# (ccm_core.binding.kafka_headers), as a kafkajs consumer sees them.
set -euo pipefail
cd "$(dirname "$0")/.."

CLOUDEVENTS_JS_VERSION="10.0.0"
PREFIX=".tools/cloudevents-js"

installed="$(node -p "require('./${PREFIX}/node_modules/cloudevents/package.json').version" 2>/dev/null || true)"
if [[ "${installed}" != "${CLOUDEVENTS_JS_VERSION}" ]]; then
    command -v npm >/dev/null 2>&1 || { echo "npm missing: run .ci/install-system.sh" >&2; exit 1; }
    mkdir -p "${PREFIX}"
    npm install --prefix "${PREFIX}" --no-audit --no-fund --loglevel=error \
        "cloudevents@${CLOUDEVENTS_JS_VERSION}" >&2
fi

.venv/bin/python - examples/sample-month.jsonl <<'PY' \
    | NODE_PATH="${PREFIX}/node_modules" node .ci/js/read-outputs.js
import json
import sys

from ccm_core.binding import kafka_headers
from ccm_core.ingest import LocalTally

tally = LocalTally()
with open(sys.argv[1], "rb") as src:
    outputs = list(tally.feed_lines(src))
assert tally.latest is not None
outputs += tally.close_all(tally.latest)
kinds = set()
for out in outputs:
    kinds.add(out.kind)
    headers = {name: value.decode() for name, value in kafka_headers(out)}
    print(json.dumps({"headers": headers, "key": out.key, "value": out.to_json()}))
assert kinds == {"threshold", "billing_record", "rejected", "fhir_chargeitem", "status"}, kinds
PY
