"""Who may read patient data over HTTP: a bearer token or a client certificate (mutual TLS).

``/metrics``, ``/healthz`` and ``/readyz`` stay open for probes and scrapers (they carry no
patient data). Every other path (``/tally/{patient_id}``, any page listing patients) needs

- ``Authorization: Bearer <token>`` equal to ``CCM_WEB_AUTH_TOKEN_FILE`` (or
  ``CCM_WEB_AUTH_TOKEN``), compared in constant time (:func:`hmac.compare_digest`), or
- a client certificate verified against ``CCM_WEB_TLS_CLIENT_CAFILE`` (the web port then
  serves HTTPS with ``CCM_WEB_TLS_CERTFILE`` / ``CCM_WEB_TLS_KEYFILE``),

and answers 403 ("patient data endpoints are off") until one of the two is configured.

Framework-light: :class:`HttpAuth` decides from headers and the peer certificate only;
:func:`auth_middleware` applies it to an aiohttp application (faust's web driver is aiohttp:
``faust.App(web_application_options={"middlewares": [auth_middleware(settings)]})``).
A worker that forwards a look-up to another adds :meth:`HttpAuth.forward_headers`.
"""

from __future__ import annotations

import hmac
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ccm_core.settings import Settings

from .kafka_security import read_secret_file

OPEN_PATHS: frozenset[str] = frozenset({"/metrics", "/healthz", "/readyz"})
"""Paths without patient data, open to probes and Prometheus."""

OFF_MESSAGE = (
    "patient data endpoints are off: configure a bearer token (CCM_WEB_AUTH_TOKEN_FILE) "
    "or mutual TLS (CCM_WEB_TLS_CERTFILE, CCM_WEB_TLS_KEYFILE, CCM_WEB_TLS_CLIENT_CAFILE)"
)
UNAUTHORIZED_MESSAGE = (
    "this endpoint returns patient data: send 'Authorization: Bearer <token>' "
    "or a client certificate"
)
AUTH_HEADER = "Authorization"


@dataclass(frozen=True)
class HttpAuth:
    """The web port's credentials, read once (a token rotation restarts the worker)."""

    token: bytes | None = field(default=None, repr=False)
    mutual_tls: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpAuth:
        if settings.web_auth_token_file is not None:
            token: str | None = read_secret_file(settings.web_auth_token_file)
        elif settings.web_auth_token is not None:
            token = settings.web_auth_token.get_secret_value()
        else:
            token = None
        if token is not None and not token.strip():
            raise ValueError("the web auth token is blank")
        return cls(
            token=None if token is None else token.encode("utf-8"),
            mutual_tls=settings.web_tls_client_cafile is not None,
        )

    @property
    def configured(self) -> bool:
        """False: patient data endpoints are off (403) whatever the request carries."""
        return self.token is not None or self.mutual_tls

    def authorized(
        self, headers: Mapping[str, str], peer_cert: Mapping[str, Any] | None = None
    ) -> bool:
        """True if the request may read patient data.

        ``peer_cert`` is the TLS layer's verified client certificate
        (``transport.get_extra_info("peercert")``): the server context only hands one over
        after verifying it against the client CA, so its presence is the proof.
        """
        if self.mutual_tls and peer_cert:
            return True
        if self.token is None:
            return False
        presented = bearer_token(headers)
        if presented is None:
            return False
        return hmac.compare_digest(presented.encode("utf-8"), self.token)

    def forward_headers(self) -> dict[str, str]:
        """Headers a worker adds when it forwards a request to another worker."""
        if self.token is None:
            return {}
        return {AUTH_HEADER: f"Bearer {self.token.decode('utf-8')}"}


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive)."""
    value = headers.get(AUTH_HEADER)
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authorized(
    headers: Mapping[str, str],
    settings: Settings,
    peer_cert: Mapping[str, Any] | None = None,
) -> bool:
    """One-off check (reads the token file): may this request read patient data?"""
    return HttpAuth.from_settings(settings).authorized(headers, peer_cert)


def _peer_cert(request: web.Request) -> Mapping[str, Any] | None:
    transport = request.transport
    if transport is None:
        return None
    cert = transport.get_extra_info("peercert")
    return cert if isinstance(cert, Mapping) and cert else None


def auth_middleware(
    settings: Settings | HttpAuth, open_paths: frozenset[str] = OPEN_PATHS
) -> Middleware:
    """aiohttp middleware: open paths pass; every other path needs a credential.

    403 ``patient_data_off`` while no credential is configured, 401 ``unauthorized`` (with
    ``WWW-Authenticate: Bearer``) for a missing or wrong one. Neither answer echoes what the
    request sent.
    """
    auth = settings if isinstance(settings, HttpAuth) else HttpAuth.from_settings(settings)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in open_paths:
            return await handler(request)
        if not auth.configured:
            return web.json_response(
                {"error": "patient_data_off", "message": OFF_MESSAGE}, status=403
            )
        if not auth.authorized(request.headers, _peer_cert(request)):
            return web.json_response(
                {"error": "unauthorized", "message": UNAUTHORIZED_MESSAGE},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="ccm-tally"'},
            )
        return await handler(request)

    return middleware


def server_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """HTTPS for the web port (None: plain HTTP). With a client CA, client certificates are
    asked for and verified but optional, so probes without one still reach the open paths."""
    if settings.web_tls_certfile is None or settings.web_tls_keyfile is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(settings.web_tls_certfile), str(settings.web_tls_keyfile))
    if settings.web_tls_client_cafile is not None:
        ctx.load_verify_locations(cafile=str(settings.web_tls_client_cafile))
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def forward_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS context for worker-to-worker forwarding when the web port serves HTTPS: trusts the
    client CA (the workers' certificates are expected to come from it) and, with mutual TLS,
    presents this worker's own certificate."""
    if settings.web_tls_certfile is None or settings.web_tls_keyfile is None:
        return None
    cafile = settings.web_tls_client_cafile
    ctx = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=None if cafile is None else str(cafile)
    )
    if cafile is not None:
        ctx.load_cert_chain(str(settings.web_tls_certfile), str(settings.web_tls_keyfile))
    return ctx


def web_scheme(settings: Settings) -> str:
    """``https`` when the web port serves TLS, else ``http`` (for advertised URLs)."""
    return "https" if settings.web_tls_certfile is not None else "http"


def faust_web_kwargs(settings: Settings) -> dict[str, Any]:
    """Web options for ``faust.App(...)``: bind address (faust's default is 0.0.0.0; ours is
    ``CCM_WEB_HOST``, 127.0.0.1 unless told otherwise), port, TLS and the auth middleware."""
    return {
        "web_bind": settings.web_host,
        "web_port": settings.web_port,
        "web_ssl_context": server_ssl_context(settings),
        "web_application_options": {"middlewares": [auth_middleware(settings)]},
    }
