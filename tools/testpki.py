"""A throwaway certificate authority and the server certificates it signs (the openssl CLI).

Encrypted transports are measured and tested against real peers (Unbound,
kdig, dnsperf), so the certificates must be real too: a CA made for the run,
a server certificate for 127.0.0.1, ::1 and a DNS name, and a second CA
nobody trusts. The lab (`compare --transports dot,doh`) and the tests share it.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

SERVER_NAME = "dns.heimdall.test"


@dataclass(frozen=True)
class ServerCert:
    ca: Path     # the CA certificate a client must trust
    cert: Path   # the server's certificate (leaf)
    key: Path    # the server's private key
    name: str    # the DNS name in the certificate (with 127.0.0.1 and ::1)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str = "ca") -> tuple[Path, Path]:
    """A self-signed CA: (certificate, key)."""
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", "2", "-subj", f"/CN=Heimdall test {name}", "-keyout", str(key), "-out", str(cert),
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def make_server_cert(folder: Path, ca: tuple[Path, Path], name: str = SERVER_NAME,
                     stem: str = "server") -> ServerCert:
    """A server certificate for `name`, 127.0.0.1 and ::1, signed by `ca`."""
    ca_cert, ca_key = ca
    key, csr, cert = folder / f"{stem}.key", folder / f"{stem}.csr", folder / f"{stem}.pem"
    ext = folder / f"{stem}.ext"
    ext.write_text(f"subjectAltName=DNS:{name},IP:127.0.0.1,IP:::1\n"
                   "extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
             "-days", "2", "-extfile", str(ext), "-out", str(cert))
    return ServerCert(ca_cert, cert, key, name)


def make_pki(folder: Path) -> tuple[ServerCert, Path]:
    """A server certificate from a trusted test CA, and a second CA's certificate that did not sign it."""
    folder.mkdir(parents=True, exist_ok=True)
    server = make_server_cert(folder, make_ca(folder, "ca"))
    other_ca, _ = make_ca(folder, "other-ca")
    return server, other_ca
