"""Configuring the smtp and webpush providers: the keys they take (TOML,
`from` included, and CASCADE_CHANNELS_* variables), the errors that name
the key, and `cascade serve` refusing a VAPID key it cannot read (exit 2,
before it listens)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pushservice import new_vapid_key

from cascade.cli import main
from cascade.config import ConfigError, load_settings
from cascade.delivery.providers.smtp import SmtpProvider
from cascade.delivery.providers.webpush import WebPushProvider
from cascade.server import build_providers

SMTP = """
[channels.email]
provider = "smtp"
host = "smtp.example.com"
port = 2525
tls = "tls"
username = "shop"
password = "s3cret"
from = "Shop <shop@example.com>"
max_in_flight = 4
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cascade.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_smtp_keys_from_the_file_reach_the_provider(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, SMTP), environ={})
    ch = settings.channel("email")
    assert (ch.provider, ch.host, ch.port, ch.tls, ch.sender) == ("smtp", "smtp.example.com", 2525, "tls",
                                                                  "Shop <shop@example.com>")
    providers, limits = build_providers(settings)
    smtp = providers["email"]
    assert isinstance(smtp, SmtpProvider)
    assert (smtp.host, smtp.port, smtp.tls, smtp.max_connections, limits["email"]) == (
        "smtp.example.com", 2525, "tls", 4, 4)


def test_smtp_ports_default_by_tls_mode(tmp_path: Path) -> None:
    for tls, port in (("tls", 465), ("starttls", 587), ("none", 25)):
        text = SMTP.replace("port = 2525\n", "").replace('tls = "tls"', f'tls = "{tls}"')
        smtp = build_providers(load_settings(write(tmp_path, text), environ={}))[0]["email"]
        assert isinstance(smtp, SmtpProvider) and smtp.port == port, tls


def test_the_environment_sets_smtp_keys_including_from() -> None:
    env = {"CASCADE_CHANNELS_EMAIL_PROVIDER": "smtp", "CASCADE_CHANNELS_EMAIL_HOST": "mx.local",
           "CASCADE_CHANNELS_EMAIL_FROM": "ops@example.com", "CASCADE_CHANNELS_EMAIL_TLS": "none",
           "CASCADE_CHANNELS_EMAIL_PORT": "1025"}
    ch = load_settings(environ=env).channel("email")
    assert (ch.provider, ch.host, ch.sender, ch.tls, ch.port) == ("smtp", "mx.local", "ops@example.com", "none", 1025)


@pytest.mark.parametrize(("text", "named"), [
    ('[channels.email]\nprovider = "smtp"\nfrom = "a@example.com"\n', "channels.email.host is required"),
    ('[channels.email]\nprovider = "smtp"\nhost = "mx"\n', "channels.email.from is required"),
    ('[channels.push]\nprovider = "smtp"\nhost = "mx"\nfrom = "a@example.com"\n',
     'channels.push.provider = "smtp" is for the email channel only'),
    ('[channels.email]\nprovider = "smtp"\nhost = "mx"\nfrom = "a@example.com"\nusername = "u"\n',
     "set username and password together"),
    ('[channels.email]\nprovider = "smtp"\nhost = "mx"\nfrom = "a@example.com"\ntls = "ssl"\n',
     'channels.email.tls = "ssl" is not allowed: it must be one of "starttls", "tls", "none"'),
    ('[channels.push]\nprovider = "webpush"\nvapid_subject = "mailto:a@example.com"\n',
     "channels.push.vapid_private_key is required"),
    ('[channels.push]\nprovider = "webpush"\nvapid_private_key = "x"\nvapid_subject = "a@example.com"\n',
     "channels.push.vapid_subject is required"),
    ('[channels.email]\nprovider = "webpush"\nvapid_private_key = "x"\nvapid_subject = "mailto:a@b.c"\n',
     'channels.email.provider = "webpush" is for the push channel only'),
])
def test_bad_provider_keys_are_config_errors_naming_the_key(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), environ={})
    assert named in str(info.value)


def test_webpush_keys_reach_the_provider(tmp_path: Path) -> None:
    pem, public = new_vapid_key()
    text = f"[channels.push]\nprovider = \"webpush\"\nvapid_private_key = '''{pem}'''\n" \
           "vapid_subject = \"mailto:ops@example.com\"\n"
    push = build_providers(load_settings(write(tmp_path, text), environ={}))[0]["push"]
    assert isinstance(push, WebPushProvider) and push.signer.public_key == public


def test_serve_refuses_a_vapid_key_it_cannot_read_with_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_logging: None) -> None:
    text = '[channels.push]\nprovider = "webpush"\nvapid_private_key = "bm90IGEga2V5"\n' \
           'vapid_subject = "mailto:ops@example.com"\n'
    assert main(["serve", "--config", str(write(tmp_path, text)), "--data-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "channels.push.vapid_private_key" in err and "P-256" in err
    assert not (tmp_path / "d").exists()  # refused before touching the data dir
