"""Patient data over HTTP needs a bearer token or a client certificate; probes stay open.

A real aiohttp server on 127.0.0.1 (the framework the worker's web port runs on) with
``http_auth.auth_middleware``, a patient-data route and the three probe routes; real HTTP and
HTTPS requests against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from ccm_core.settings import Settings
from ccm_localkafka.tls import CertificateAuthority, IssuedCert, make_ca
from ccm_worker.http_auth import (
    OFF_MESSAGE,
    HttpAuth,
    auth_middleware,
    authorized,
    faust_web_kwargs,
    forward_ssl_context,
    server_ssl_context,
)
from ccm_worker.kafka_security import SECURITY_ENV_NAMES

TOKEN = "tok-7c1f0e9a5b2d4c68a1e3f5d7b9c0a2e4"
PATIENT = {"patient_id": "p-1", "months": [{"service_month": "2026-03", "minutes": 75}]}


@pytest.fixture(autouse=True)
def _no_security_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SECURITY_ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return make_ca(tmp_path_factory.mktemp("web-ca"))


@pytest.fixture(scope="module")
def server_cert(ca: CertificateAuthority) -> IssuedCert:
    return ca.issue("worker-web")


def _app(settings: Settings, forward_to: str | None = None) -> web.Application:
    async def tally(request: web.Request) -> web.Response:
        return web.json_response({**PATIENT, "patient_id": request.match_info["pid"]})

    async def probe(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    auth = HttpAuth.from_settings(settings)

    async def forwarded(request: web.Request) -> web.Response:
        """What a worker does for a patient it does not own: ask the owner, with our token."""
        assert forward_to is not None
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{forward_to}/tally/{request.match_info['pid']}",
                headers=auth.forward_headers(),
                ssl=forward_ssl_context(settings) or True,
            ) as answer,
        ):
            return web.Response(body=await answer.read(), status=answer.status)

    app = web.Application(middlewares=[auth_middleware(auth)])
    app.router.add_get("/tally/{pid}", tally)
    app.router.add_get("/forward/{pid}", forwarded)
    for path in ("/metrics", "/healthz", "/readyz"):
        app.router.add_get(path, probe)
    return app


@contextlib.asynccontextmanager
async def serving(settings: Settings, forward_to: str | None = None) -> AsyncIterator[str]:
    """The app on a free port of 127.0.0.1 (HTTPS when the settings say so); its base URL."""
    runner = web.AppRunner(_app(settings, forward_to), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl_context(settings))
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    scheme = "https" if settings.web_tls_certfile else "http"
    try:
        yield f"{scheme}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _get(
    url: str, headers: dict[str, str] | None = None, ssl_ctx: ssl.SSLContext | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=headers or {}, ssl=ssl_ctx or True) as r,
    ):
        return r.status, await r.json(content_type=None), dict(r.headers)


def _run_requests(
    settings: Settings, requests: list[tuple[str, dict[str, str] | None]]
) -> list[tuple[int, dict[str, Any], dict[str, str]]]:
    async def run() -> list[tuple[int, dict[str, Any], dict[str, str]]]:
        async with serving(settings) as base:
            return [await _get(base + path, headers) for path, headers in requests]

    return asyncio.run(run())


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- off until configured ---------------------------------------------------------------------


def test_patient_data_is_off_until_a_credential_is_configured() -> None:
    answers = _run_requests(
        Settings(),
        [("/tally/p-1", None), ("/tally/p-1", _bearer(TOKEN)), ("/anything", None)],
    )
    for status, body, _ in answers:
        assert status == 403
        assert body == {"error": "patient_data_off", "message": OFF_MESSAGE}
    assert "CCM_WEB_AUTH_TOKEN_FILE" in OFF_MESSAGE


@pytest.mark.parametrize("configured", [False, True])
def test_probes_and_metrics_stay_open(configured: bool) -> None:
    s = Settings(web_auth_token=TOKEN) if configured else Settings()
    answers = _run_requests(s, [("/metrics", None), ("/healthz", None), ("/readyz", None)])
    assert [status for status, _, _ in answers] == [200, 200, 200]


def test_workers_bind_to_loopback_unless_told_otherwise() -> None:
    assert Settings().web_host == "127.0.0.1"
    assert faust_web_kwargs(Settings())["web_bind"] == "127.0.0.1"


# -- bearer token -------------------------------------------------------------------------------


def test_right_token_reads_patient_data() -> None:
    [(status, body, _)] = _run_requests(
        Settings(web_auth_token=TOKEN), [("/tally/p-9", _bearer(TOKEN))]
    )
    assert status == 200
    assert body["patient_id"] == "p-9"


@pytest.mark.parametrize(
    "headers",
    [
        None,
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        _bearer("wrong-token"),
        _bearer(TOKEN[:-1]),  # a prefix
        _bearer(TOKEN + "x"),  # longer
        _bearer(TOKEN.upper()),
        {"Authorization": f"Basic {TOKEN}"},  # right secret, wrong scheme
        {"X-Api-Key": TOKEN},
    ],
)
def test_missing_or_wrong_token_is_refused(headers: dict[str, str] | None) -> None:
    [(status, body, answer_headers)] = _run_requests(
        Settings(web_auth_token=TOKEN), [("/tally/p-1", headers)]
    )
    assert status == 401
    assert body["error"] == "unauthorized"
    assert "p-1" not in str(body)  # no patient data
    assert answer_headers["WWW-Authenticate"].startswith("Bearer")
    assert TOKEN not in str(body)  # nothing echoed


def test_token_from_a_file_and_scheme_case(tmp_path: Path) -> None:
    token_file = tmp_path / "web-token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")  # as a k8s secret or `echo` writes it
    s = Settings(web_auth_token_file=token_file)
    answers = _run_requests(
        s,
        [
            ("/tally/p-1", {"Authorization": f"bearer {TOKEN}"}),
            ("/tally/p-1", {"Authorization": f"BEARER   {TOKEN}  "}),
            ("/tally/p-1", _bearer(TOKEN + "0")),
        ],
    )
    assert [status for status, _, _ in answers] == [200, 200, 401]


def test_blank_token_is_a_configuration_error(tmp_path: Path) -> None:
    blank = tmp_path / "blank"
    blank.write_text("   \n", encoding="utf-8")
    with pytest.raises(ValueError, match="blank"):
        HttpAuth.from_settings(Settings(web_auth_token_file=blank))


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=0, max_size=80))
def test_no_other_token_is_accepted(presented: str) -> None:
    auth = HttpAuth(token=TOKEN.encode())
    headers = {"Authorization": f"Bearer {presented}"}
    assert auth.authorized(headers) == (presented.strip() == TOKEN)


def test_authorized_function_reads_the_settings(tmp_path: Path) -> None:
    s = Settings(web_auth_token=TOKEN)
    assert authorized(_bearer(TOKEN), s)
    assert not authorized(_bearer("nope"), s)
    assert not authorized({}, s)
    assert not authorized(_bearer(TOKEN), Settings())  # off: even "a" token is refused


def test_token_never_shows_in_repr() -> None:
    auth = HttpAuth.from_settings(Settings(web_auth_token=TOKEN))
    assert TOKEN not in repr(auth)
    assert TOKEN not in repr(Settings(web_auth_token=TOKEN))


def test_forwarding_carries_the_credential() -> None:
    """Worker A forwards a look-up to worker B (both with the token): B answers A's request;
    a caller without the token is stopped at A."""
    s = Settings(web_auth_token=TOKEN)

    async def run() -> tuple[int, int, int]:
        async with serving(s) as owner, serving(s, forward_to=owner) as other:
            ok, _, _ = await _get(f"{other}/forward/p-3", _bearer(TOKEN))
            refused, _, _ = await _get(f"{other}/forward/p-3")
            # and B refuses a forward that lacks the header (e.g. a worker without the token)
            async with serving(Settings(), forward_to=owner) as no_token:
                blocked, _, _ = await _get(f"{no_token}/forward/p-3")
            return ok, refused, blocked

    ok, refused, blocked = asyncio.run(run())
    assert ok == 200
    assert refused == 401
    assert blocked == 403  # the worker without credentials has patient data off itself


# -- mutual TLS -------------------------------------------------------------------------------


def _mtls_settings(ca: CertificateAuthority, server_cert: IssuedCert, **more: Any) -> Settings:
    return Settings(
        web_tls_certfile=server_cert.cert,
        web_tls_keyfile=server_cert.key,
        web_tls_client_cafile=ca.cert,
        **more,
    )


def _client_ctx(ca: CertificateAuthority, cert: IssuedCert | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    return ctx


def test_client_certificate_reads_patient_data(
    ca: CertificateAuthority, server_cert: IssuedCert
) -> None:
    client = ca.issue("billing-console", server=False)
    s = _mtls_settings(ca, server_cert)

    async def run() -> list[int]:
        async with serving(s) as base:
            with_cert = await _get(f"{base}/tally/p-1", ssl_ctx=_client_ctx(ca, client))
            without = await _get(f"{base}/tally/p-1", ssl_ctx=_client_ctx(ca, None))
            probe = await _get(f"{base}/healthz", ssl_ctx=_client_ctx(ca, None))
            return [with_cert[0], without[0], probe[0]]

    assert asyncio.run(run()) == [200, 401, 200]


def test_client_certificate_of_another_ca_is_refused(
    ca: CertificateAuthority, server_cert: IssuedCert, tmp_path: Path
) -> None:
    stranger = make_ca(tmp_path / "other", name="other-ca").issue("stranger", server=False)
    s = _mtls_settings(ca, server_cert)

    async def run() -> None:
        async with serving(s) as base:
            await _get(f"{base}/tally/p-1", ssl_ctx=_client_ctx(ca, stranger))

    with pytest.raises(aiohttp.ClientError):  # the TLS handshake fails: no answer at all
        asyncio.run(run())


def test_token_still_works_beside_mutual_tls(
    ca: CertificateAuthority, server_cert: IssuedCert
) -> None:
    s = _mtls_settings(ca, server_cert, web_auth_token=TOKEN)

    async def run() -> list[int]:
        async with serving(s) as base:
            no_cert = _client_ctx(ca, None)
            ok = await _get(f"{base}/tally/p-1", _bearer(TOKEN), ssl_ctx=no_cert)
            bad = await _get(f"{base}/tally/p-1", _bearer("nope"), ssl_ctx=no_cert)
            return [ok[0], bad[0]]

    assert asyncio.run(run()) == [200, 401]


def test_forwarding_over_mutual_tls_presents_the_worker_certificate(
    ca: CertificateAuthority, server_cert: IssuedCert
) -> None:
    s = _mtls_settings(ca, server_cert)
    client = ca.issue("console", server=False)

    async def run() -> int:
        async with serving(s) as owner, serving(s, forward_to=owner) as other:
            status, _, _ = await _get(f"{other}/forward/p-4", ssl_ctx=_client_ctx(ca, client))
            return status

    assert asyncio.run(run()) == 200
