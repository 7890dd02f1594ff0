#!/usr/bin/env bash
# Install the system packages the local Kafka broker needs (Debian/Ubuntu), only if missing:
#   - openjdk-17-jre-headless  when `java` is absent or older than 17
#   - maven                    when `mvn` is absent (fetches the broker jars, deploy/kafka/pom.xml)
#   - postgresql               when no server binaries (/usr/lib/postgresql/*/bin/initdb): the
#                              sink's tests start a throwaway cluster (tests/localpg.py)
#   - prometheus               when `promtool` is absent: the tests check deploy/prometheus
#   - nodejs, npm              when `npm` is absent: .ci/asyncapi-check.sh installs @asyncapi/cli
#   - openssl                  when `openssl` is absent (throw-away CA and certificates of the
#                              SASL_SSL / mutual-TLS test listeners, ccm_localkafka/tls.py)
#   - chromium, chromium-driver when `chromium` / `chromedriver` are absent (the console's
#                               browser test drives headless Chromium with Selenium)
# Idempotent: does nothing (not even `apt-get update`) when all are already there.
# Works as root, or as a user with sudo.
set -euo pipefail

log() { printf '[install-system] %s\n' "$*" >&2; }

java_major() {
    # Prints the major version of `java` on PATH (e.g. 17), or nothing.
    command -v java >/dev/null 2>&1 || return 0
    java -XshowSettings:properties -version 2>&1 \
        | awk -F'= ' '/java.specification.version/ {print $2; exit}' \
        | sed -E 's/^1\.//; s/[^0-9].*$//'
}

packages=()

major="$(java_major || true)"
if [[ -z "${major}" || "${major}" -lt 17 ]]; then
    log "java ${major:-missing}: need 17+, will install openjdk-17-jre-headless"
    packages+=(openjdk-17-jre-headless)
else
    log "java ${major} found"
fi

if ! command -v mvn >/dev/null 2>&1; then
    log "mvn missing: will install maven"
    packages+=(maven)
else
    log "mvn found"
fi

if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    log "postgresql server binaries found"
else
    log "postgresql server binaries missing: will install postgresql"
    packages+=(postgresql)
fi

if command -v promtool >/dev/null 2>&1; then
    log "promtool found"
else
    log "promtool missing: will install prometheus"
    packages+=(prometheus)
fi

if command -v npm >/dev/null 2>&1; then
    log "npm found"
else
    log "npm missing: will install nodejs npm"
    packages+=(nodejs npm)
fi

if ! command -v openssl >/dev/null 2>&1; then
    log "openssl missing: will install openssl"
    packages+=(openssl)
else
    log "openssl found"
fi

if ! command -v chromium >/dev/null 2>&1; then
    log "chromium missing: will install chromium"
    packages+=(chromium)
else
    log "chromium found"
fi

if ! command -v chromedriver >/dev/null 2>&1; then
    log "chromedriver missing: will install chromium-driver"
    packages+=(chromium-driver)
else
    log "chromedriver found"
fi

if [[ ${#packages[@]} -eq 0 ]]; then
    log "nothing to install"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    log "apt-get not available; install manually: ${packages[*]}"
    exit 1
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo -n)
        if ! sudo -n true 2>/dev/null; then
            SUDO=(sudo)  # may prompt for a password on an interactive terminal
        fi
    else
        log "not root and sudo not available; install manually: ${packages[*]}"
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
log "apt-get update"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
log "apt-get install ${packages[*]}"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${packages[@]}"

major="$(java_major || true)"
if [[ -z "${major}" || "${major}" -lt 17 ]]; then
    # Another (older) java may still win on PATH; point at the 17 we just installed.
    log "warning: 'java' on PATH is ${major:-missing}; openjdk 17 is under /usr/lib/jvm/java-17-*"
fi
command -v mvn >/dev/null 2>&1 || { log "mvn still missing after install"; exit 1; }
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || { log "initdb missing"; exit 1; }
command -v promtool >/dev/null 2>&1 || { log "promtool still missing after install"; exit 1; }
command -v openssl >/dev/null 2>&1 || { log "openssl still missing after install"; exit 1; }
command -v chromium >/dev/null 2>&1 || { log "chromium still missing after install"; exit 1; }
command -v chromedriver >/dev/null 2>&1 || { log "chromedriver still missing after install"; exit 1; }
log "done"
