# syntax=docker/dockerfile:1
# ccm-tally: the tally worker, the topic tool and the EHR simulator in one image.
#   docker build -t ccm-tally .
#   docker run --rm ccm-tally --help
#   docker run --rm -e KAFKA_BOOTSTRAP_SERVERS=kafka:9092 -e CCM_WEB_HOST=0.0.0.0 ccm-tally worker
# The default command is the worker; `topics`, `simulate`, `close`, `replay` ... work the same way.

ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------- build: wheels into a venv
FROM python:${PYTHON_VERSION}-slim AS build

# A compiler for any dependency without a wheel for the target platform (aiokafka, aiohttp).
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# README.md* : the glob keeps the build working while the readme is absent.
COPY pyproject.toml README.md* ./
COPY shared/ shared/
COPY services/ services/
COPY deploy/ccm_localkafka/ deploy/ccm_localkafka/
RUN pip install --upgrade pip \
    && pip install . \
    && ccm-tally --help > /dev/null

# ---------------------------------------------------------------- runtime
FROM python:${PYTHON_VERSION}-slim AS runtime

LABEL org.opencontainers.image.title="ccm-tally" \
      org.opencontainers.image.description="CPT 99487/99489 complex CCM time tally (Kafka stream worker)"

# tzdata: practices' local months need the IANA zone database.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tzdata \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ccm \
    && useradd --system --uid 10001 --gid ccm --home-dir /var/lib/ccm-tally --no-create-home \
       --shell /usr/sbin/nologin ccm \
    && install -d -o ccm -g ccm -m 0750 /var/lib/ccm-tally

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CCM_WEB_HOST=0.0.0.0 \
    CCM_WEB_PORT=6066 \
    CCM_LOG_JSON=true

USER ccm:ccm
# The table lives in memory and is recovered from its Kafka changelog: no volume is needed.
WORKDIR /var/lib/ccm-tally

# metrics (/metrics), health (/healthz), readiness (/readyz), tally look-up (/tally/{patient_id})
EXPOSE 6066

# Liveness of the worker's web server; no curl in the image, python's urllib does it.
# (Only the worker serves HTTP: for one-shot commands such as `topics` the check never runs long.)
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; h = os.environ.get('CCM_WEB_HOST', '127.0.0.1'); h = '127.0.0.1' if h in ('', '0.0.0.0', '::') else h; urllib.request.urlopen(f\"http://{h}:{os.environ.get('CCM_WEB_PORT', '6066')}/healthz\", timeout=4).close()"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["ccm-tally"]
CMD ["worker"]
