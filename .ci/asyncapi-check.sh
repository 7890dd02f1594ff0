#!/usr/bin/env bash
# docs/asyncapi.yaml is current (what `ccm-tally schema export` writes now) and valid, checked
# by the official AsyncAPI CLI (npm @asyncapi/cli), installed into .tools/asyncapi when missing.
# Needs node and npm (.ci/install-system.sh installs Debian's when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

ASYNCAPI_CLI_VERSION="4.1.1"
PREFIX=".tools/asyncapi"
BIN="${PREFIX}/node_modules/.bin/asyncapi"

log() { printf '[asyncapi-check] %s\n' "$*" >&2; }

installed="$(node -p "require('./${PREFIX}/node_modules/@asyncapi/cli/package.json').version" 2>/dev/null || true)"
if [[ ! -x "${BIN}" || "${installed}" != "${ASYNCAPI_CLI_VERSION}" ]]; then
    command -v npm >/dev/null 2>&1 || { log "npm missing: run .ci/install-system.sh"; exit 1; }
    log "installing @asyncapi/cli ${ASYNCAPI_CLI_VERSION} into ${PREFIX}"
    mkdir -p "${PREFIX}"
    npm install --prefix "${PREFIX}" --no-audit --no-fund --loglevel=error \
        "@asyncapi/cli@${ASYNCAPI_CLI_VERSION}" >&2
fi

# the CLI's usage analytics stay off (its own config file; CI=true also disables them)
export ASYNCAPI_METRICS_CONFIG_PATH="${PREFIX}/analytics.json"
printf '{"analyticsEnabled":"false","infoMessageShown":"true","userID":"ccm-tally-ci"}\n' \
    > "${ASYNCAPI_METRICS_CONFIG_PATH}"

current="$(mktemp)"
trap 'rm -f "${current}"' EXIT
.venv/bin/python -c 'from ccm_cli.main import asyncapi_yaml; print(asyncapi_yaml(), end="")' \
    > "${current}"
if ! diff -u docs/asyncapi.yaml "${current}"; then
    log "docs/asyncapi.yaml is stale: run make schemas"
    exit 1
fi
log "docs/asyncapi.yaml is current"
"${BIN}" validate docs/asyncapi.yaml --fail-severity error
log "docs/asyncapi.yaml is valid AsyncAPI"
