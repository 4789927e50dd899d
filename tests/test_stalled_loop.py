"""API rule 11 through a real server when its event loop stalls: a click
that reached the server's socket before the window's deadline, while the
loop could not read it, still stops the chain. The stall holds the windows
(the watermark waits for the loop to read), and the click counts as having
arrived no later than the loop last read its sockets."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from serverproc import ADMIN, api, config_text, free_port, running

from cascade.config import load_settings

pytestmark = pytest.mark.slow

RATE = 600.0  # clock seconds per real second: a 5-minute window lasts half a second
CHAIN = {"channels": [
    {"channel": "inapp", "stopCondition": "clicked", "waitMinutes": 5, "content": {"body": "hi"}},
    {"channel": "push", "content": {"body": "still there?"}},
], "config": {"sequenceEnabled": True}}


def click_from_a_thread(port: int, message_id: str, answers: list[Any]) -> threading.Thread:
    """POST the click on a socket of its own: the kernel takes it while the server's loop is stalled."""
    def post() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/v1/events", json.dumps({"messageId": message_id, "type": "clicked"}),
                     {"Content-Type": "application/json", **ADMIN})
        answers.append(time.monotonic())  # written to the socket
        response = conn.getresponse()
        answers.append((response.status, json.loads(response.read())))
        conn.close()

    return threading.Thread(target=post, daemon=True)


async def test_a_click_waiting_unread_in_a_stalled_loop_still_stops_the_chain(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "cascade.toml"
    path.write_text(config_text(tmp_path / "data", port, clock="scaled", clock_rate=RATE, shards=1),
                    encoding="utf-8")
    async with running(load_settings(path, environ={})) as (_, http):
        await api(http, "PUT", "/v1/templates/t", CHAIN)
        send = await api(http, "POST", "/v1/sends", {"template": "t", "recipient": "u"})
        opened = time.monotonic()
        deadline_s = 5 * 60 / RATE
        answers: list[Any] = []
        clicker = click_from_a_thread(port, f"{send['id']}.1", answers)
        # The loop stalls from here until well past the deadline (this test runs on the server's loop).
        clicker.start()
        while not answers and time.monotonic() - opened < deadline_s / 2:
            time.sleep(0.005)  # until the click is in the server's socket: well before the deadline
        assert answers, "the click was not written in time"
        written = answers[0]
        time.sleep(max(0.0, opened + 2 * deadline_s - time.monotonic()))
        assert written < opened + deadline_s < time.monotonic()  # written in time; read only after the deadline
        until = time.monotonic() + 10
        while len(answers) < 2 and time.monotonic() < until:
            await asyncio.sleep(0.01)  # the loop runs again: it reads and answers the click
        assert answers[1:] == [(200, {"accepted": 1, "duplicates": 0, "errors": []})]
        view = await api(http, "GET", f"/v1/sends/{send['id']}")
        assert view["status"] == "stopped" and view["stoppedBy"] == {"step": 1, "signal": "clicked"}
        assert [s["status"] for s in view["steps"]] == ["stopped", "pending"]  # push never fired
