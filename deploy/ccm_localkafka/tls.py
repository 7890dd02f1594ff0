"""Throw-away TLS material for tests and the local broker: a CA and certificates it signs.

Made with the ``openssl`` command line (installed by ``.ci/install-system.sh`` when missing),
which every Debian machine with Java has anyway; not a Python crypto dependency for a test
fixture. Keys are EC P-256 (fast to make), certificates valid for two days, names and IP
addresses in the subject alternative name, so clients can check the host name.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CertificateAuthority", "IssuedCert", "TlsError", "make_ca"]

_DAYS = "2"


class TlsError(RuntimeError):
    """openssl is missing or failed."""


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise TlsError("'openssl' is not on PATH; run .ci/install-system.sh (installs openssl)")
    proc = subprocess.run(
        [exe, *args], cwd=cwd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
    )
    if proc.returncode != 0:
        raise TlsError(f"openssl {args[0]} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")


@dataclass(frozen=True)
class IssuedCert:
    """A certificate (PEM), its unencrypted PKCS#8 key (PEM) and, on demand, a PKCS#12 bundle."""

    name: str
    cert: Path
    key: Path
    ca_cert: Path

    def pkcs12(self, password: str) -> Path:
        """Key, certificate and CA in one PKCS#12 file (a Java keystore), protected by
        ``password``."""
        out = self.cert.with_suffix(".p12")
        _openssl(
            "pkcs12",
            "-export",
            "-in",
            str(self.cert),
            "-inkey",
            str(self.key),
            "-certfile",
            str(self.ca_cert),
            "-name",
            self.name,
            "-out",
            str(out),
            "-passout",
            f"pass:{password}",
            cwd=self.cert.parent,
        )
        return out


@dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed CA in ``directory`` that issues certificates (:meth:`issue`)."""

    directory: Path
    cert: Path
    key: Path

    def issue(
        self,
        name: str,
        *,
        hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
        client: bool = True,
        server: bool = True,
    ) -> IssuedCert:
        """A certificate for ``name`` (common name and file names) valid for ``hosts``."""
        d = self.directory
        key, csr, crt, ext = (d / f"{name}{s}" for s in (".key", ".csr", ".crt", ".ext"))
        san = ",".join(
            f"IP:{h}" if h.replace(".", "").isdigit() or ":" in h else f"DNS:{h}" for h in hosts
        )
        usages = [u for u, on in (("serverAuth", server), ("clientAuth", client)) if on]
        lines = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            f"extendedKeyUsage={','.join(usages)}",
        ]
        if san:
            lines.append(f"subjectAltName={san}")
        ext.write_text("\n".join(lines) + "\n", encoding="ascii")
        _openssl(
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(csr),
            "-subj",
            f"/CN={name}",
            cwd=d,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(self.cert),
            "-CAkey",
            str(self.key),
            "-set_serial",
            str(secrets.randbits(63)),
            "-days",
            _DAYS,
            "-sha256",
            "-extfile",
            str(ext),
            "-out",
            str(crt),
            cwd=d,
        )
        key.chmod(0o600)
        return IssuedCert(name=name, cert=crt, key=key, ca_cert=self.cert)


def make_ca(directory: Path, name: str = "ccm-test-ca") -> CertificateAuthority:
    """A new self-signed CA (EC P-256, two days) in ``directory`` (created if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    key, crt = directory / f"{name}.key", directory / f"{name}.crt"
    _openssl(
        "req",
        "-x509",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(crt),
        "-days",
        _DAYS,
        "-sha256",
        "-subj",
        f"/CN={name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )
    key.chmod(0o600)
    return CertificateAuthority(directory=directory, cert=crt, key=key)
