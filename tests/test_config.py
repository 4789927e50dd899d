"""Settings: defaults, the TOML file, CASCADE_* environment, flags, and the
errors a user sees (naming the key); plus `cascade serve`'s refusal to start."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cascade.cli import main
from cascade.config import ConfigError, load_settings

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cascade.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_no_file_no_env_runs_on_embedded_defaults() -> None:
    s = load_settings(environ={})
    assert (s.server.host, s.server.port) == ("127.0.0.1", 8080)
    assert s.server.max_body_bytes == 8 * 1024 * 1024
    assert s.server.max_csv_bytes == 512 * 1024 * 1024
    assert s.storage.data_dir == "./cascade-data"
    assert s.storage.journal_fsync == "batch"
    assert s.storage.retain_finished_s == 7 * 86400
    assert s.auth.api_keys == {} and s.auth.inbox_secret is None
    assert (s.clock.mode, s.clock.rate) == ("real", 60.0)
    assert s.channels == {}
    assert s.channel("push").provider == "log"


def test_the_api_md_example_file_is_read_whole(tmp_path: Path) -> None:
    path = write(tmp_path, """
[server]
host = "127.0.0.1"
port = 9091
max_body_bytes = 1024

[storage]
data_dir = "/var/lib/cascade"
journal_fsync = "always"

[auth]
api_keys = { "k-admin" = "admin", "k-provider" = "events" }
inbox_secret = "change-me"

[clock]
mode = "scaled"
rate = 120.0

[channels.push]
provider = "webhook"
url = "http://127.0.0.1:9000/push"
secret = "whsec"
timeout_s = 5
max_attempts = 3
max_in_flight = 256
""")
    s = load_settings(path, environ={})
    assert s.server.port == 9091 and s.server.max_body_bytes == 1024
    assert s.storage.data_dir == "/var/lib/cascade" and s.storage.journal_fsync == "always"
    assert s.auth.api_keys == {"k-admin": "admin", "k-provider": "events"}
    assert s.auth.inbox_secret == "change-me"
    assert (s.clock.mode, s.clock.rate) == ("scaled", 120.0)
    push = s.channel("push")
    assert (push.provider, push.url, push.secret, push.max_attempts) == ("webhook", "http://127.0.0.1:9000/push",
                                                                          "whsec", 3)
    assert s.channel("email").provider == "log"


def test_environment_overrides_the_file_including_api_keys(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nport = 9091\n[auth]\napi_keys = { "old" = "admin" }\n')
    s = load_settings(path, environ={
        "CASCADE_SERVER_PORT": "9092", "CASCADE_CLOCK_MODE": "manual",
        "CASCADE_AUTH_API_KEYS": "k1=admin, k2=events", "CASCADE_STORAGE_DATA_DIR": "/tmp/x",
        "UNRELATED": "1", "CASCADE_LOG_LEVEL": "DEBUG"})
    assert s.server.port == 9092
    assert s.clock.mode == "manual"
    assert s.auth.api_keys == {"k1": "admin", "k2": "events"}  # replaced, not merged
    assert s.storage.data_dir == "/tmp/x"


def test_flags_win_over_environment_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nport = 9091\n[clock]\nmode = "real"\n')
    s = load_settings(path, flags={"server.port": 9093, "clock.mode": "manual", "server.host": None},
                      environ={"CASCADE_SERVER_PORT": "9092", "CASCADE_SERVER_HOST": "localhost"})
    assert s.server.port == 9093
    assert s.clock.mode == "manual"
    assert s.server.host == "localhost"  # a None flag is "not given"


@pytest.mark.parametrize(("text", "env", "names"), [
    ('[server]\nport = 70000\n', {}, "server.port"),
    ('[server]\nport = "http"\n', {}, "port"),
    ('[clock]\nmode = "fast"\n', {}, "mode"),
    ('[clock]\nrate = -1.0\n', {}, "clock.rate"),
    ('[server]\nhots = "x"\n', {}, "hots"),
    ('[channels.push]\nprovider = "webhook"\n', {}, "channels.push.url"),
    ('[channels.fax]\nprovider = "log"\n', {}, "fax"),
    ('[auth]\napi_keys = { "k" = "root" }\n', {}, "api_keys"),
    ('', {"CASCADE_SERVER_PORT": "eighty"}, "port"),
    ('[engine]\nshards = 0\n', {}, "engine.shards"),
    ('[storage]\njournal_sync_interval_ms = -1.0\n', {}, "storage.journal_sync_interval_ms"),
    ('', {"CASCADE_STORAGE_JOURNAL_SYNC_INTERVAL_MS": "nan"}, "storage.journal_sync_interval_ms"),
    ('[server]\nlisten_backlog = 0\n', {}, "server.listen_backlog"),
])
def test_errors_name_the_key(tmp_path: Path, text: str, env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), environ=env)
    assert names in str(info.value)


@pytest.mark.parametrize(("text", "names"), [
    ('[server]\nport = "8080"\n', 'server.port = "8080" is not allowed: it must be an integer'),
    ('[server]\nport = 8080.0\n', "server.port = 8080.0 is not allowed: it must be an integer"),
    ('[server]\nport = true\n', "server.port = true is not allowed: it must be an integer"),
    ('[server]\nhost = 127\n', "server.host = 127 is not allowed: it must be a string"),
    ('[clock]\nrate = "60"\n', 'clock.rate = "60" is not allowed: it must be a number'),
    ('[clock]\nrate = true\n', "clock.rate = true is not allowed: it must be a number"),
    ('[storage]\njournal_fsync = 1\n', 'storage.journal_fsync = 1 is not allowed: it must be one of "batch"'),
    ('[auth]\ninbox_secret = 5\n', "auth.inbox_secret = 5 is not allowed: it must be a string"),
    ('[auth]\napi_keys = { "a" = "admin", "b" = "root" }\n', 'auth.api_keys.b = "root" is not allowed'),
    ('[channels.email]\n[channels.push]\nmax_attempts = "3"\n',
     'channels.push.max_attempts = "3" is not allowed: it must be an integer'),
    ('[channels.push]\nprovider = "fax"\n', 'channels.push.provider = "fax" is not allowed: it must be one of'),
    ('[channels.fax]\nprovider = "log"\n', 'channels.fax is not allowed: the keys of channels are "push"'),
    ('[channels]\npush = 1\n', "channels.push = 1 is not allowed: it must be a table"),
])
def test_a_file_value_of_the_wrong_type_is_a_config_error_naming_the_key_and_its_type(
        tmp_path: Path, text: str, names: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), environ={})
    assert names in str(info.value)


def test_environment_values_are_read_as_the_type_of_their_key() -> None:
    s = load_settings(environ={"CASCADE_SERVER_PORT": "9092", "CASCADE_CLOCK_RATE": "1.5",
                               "CASCADE_STORAGE_SNAPSHOTS_KEPT": "5", "CASCADE_STORAGE_JOURNAL_FSYNC": "off"})
    assert (s.server.port, s.clock.rate, s.storage.snapshots_kept, s.storage.journal_fsync) == (9092, 1.5, 5, "off")
    for env, names in [({"CASCADE_CLOCK_RATE": "fast"}, "CASCADE_CLOCK_RATE='fast' is not allowed: clock.rate must "
                                                         "be a number"),
                       ({"CASCADE_CLOCK_MODE": "sundial"}, "CASCADE_CLOCK_MODE='sundial' is not allowed: clock.mode "
                                                           'must be one of "real", "manual", "scaled"'),
                       ({"CASCADE_SERVER_HOTS": "x"}, "CASCADE_SERVER_HOTS names no setting")]:
        with pytest.raises(ConfigError) as info:
            load_settings(environ=env)
        assert names in str(info.value)


def test_cascade_channels_environment_variables_configure_a_channel_like_the_file(tmp_path: Path) -> None:
    env = {"CASCADE_CHANNELS_PUSH_PROVIDER": "webhook", "CASCADE_CHANNELS_PUSH_URL": "http://127.0.0.1:9000/push",
           "CASCADE_CHANNELS_PUSH_SECRET": "whsec", "CASCADE_CHANNELS_PUSH_TIMEOUT_S": "2.5",
           "CASCADE_CHANNELS_PUSH_MAX_ATTEMPTS": "5", "CASCADE_CHANNELS_PUSH_MAX_IN_FLIGHT": "64",
           "CASCADE_CHANNELS_SMS_PROVIDER": "memory"}
    from_env = load_settings(environ=env)
    from_file = load_settings(write(tmp_path, """
[channels.push]
provider = "webhook"
url = "http://127.0.0.1:9000/push"
secret = "whsec"
timeout_s = 2.5
max_attempts = 5
max_in_flight = 64

[channels.sms]
provider = "memory"
"""), environ={})
    assert from_env.channels == from_file.channels
    assert from_env.channel("push").max_in_flight == 64 and from_env.channel("email").provider == "log"
    # the environment overrides the file key by key, like any other section
    over = load_settings(write(tmp_path, '[channels.push]\nprovider = "webhook"\n'
                                         'url = "http://a/push"\nsecret = "s"\n'),
                         environ={"CASCADE_CHANNELS_PUSH_URL": "http://b/push"})
    assert (over.channel("push").provider, over.channel("push").url, over.channel("push").secret) == (
        "webhook", "http://b/push", "s")


@pytest.mark.parametrize(("env", "names"), [
    ({"CASCADE_CHANNELS_PUSH_PROVIDER": "webhook"}, "channels.push.url must be an http(s) URL"),
    ({"CASCADE_CHANNELS_FAX_URL": "http://x"}, "CASCADE_CHANNELS_FAX_URL: 'fax' is not a channel"),
    ({"CASCADE_CHANNELS_PUSH_COLOUR": "red"}, "CASCADE_CHANNELS_PUSH_COLOUR names no setting"),
    ({"CASCADE_CHANNELS_PUSH_MAX_ATTEMPTS": "many"}, "CASCADE_CHANNELS_PUSH_MAX_ATTEMPTS='many' is not allowed: "
                                                     "channels.push.max_attempts must be an integer"),
    ({"CASCADE_CHANNELS_EMAIL_PROVIDER": "pigeon"}, 'channels.email.provider must be one of "log", "webhook"'),
])
def test_a_bad_cascade_channels_environment_variable_is_a_config_error_naming_it(
        env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ=env)
    assert names in str(info.value)


def test_an_unknown_log_format_is_a_config_error_naming_the_allowed_values(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, restore_logging: None) -> None:
    for fmt in ("xml", "", "json5"):
        with pytest.raises(ConfigError, match="CASCADE_LOG_FORMAT .* is not allowed; use one of json, logfmt"):
            load_settings(environ={"CASCADE_LOG_FORMAT": fmt})
    for fmt in ("json", "logfmt", " LOGFMT "):
        load_settings(environ={"CASCADE_LOG_FORMAT": fmt})
    monkeypatch.delenv("CASCADE_AUTH_API_KEYS", raising=False)
    monkeypatch.setenv("CASCADE_LOG_FORMAT", "xml")
    assert main(["serve"]) == 2
    assert "json, logfmt" in capsys.readouterr().err


def test_unreadable_or_broken_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "missing.toml", environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[server\n"), environ={})


def test_a_non_loopback_address_without_api_keys_is_refused() -> None:
    with pytest.raises(ConfigError, match="server.host '0.0.0.0' is not a loopback address"):
        load_settings(flags={"server.host": "0.0.0.0"}, environ={})
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert load_settings(flags={"server.host": host}, environ={}).server.host == host
    keyed = load_settings(flags={"server.host": "0.0.0.0"}, environ={"CASCADE_AUTH_API_KEYS": "k=admin"})
    assert keyed.server.host == "0.0.0.0"


def test_cascade_serve_refuses_a_bad_configuration_with_exit_code_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        restore_logging: None) -> None:
    monkeypatch.delenv("CASCADE_AUTH_API_KEYS", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "8099"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "server.host" in err[0] and "api_keys" in err[0] and '"level": "error"' in err[0]
    assert main(["serve", "--config", str(write(tmp_path, "[clock]\nrate = 0.0\n"))]) == 2
    assert "clock.rate" in capsys.readouterr().err


def serve_refusal(tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`cascade serve` on `data_dir`: its exit code and its error line."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["serve", "--port", str(port), "--data-dir", str(data_dir)])
    errors = [line for line in capsys.readouterr().err.splitlines() if '"level": "error"' in line]
    assert len(errors) == 1, errors
    return code, json.loads(errors[0])["msg"]


def test_a_data_dir_that_cannot_be_made_stops_the_server_naming_the_path_and_the_reason(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        restore_logging: None) -> None:
    monkeypatch.delenv("CASCADE_AUTH_API_KEYS", raising=False)
    (tmp_path / "a-file").write_text("")
    code, message = serve_refusal(tmp_path, tmp_path / "a-file" / "data", capsys)
    assert code == 2
    assert str(tmp_path / "a-file" / "data") in message and "Not a directory" in message
    assert "port" not in message and "serve on" not in message

    used = tmp_path / "used"
    used.mkdir()
    (used / "journal").write_text("")  # where the journal directory must go
    code, message = serve_refusal(tmp_path, used, capsys)
    assert code == 2
    assert str(used) in message and "File exists" in message and str(used / "journal") in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any directory")
def test_an_unwritable_data_dir_stops_the_server_naming_the_path_and_the_reason(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        restore_logging: None) -> None:
    monkeypatch.delenv("CASCADE_AUTH_API_KEYS", raising=False)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, message = serve_refusal(tmp_path, locked / "data", capsys)
    finally:
        locked.chmod(0o755)
    assert code == 2
    assert str(locked / "data") in message and "Permission denied" in message and "port" not in message


def test_cli_version_help_and_unknown_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert "cascade 0.1.0" in capsys.readouterr().out
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--config", "--host", "--port", "--data-dir", "--clock", "--clock-rate", "CASCADE_"):
        assert flag in out
    assert main(["serve", "--clock", "sundial"]) == 2
    assert main([]) == 2


def test_snapshot_subcommand_is_delegated(tmp_path: Path) -> None:
    broken = tmp_path / "snapshot-00000000000000000001-shard00.msgpack"
    broken.write_bytes(b"not a snapshot")
    assert main(["snapshot", "verify", str(broken)]) == 1
    assert main(["snapshot"]) == 2


def test_the_module_runs_as_a_script() -> None:
    out = subprocess.run([sys.executable, "-m", "cascade.cli", "--version"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "cascade 0.1.0"


def test_logging_is_one_json_object_a_line_with_level_from_the_environment(restore_logging: None) -> None:
    import io
    import json

    from cascade.logs import request_id_var, setup_logging

    out = io.StringIO()
    setup_logging({"CASCADE_LOG_LEVEL": "warning"}, stream=out)
    logging.getLogger("cascade.server").info("hidden")
    token = request_id_var.set("req-7")
    try:
        logging.getLogger("cascade.http").warning("slow %s", "request", extra={"ms": 12.5})
    finally:
        request_id_var.reset(token)
    [line] = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["level"] == "warning" and record["logger"] == "cascade.http"
    assert record["msg"] == "slow request" and record["ms"] == 12.5 and record["request_id"] == "req-7"
    assert record["ts"].endswith("Z") and len(record["ts"]) == 24


def test_delivery_log_lines_stay_flat_json_and_logfmt_is_available(restore_logging: None) -> None:
    import io
    import json

    from cascade.engine import LogProvider, OutgoingMessage
    from cascade.logs import setup_logging

    out = io.StringIO()
    setup_logging({}, stream=out)  # INFO by default: deliveries are visible
    message = OutgoingMessage("snd_1.2", "snd_1", "t", 1, 2, "push", {"id": "u-42"}, {"title": "Hi \"you\""})
    assert LogProvider().deliver_now(message).ok
    record = json.loads(out.getvalue())
    assert record["logger"] == "cascade.delivery" and record["level"] == "info"
    assert record["messageId"] == "snd_1.2" and record["content"] == {"title": 'Hi "you"'}

    out = io.StringIO()
    setup_logging({"CASCADE_LOG_FORMAT": "logfmt"}, stream=out)
    logging.getLogger("cascade.server").info("ready on %s", "http://x", extra={"event": "ready"})
    assert out.getvalue().strip().endswith('level=info logger=cascade.server msg="ready on http://x" event=ready')


@pytest.mark.parametrize("section, key, value", [
    ("clock", "rate", "nan"), ("clock", "rate", "inf"), ("engine", "shed_lag_s", "nan"),
    ("engine", "tick_interval_s", "0.0"), ("engine", "tick_interval_s", "-1.0"),
    ("storage", "retain_finished_s", "-5.0"), ("engine", "max_pending_per_shard", "0"),
    ("server", "shutdown_timeout_s", "nan"),
])
def test_a_number_that_makes_no_sense_stops_the_server_naming_its_key(tmp_path: Path, section: str, key: str,
                                                                       value: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[{section}]\n{key} = {value}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"{section}.{key}"):
        load_settings(path, environ={})
