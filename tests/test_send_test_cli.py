"""`cascade send-test`: a real `cascade` process renders a stored template
for a stored recipient and posts each provider step once, to an SMTP server
and a Web Push service in the test process, beside a running server whose
data directory it reads without writing a byte."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pushservice import PushService, new_vapid_key
from smtpserver import Mailbox, free_port, running_smtp

from cascade.config import load_settings
from cascade.server import Server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]
ROOT = Path(__file__).resolve().parent.parent
SUBJECT = "mailto:ops@example.com"
TEMPLATE = {
    "channels": [
        {"channel": "inapp", "stopCondition": "viewed", "waitMinutes": 5, "content": {"title": "Shipped"}},
        {"channel": "push", "stopCondition": "clicked", "waitMinutes": 5,
         "content": {"title": "Shipped", "body": "Order {{order.id}}"}},
        {"channel": "email", "content": {"subject": "Order {{order.id}} shipped", "text": "Hi {{recipient.id}}",
                                         "html": "<p>Order {{order.id}}</p>"}},
    ],
    "config": {"sequenceEnabled": True},
}


class World:
    def __init__(self, tmp: Path, mailbox: Mailbox, smtp_port: int, push: PushService, vapid_pem: str) -> None:
        self.data_dir = tmp / "data"
        self.mailbox, self.push = mailbox, push
        self.config = tmp / "cascade.toml"
        self.config.write_text(f"""
[server]
port = {free_port()}
[storage]
data_dir = {json.dumps(str(self.data_dir))}
snapshot_interval_s = 0
[engine]
shed_lag_s = 0.0
[channels.email]
provider = "smtp"
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
from = "Shop <shop@example.com>"
max_attempts = 2
[channels.push]
provider = "webpush"
vapid_private_key = '''{vapid_pem}'''
vapid_subject = "{SUBJECT}"
""", encoding="utf-8")

    async def cli(self, *args: str) -> tuple[int, str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cascade.cli", "send-test", "--config", str(self.config), *args,
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 45)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()


def fingerprint(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[World, aiohttp.ClientSession]]:
    pem, public = new_vapid_key()
    push = await PushService(public, SUBJECT).start()
    try:
        with running_smtp() as (mailbox, port):
            w = World(tmp_path, mailbox, port, push, pem)
            async with Server(load_settings(w.config, environ={})) as server, \
                    aiohttp.ClientSession(server.url) as http:
                for method, path, body in (("PUT", "/v1/templates/shipped", TEMPLATE),
                                           ("PUT", "/v1/recipients/u1", {"email": "ann@example.com",
                                                                         "webPush": [push.subscribe("ann")]}),
                                           ("PUT", "/v1/recipients/u2", {"phone": "+15550100"})):
                    async with http.request(method, path, json=body) as resp:
                        assert resp.status in (200, 201), await resp.text()
                yield w, http
    finally:
        await push.close()


async def test_every_provider_step_is_posted_once_and_the_data_dir_is_untouched(
        world: tuple[World, Any]) -> None:
    w, _ = world
    before = fingerprint(w.data_dir)
    code, out, err = await w.cli("--template", "shipped", "--recipient", "u1", "--data", '{"order": {"id": "A7"}}')
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0] == "step 1 inapp: not posted (in-app messages are the server's inbox)"
    assert lines[1].startswith("step 2 push via webpush: requested (1 attempt), message snd_") and lines[1].endswith(".2")
    assert lines[2].startswith("step 3 email via smtp: requested (1 attempt), message snd_")
    assert [p["content"] for p in w.push.received["ann"]] == [{"title": "Shipped", "body": "Order A7"}]
    assert w.push.problems == []
    assert len(w.mailbox.accepted) == 1 and b"Subject: Order A7 shipped" in w.mailbox.accepted[0][0].content
    assert fingerprint(w.data_dir) == before  # read-only beside the running server


async def test_a_refused_step_and_an_unreachable_one_exit_1_saying_why(world: tuple[World, Any]) -> None:
    w, _ = world
    w.mailbox.data_answers.append("550 5.1.1 No such user")
    code, out, _ = await w.cli("--template", "shipped", "--recipient", "u1", "--data", '{"order": {"id": "A8"}}')
    assert code == 1
    assert "step 3 email via smtp: failed: smtp_550: 5.1.1 No such user (1 attempt)" in out.splitlines()
    code, out, _ = await w.cli("--template", "shipped", "--recipient", "u2")
    assert code == 1
    assert out.splitlines()[1:] == ["step 2 push: skipped: no_address", "step 3 email: skipped: no_address"]


async def test_recipient_json_stands_in_for_the_stored_recipient(world: tuple[World, Any]) -> None:
    w, _ = world
    code, out, err = await w.cli("--template", "shipped", "--recipient", "nobody",
                                 "--recipient-json", '{"email": "zed@example.com"}')
    assert code == 1, out + err  # push: no subscription, so skipped
    assert "step 2 push: skipped: no_address" in out and "step 3 email via smtp: requested" in out
    assert w.mailbox.accepted[-1][0].rcpt_tos == ["zed@example.com"]


async def test_usage_and_data_problems_exit_2_naming_them(world: tuple[World, Any]) -> None:
    w, _ = world
    code, _, err = await w.cli("--template", "nope", "--recipient", "u1")
    assert code == 2 and "nope" in err and "shipped" in err
    code, _, err = await w.cli("--template", "shipped", "--recipient", "ghost")
    assert code == 2 and "'ghost'" in err
    code, _, err = await w.cli("--template", "shipped", "--recipient", "x", "--recipient-json",
                               '{"timezone": "Mars/Base"}')
    assert code == 2 and "Mars/Base" in err
    code, _, err = await w.cli("--template", "shipped", "--recipient", "u1", "--data", "[1]")
    assert code == 2 and "--data must be a JSON object" in err
    assert w.mailbox.accepted == [] and not w.push.received
