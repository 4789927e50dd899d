"""A real SMTP server in the test process (aiosmtpd, on its own thread) and
a self-signed certificate for STARTTLS, for the smtp provider's tests."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import ssl
import threading
from collections import deque
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["Mailbox", "free_port", "running_smtp", "self_signed"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mailbox:
    """The server's handler: keeps what it accepted; answers queued replies to DATA first."""

    def __init__(self) -> None:
        self.accepted: list[tuple[Envelope, tuple[str, int]]] = []  # (envelope, client's (host, port))
        self.data_answers: deque[str] = deque()  # e.g. "451 4.3.0 try later", used one a DATA
        self.hold = threading.Event()  # set: DATA waits (a server that does not answer)
        self.connections = 0
        self.lock = threading.Lock()

    async def handle_EHLO(self, server: SMTPServer, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        with self.lock:
            self.connections += 1
        session.host_name = hostname
        return responses

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        while self.hold.is_set():
            await asyncio.sleep(0.01)
        with self.lock:
            if self.data_answers:
                return self.data_answers.popleft()
            self.accepted.append((envelope, session.peer))
        return "250 2.0.0 OK queued"


class _Controller(Controller):
    def __init__(self, handler: Mailbox, port: int, **kwargs: Any) -> None:
        self._server_kwargs = kwargs
        super().__init__(handler, hostname="127.0.0.1", port=port)

    def factory(self) -> SMTPServer:
        return SMTPServer(self.handler, hostname="mx.test", **self._server_kwargs)


class running_smtp:
    """`with running_smtp(users={"u": "p"}, tls=ctx) as (mailbox, port):` a server until the block ends."""

    def __init__(self, *, users: dict[str, str] | None = None, tls: ssl.SSLContext | None = None,
                 port: int | None = None, mailbox: Mailbox | None = None) -> None:
        self.mailbox = mailbox or Mailbox()
        self.port = port or free_port()
        kwargs: dict[str, Any] = {}
        if users is not None:
            def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
                ok = isinstance(data, LoginPassword) and users.get(data.login.decode()) == data.password.decode()
                return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535
            kwargs.update(authenticator=authenticate, auth_required=True, auth_require_tls=tls is not None)
        if tls is not None:
            kwargs.update(tls_context=tls, require_starttls=True)
        self.controller = _Controller(self.mailbox, self.port, **kwargs)

    def __enter__(self) -> tuple[Mailbox, int]:
        self.controller.start()
        return self.mailbox, self.port

    def __exit__(self, *exc: object) -> None:
        self.mailbox.hold.clear()
        self.controller.stop()


def self_signed(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting only this certificate) for 127.0.0.1 and localhost."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(cert_path))
    return server, client
