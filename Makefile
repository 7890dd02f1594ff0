# ccm-tally: every target sets up what it needs (Java 17 + Maven from Debian if missing, a
# Python virtualenv in .venv, the Kafka broker jars) and is safe to run again.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-unit test-integration lint typecheck check schemas asyncapi-check \
	cloudevents-js-check bench-smoke clean compose-secrets

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (3.11+)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)  ## Python deps, Java/Maven/Chromium (Debian), Kafka jars
	bash .ci/install-system.sh
	$(BIN)/python -m ccm_localkafka --fetch-only

demo: setup  ## the whole stack on a local Kafka: one simulated month, closed, summarised
	$(BIN)/ccm-tally demo --keep-running

test: setup  ## unit + integration tests (a real Kafka broker is started by the test session)
	$(BIN)/python -m pytest

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

test-integration: setup
	$(BIN)/python -m pytest tests/integration

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck

schemas: $(STAMP)  ## regenerate docs/schemas from the pydantic models
	$(BIN)/ccm-tally schema export docs/schemas --asyncapi docs/asyncapi.yaml

asyncapi-check: $(STAMP)  ## docs/asyncapi.yaml current and valid (official @asyncapi/cli, npm)
	bash .ci/asyncapi-check.sh

cloudevents-js-check: $(STAMP)  ## the official CloudEvents JS SDK reads every output kind (npm)
	bash .ci/cloudevents-js-check.sh

compose-secrets: $(STAMP)  ## throw-away CA, keystore, passwords, token for docker-compose.secure.yml
	$(BIN)/python -m ccm_localkafka.devsecrets deploy/secrets/dev

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis deploy/kafka/lib .tools
