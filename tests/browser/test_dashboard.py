"""The dashboard in a real browser, against a real server on the manual
clock: what a user sees on each page, compared with what the API says.

Set CASCADE_SCREENSHOTS=<dir> to save a screenshot of every page there at
1280 px and 375 px (docs/screenshots/ holds the committed ones).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dashboard import PHONE, READ_KEY, Api, Dash, DashboardServer
from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SHOTS = os.environ.get("CASCADE_SCREENSHOTS")


def when(iso: str | None) -> str:
    """An API time as the page shows it."""
    return "—" if iso is None else iso.replace("T", " ").removesuffix("Z") + " UTC"


def num(n: int | None) -> str:
    return "n/a" if n is None else f"{n:,}"


def sequence(first: str, stop: str, wait: int, then: str, name: str = "T") -> dict[str, Any]:
    return {"name": name, "config": {"sequenceEnabled": True}, "channels": [
        {"channel": first, "stopCondition": stop, "waitMinutes": wait,
         "content": {"title": "Your order", "body": "Order {{order.id}} shipped"}},
        {"channel": then, "content": {"title": "Your order", "body": "Order {{order.id}}"}}]}


def start_sends(api: Api, template: str, tag: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        rid = f"{tag}-u{i}"
        api.put(f"/v1/recipients/{rid}", {"email": f"{rid}@example.com", "pushTokens": [f"tok-{rid}"]})
        ids.append(api.post("/v1/sends", {"template": template, "recipient": rid,
                                          "data": {"order": {"id": f"{tag}{i}"}}})["id"])
    return ids


def shot(page: Page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


def advance_from_page(page: Page, label: str) -> None:
    """Move the manual clock with the header's control and wait for the new time to show."""
    clock = page.locator("#clock-now")
    before = clock.inner_text()
    page.get_by_label("Advance by").select_option(label=label)
    page.get_by_role("button", name="Advance clock").click()
    expect(clock).not_to_have_text(before)


def funnel_table_matches(page: Page, metrics: dict[str, Any]) -> None:
    """The page's funnel numbers, row by row in the API's order, are the API's."""
    table = page.get_by_role("table").filter(has_text="Funnel numbers")
    rows = table.locator("tbody tr")
    expect(rows).to_have_count(len(metrics["steps"]))
    for i, step in enumerate(metrics["steps"]):
        row = rows.nth(i)
        expect(row.get_by_role("rowheader")).to_have_text("—" if step["step"] is None else str(step["step"]))
        expect(row.locator("td").first).to_have_text(step["channel"])
        for col in ("requested", "delivered", "viewed", "clicked", "stopped", "escalated", "failed", "skipped"):
            expect(row.locator(f'td[data-col="{col}"]'), f"row {i} {col}").to_have_text(num(step[col]))


@pytest.fixture(scope="module")
def seeded(api: Api) -> dict[str, Any]:
    """A little of everything, for the pages test and the screenshots."""
    api.put("/v1/templates/order-shipped", sequence("inapp", "viewed", 5, "push", "Order shipped"))
    api.put("/v1/templates/order-shipped", sequence("inapp", "viewed", 30, "push", "Order shipped"))
    ids = []
    for minute in range(8):  # spread over minutes, so the charts have a shape
        ids += start_sends(api, "order-shipped", f"shop{minute}", 1 + minute % 3)
        api.post("/v1/admin/clock", {"advanceSeconds": 60})
    for k, sid in enumerate(ids[:6]):  # engaged 40 s to 4 minutes after firing
        fired = datetime.fromisoformat(api.get(f"/v1/sends/{sid}")["steps"][0]["firedAt"])
        at = (fired + timedelta(seconds=40 + 40 * k)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        api.post("/v1/events", {"messageId": f"{sid}.1", "type": "clicked" if k == 5 else "viewed", "at": at})
    campaign = api.post("/v1/campaigns", {"template": "order-shipped", "name": "Winter sale",
                                          "recipients": ["shop0-u0", "shop1-u0", "shop1-u1", "new-u9"]})
    api.post("/v1/admin/clock", {"advanceSeconds": 1800})
    for sid in ids[8:11]:
        api.post("/v1/events", {"messageId": f"{sid}.2", "type": "clicked"})
    return {"sends": ids, "campaign": campaign["id"]}


def test_ui_files_are_served_without_a_key_with_their_types_and_a_strict_csp(server: Any) -> None:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as redirect:
        opener.open(server.base + "/ui")
    redirect.value.close()
    assert redirect.value.code == 308 and redirect.value.headers["Location"] == "/ui/"
    with urllib.request.urlopen(server.base + "/ui/") as r:  # no Authorization: the files hold no data
        assert r.headers["Content-Type"] == "text/html; charset=utf-8"
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        etag = r.headers["ETag"]
        assert b'<script type="module" src="app.js">' in r.read()
    with urllib.request.urlopen(server.base + "/ui/pages/editor.js") as r:
        assert r.headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert r.headers["Cache-Control"] == "no-cache"
    with urllib.request.urlopen(server.base + "/ui/vendor/uPlot-1.6.32.min.css") as r:
        assert r.headers["Content-Type"] == "text/css; charset=utf-8"
        assert "immutable" in r.headers["Cache-Control"]
    with pytest.raises(urllib.error.HTTPError) as unchanged:
        urllib.request.urlopen(urllib.request.Request(server.base + "/ui/", headers={"If-None-Match": etag}))
    unchanged.value.close()
    assert unchanged.value.code == 304
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(server.base + "/ui/../cascade/config.py")
    missing.value.close()
    assert missing.value.code == 404


def test_every_page_loads_without_console_errors_at_desktop_and_phone_width(
        dash: Dash, api: Api, seeded: dict[str, Any]) -> None:
    series_missing = api.status_of("/v1/stats/series?minutes=60&step=60") == 404
    if series_missing:
        dash.expect_http_error(404, "/v1/stats/series")
    page = dash.sign_in()
    send = seeded["sends"][0]
    pages = [
        ("overview", "Overview", page.get_by_role("table").filter(has_text="Requests and engagement per channel")),
        ("templates", "Templates", page.get_by_role("rowheader", name="order-shipped")),
        ("templates/order-shipped", "Template order-shipped", page.get_by_text("Funnel · Sends · Edit")),
        ("templates/order-shipped/edit", "Edit template order-shipped", page.get_by_label("Channel").first),
        ("templates/order-shipped/funnel", "Funnel of order-shipped", page.get_by_role("table").filter(has_text="Funnel numbers")),
        ("sends", "Sends", page.get_by_role("link", name=send)),
        (f"sends/{send}", f"Send {send}", page.get_by_role("heading", name="History")),
        ("campaigns", "Campaigns", page.get_by_role("link", name=seeded["campaign"])),
        (f"campaigns/{seeded['campaign']}", f"Campaign {seeded['campaign']}", page.get_by_role("table").filter(has_text="Funnel numbers")),
        ("recipients/shop1-u1", "Recipients · shop1-u1", page.get_by_text("shop1-u1@example.com")),
    ]
    for route, heading, proof in pages:
        for width in ("desktop", "phone"):
            page.set_viewport_size(PHONE if width == "phone" else {"width": 1280, "height": 900})
            dash.open(route)
            expect(page.get_by_role("heading", level=1)).to_have_text(heading)
            expect(proof).to_be_visible()
            if route == "overview":
                note = page.get_by_text("Time series are not available")
                expect(note if series_missing else page.locator(".chart").first).to_be_visible()
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"#{route} is {overflow} px wider than a {width} screen"
            shot(page, f"{route.split('/')[0]}{'-' + route.split('/')[-1] if '/' in route else ''}-{width}"
                 .replace("order-shipped", "template").replace(send, "send").replace(seeded["campaign"], "campaign"))


def test_the_editor_offers_only_valid_choices_and_a_second_save_is_version_two(dash: Dash, api: Api) -> None:
    page = dash.sign_in(route="templates/new")
    page.get_by_label("Template id").fill("ui-made")
    page.get_by_label("Name").fill("Made in the editor")
    step1 = page.get_by_role("group", name="Step 1")
    step2 = page.get_by_role("group", name="Step 2 (terminal)")
    wait_options = step1.get_by_label("Wait").locator("option")
    expect(wait_options).to_have_text(["5 min", "10 min", "30 min", "1 h", "4 h", "24 h"])
    expect(step1.get_by_label("Stop when").locator("option")).to_have_text(
        ["delivered (or stronger)", "viewed (or stronger)", "clicked (or stronger)"])
    # One step per channel: step 2 is push, so step 1 cannot be; make step 2 email, step 1 push.
    expect(step1.get_by_label("Channel").locator("option")).to_have_text(["inapp", "email", "sms"])
    step2.get_by_label("Channel").select_option("email")
    step1.get_by_label("Channel").select_option("push")
    # push emits no viewed signal, so it is not offered; the terminal step has no condition or window
    expect(step1.get_by_label("Stop when").locator("option")).to_have_text(
        ["delivered (or stronger)", "clicked (or stronger)"])
    expect(step2.get_by_label("Stop when")).to_have_count(0)
    expect(step2.get_by_label("Wait")).to_have_count(0)
    step1.get_by_label("Wait").select_option(label="10 min")
    page.get_by_role("button", name="Save template").click()
    expect(page.get_by_role("status").filter(has_text="Saved")).to_have_text("Saved: version 1 of ui-made.")
    first = api.get("/v1/templates/ui-made")
    assert first["version"] == 1 and first["name"] == "Made in the editor"
    assert [(c["channel"], c.get("stopCondition"), c.get("waitMinutes")) for c in first["channels"]] == [
        ("push", "clicked", 10), ("email", None, None)]

    step1.get_by_label("Wait").select_option(label="1 h")
    page.get_by_role("button", name="Save template").click()
    expect(page.locator(".current-version")).to_contain_text("Version 2 is current")
    expect(page.get_by_role("table").filter(has_text="Saved from this page").locator("tbody tr")).to_have_count(2)
    second = api.get("/v1/templates/ui-made")
    assert second["version"] == 2 and second["channels"][0]["waitMinutes"] == 60
    page.get_by_role("link", name="Templates").click()
    row = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name="ui-made"))
    expect(row).to_contain_text("push → email")
    expect(row.get_by_role("cell").nth(2)).to_have_text("2")


def test_the_apis_422_is_shown_at_the_field_its_path_names(dash: Dash, api: Api) -> None:
    dash.expect_http_error(422, "/v1/templates/")
    page = dash.sign_in(route="templates/new")
    page.get_by_label("Template id").fill("Bad_ID")
    page.get_by_role("group", name="Step 2 (terminal)").get_by_role("button", name="Remove").click()
    page.get_by_role("button", name="Save template").click()
    # $.id: at the id field, which is marked invalid and points at its message
    id_field = page.get_by_label("Template id")
    expect(id_field).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#tpl-id-error")).to_have_text("template id 'Bad_ID' must match [a-z0-9][a-z0-9_-]{0,63}")
    expect(id_field).to_have_attribute("aria-describedby", "tpl-id-error")
    # $.channels: at the steps
    expect(page.get_by_role("group", name="Steps").locator("#tpl-channels-error")).to_have_text(
        "a sequence needs at least two steps")
    expect(page.get_by_role("alert")).to_contain_text("Not saved")
    assert api.status_of("/v1/templates/bad_id") == 404


def test_funnel_numbers_on_the_page_are_the_apis_after_advancing_the_clock_from_the_page(
        dash: Dash, api: Api) -> None:
    api.put("/v1/templates/funnel-t", sequence("inapp", "viewed", 5, "push"))
    ids = start_sends(api, "funnel-t", "fun", 5)
    fired = [datetime.fromisoformat(api.get(f"/v1/sends/{sid}")["steps"][0]["firedAt"]) for sid in ids[:2]]
    at = [(t + timedelta(seconds=s)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
          for t, s in zip(fired, (120, 60))]  # engaged 2 minutes and 1 minute after firing
    api.post("/v1/events", {"events": [{"messageId": f"{ids[0]}.1", "type": "viewed", "at": at[0]},
                                       {"messageId": f"{ids[1]}.1", "type": "clicked", "at": at[1]},
                                       {"messageId": f"{ids[2]}.1", "type": "delivered"}]})
    page = dash.sign_in(route="templates/funnel-t/funnel")
    before = api.get("/v1/templates/funnel-t/metrics")
    assert before["steps"][1]["requested"] == 0
    funnel_table_matches(page, before)

    advance_from_page(page, "5 minutes")
    after = api.get("/v1/templates/funnel-t/metrics")
    assert after["steps"][0]["escalated"] == 3 and after["steps"][1]["requested"] == 3  # the window ended
    funnel_table_matches(page, after)
    step1 = page.get_by_role("region", name="Step 1, inapp")
    expect(step1.locator(".bar-row").filter(has_text="requested").locator(".bar-value")).to_have_text("5")
    expect(step1).to_contain_text("stopped 2 (40.0%), escalated 3 (60.0%)")
    times = page.get_by_role("table").filter(has_text="Time from firing to the first view or click")
    expect(times.locator("caption")).to_contain_text("over the newest 5 sends")
    row = times.get_by_role("row").filter(has=page.get_by_role("rowheader", name="1", exact=True))
    expect(row.locator("td")).to_have_text(["inapp", "2", "60.0 s", "2.0 min"])  # channel, engaged, median, p90


def test_a_sends_timeline_on_the_page_is_the_apis_view(dash: Dash, api: Api) -> None:
    api.put("/v1/templates/timeline-t", {"name": "Three", "config": {"sequenceEnabled": True}, "channels": [
        {"channel": "inapp", "stopCondition": "viewed", "waitMinutes": 5, "content": {"title": "Hi"}},
        {"channel": "email", "stopCondition": "clicked", "waitMinutes": 10, "content": {"subject": "Hi"}},
        {"channel": "push", "content": {"title": "Hi"}}]})
    sid = start_sends(api, "timeline-t", "line", 1)[0]
    api.post("/v1/events", {"messageId": f"{sid}.1", "type": "delivered"})
    api.post("/v1/admin/clock", {"advanceSeconds": 300})  # step 1's window ends: email fires
    view = api.get(f"/v1/sends/{sid}")
    assert [s["status"] for s in view["steps"]] == ["fired", "waiting", "pending"]

    page = dash.sign_in(route=f"sends/{sid}")
    summary = page.locator("dl.summary")
    expect(summary).to_contain_text(view["status"])
    expect(summary).to_contain_text(f"{view['template']} version {view['templateVersion']}")
    cards = page.locator("ol.timeline > li")
    expect(cards).to_have_count(len(view["steps"]))
    for card, step in zip(cards.all(), view["steps"]):
        expect(card.get_by_role("heading")).to_have_text(f"Step {step['step']} · {step['channel']} {step['status']}")
        expect(card.locator('[data-field="firedAt"]')).to_have_text(when(step["firedAt"]))
        if step["deadline"]:
            expect(card.locator('[data-field="deadline"]')).to_have_text(when(step["deadline"]))
        for signal, at in step["signals"].items():
            if card.locator(f'[data-field="{signal}"]').count():
                expect(card.locator(f'[data-field="{signal}"]')).to_have_text(when(at) if at else "not yet")
    expect(cards.nth(0).locator('[data-field="delivered"]')).to_have_text(when(view["steps"][0]["signals"]["delivered"]))
    expect(cards.nth(2).locator('[data-field="viewed"]')).to_have_count(0)  # push emits no viewed signal
    if "history" in view:
        items = page.locator("ol.history > li")
        expect(items).to_have_count(len(view["history"]))
        for item, entry in zip(items.all(), view["history"]):
            expect(item).to_have_attribute("data-what", entry["what"])
            expect(item.locator("time")).to_have_text(when(entry["at"]))
        expect(page.locator('ol.history > li[data-what="window_ended"]')).to_contain_text(
            "window ended without viewed")


def test_sends_search_by_recipient_and_status_shows_the_apis_list(dash: Dash, api: Api) -> None:
    api.put("/v1/templates/search-t", sequence("inapp", "viewed", 5, "push"))
    rid = "finder-1"
    api.put(f"/v1/recipients/{rid}", {"pushTokens": ["tok"]})
    mine = [api.post("/v1/sends", {"template": "search-t", "recipient": rid})["id"] for _ in range(3)]
    api.post("/v1/events", {"messageId": f"{mine[1]}.1", "type": "clicked"})
    page = dash.sign_in(route="sends")
    page.get_by_label("Recipient id").fill(rid)
    page.get_by_label("Status").select_option("active")
    page.get_by_role("button", name="Search").click()
    listed = api.get(f"/v1/sends?recipient={rid}&status=active")["sends"]
    assert {s["id"] for s in listed} == {mine[0], mine[2]}
    expect(page.locator("table.sends tbody th")).to_have_text([s["id"] for s in listed])


def test_a_read_key_sees_but_is_offered_no_edits(dash: Dash, api: Api) -> None:
    dash.expect_http_error(401, "/v1/admin/clock")  # the wrong key first
    dash.expect_http_error(403, "/v1/admin/clock")  # how the page learns the key cannot administer
    api.put("/v1/templates/readable", sequence("inapp", "viewed", 5, "push"))
    page = dash.open("templates")
    page.get_by_label("API key").fill("no-such-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("unknown API key")
    dash.sign_in(READ_KEY)
    expect(page.get_by_text("read-only key")).to_be_visible()
    expect(page.get_by_role("rowheader", name="readable")).to_be_visible()
    expect(page.get_by_role("link", name="New template")).to_have_count(0)
    expect(page.get_by_role("button", name="Advance clock")).to_have_count(0)
    dash.open("templates/readable/edit")
    expect(page.get_by_text("This key can read templates but not change them")).to_be_visible()
    expect(page.get_by_label("Name")).to_be_disabled()
    expect(page.get_by_role("button", name="Save template")).to_have_count(0)


def test_a_campaign_from_a_csv_upload_shows_its_rows_status_and_funnel(dash: Dash, api: Api) -> None:
    api.put("/v1/templates/csv-t", sequence("inapp", "viewed", 5, "email"))
    page = dash.sign_in(route="campaigns")
    page.get_by_label("Template").select_option("csv-t")
    page.get_by_label("Name").fill("From a file")
    csv = "recipient,email,order.id\ncsv-1,c1@example.com,A1\ncsv-2,c2@example.com,A2\ncsv-1,again@example.com,A3\n"
    page.get_by_label("CSV file").set_input_files(
        {"name": "people.csv", "mimeType": "text/csv", "buffer": csv.encode()})
    page.get_by_role("button", name="Upload and create").click()
    created = page.get_by_role("status").filter(has_text="Created")
    expect(created).to_contain_text("2 recipients, 1 rows rejected")
    expect(created).to_contain_text("row 3: duplicate recipient 'csv-1'")
    created.get_by_role("link").click()
    cid = page.url.rsplit("/", 1)[-1]
    api.post("/v1/admin/clock", {"advanceSeconds": 0})  # returns once the fan-out has started every row
    view = api.get(f"/v1/campaigns/{cid}")
    assert view["sendsStarted"] == 2
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Campaign {cid}")
    expect(page.locator("dl.summary")).to_contain_text(view["status"])
    expect(page.get_by_text(f"{view['sendsStarted']} of {view['recipients']}")).to_be_visible()
    funnel_table_matches(page, view["metrics"])


def test_a_recipient_page_shows_addresses_and_the_inbox_also_live(dash: Dash, api: Api) -> None:
    api.put("/v1/templates/inbox-t", sequence("inapp", "viewed", 5, "email"))
    api.put("/v1/recipients/reader-1", {"email": "reader@example.com", "preferences": {"sms": False}})
    api.post("/v1/sends", {"template": "inbox-t", "recipient": "reader-1", "data": {"order": {"id": "Q1"}}})
    page = dash.sign_in(route="recipients")
    page.get_by_label("Recipient id").fill("reader-1")
    page.get_by_role("button", name="Look up").click()
    expect(page.get_by_text("reader@example.com")).to_be_visible()
    expect(page.get_by_text("sms: opted out")).to_be_visible()
    page.get_by_role("button", name="List the inbox").click()
    expect(page.get_by_role("status").filter(has_text="shown")).to_have_text("1 message shown, 1 unseen.")
    expect(page.get_by_role("cell").filter(has_text="Order Q1 shipped")).to_be_visible()

    if api.status_of("/v1/recipients/reader-1/inbox/stream") == 404:
        dash.expect_http_error(404, "/inbox/stream")
        page.get_by_role("button", name="Follow live").click()
        expect(page.get_by_text("Live updates are not available")).to_be_visible()
        return
    page.get_by_role("button", name="Follow live").click()
    expect(page.get_by_role("status").filter(has_text="connected")).to_contain_text("unseen: 1")
    api.post("/v1/sends", {"template": "inbox-t", "recipient": "reader-1", "data": {"order": {"id": "Q2"}}})
    expect(page.get_by_role("status").filter(has_text="connected")).to_contain_text("unseen: 2")
    expect(page.locator("section", has_text="Live inbox").locator("ol.history li")).to_contain_text(["message"])
    page.get_by_role("button", name="Stop following").click()


def test_delivery_rules_offer_engagement_order_to_sequences_only_and_their_422s_land_at_their_fields(
        dash: Dash, api: Api) -> None:
    dash.expect_http_error(422, "/v1/templates/")
    page = dash.sign_in(route="templates/new")
    page.get_by_label("Template id").fill("ruled")
    engagement = page.get_by_label("Order of the steps").locator('option[value="engagement"]')
    page.get_by_label("A sequence").uncheck()
    expect(engagement).to_be_disabled()
    page.get_by_label("A sequence").check()
    expect(engagement).to_be_enabled()
    page.get_by_label("Order of the steps").select_option("engagement")
    # ordered by engagement, whichever step ends up last ignores its window, so every step has one
    last = page.get_by_role("group", name="Step 2", exact=True)
    expect(last.get_by_label("Stop when")).to_have_count(1)
    last.get_by_label("Stop when").select_option("clicked")
    page.get_by_label("Throttle").check()
    page.get_by_label("Sends (1–1000)").fill("0")
    page.get_by_role("button", name="Save template").click()
    limit = page.get_by_label("Sends (1–1000)")
    expect(limit).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#tpl-throttle-limit-error")).to_have_text("limit 0 must be a whole number from 1 to 1000")
    limit.fill("5")
    page.get_by_role("button", name="Save template").click()
    expect(page.get_by_role("status").filter(has_text="Saved")).to_have_text("Saved: version 1 of ruled.")
    saved = api.get("/v1/templates/ruled")
    assert saved["config"]["order"] == "engagement"
    assert saved["config"]["throttle"] == {"limit": 5, "windowMinutes": 60}
    assert [c.get("stopCondition") for c in saved["channels"]] == ["viewed", "clicked"]
    expect(limit).not_to_have_attribute("aria-invalid", "true")


def test_keyboard_users_see_where_focus_is_and_can_skip_to_the_content(dash: Dash) -> None:
    page = dash.sign_in(route="sends")
    expect(page.locator("main")).to_be_focused()  # signing in puts focus at the content
    page.reload()  # arrive at the page, signed in (the key is in sessionStorage), with nothing focused yet
    expect(page.get_by_role("heading", level=1)).to_have_text("Sends")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    expect(skip).to_be_in_viewport()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()
    page.keyboard.press("Tab")  # the first control of the page: the recipient filter, with a visible outline
    field = page.get_by_label("Recipient id")
    expect(field).to_be_focused()
    outline = field.evaluate("e => { const s = getComputedStyle(e); return [s.outlineStyle, parseFloat(s.outlineWidth)]; }")
    assert outline[0] == "solid" and outline[1] >= 2, outline


def test_with_no_keys_configured_the_dashboard_opens_without_a_sign_in(
        browser: Any, tmp_path: Path) -> None:
    open_server = DashboardServer(tmp_path, tmp_path / "data", keys={}).start()
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, open_server.wait_ready()).result()
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{open_server.base}/ui/#/templates")
            expect(page.get_by_role("heading", level=1)).to_have_text("Templates")
            expect(page.get_by_text("no keys configured")).to_be_visible()
            expect(page.get_by_label("API key")).to_have_count(0)
            expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
            expect(page.get_by_role("link", name="New template")).to_be_visible()  # open means the API's admin
            expect(page.get_by_role("button", name="Advance clock")).to_be_visible()
            assert errors == []
        finally:
            context.close()
    finally:
        open_server.cleanup()


def test_a_template_ordered_by_engagement_shows_its_funnel_per_channel(dash: Dash, api: Api) -> None:
    body = sequence("inapp", "viewed", 5, "email")
    body["config"]["order"] = "engagement"
    body["channels"][1].update({"stopCondition": "clicked", "waitMinutes": 10})
    api.put("/v1/templates/engaged-t", body)
    ids = start_sends(api, "engaged-t", "eng", 4)
    api.post("/v1/events", {"messageId": f"{ids[0]}.1", "type": "clicked"})
    api.post("/v1/admin/clock", {"advanceSeconds": 600})
    metrics = api.get("/v1/templates/engaged-t/metrics")
    assert {s["step"] for s in metrics["steps"]} == {None}
    page = dash.sign_in(route="templates/engaged-t/funnel")
    expect(page.get_by_role("table").filter(has_text="Funnel numbers").locator("caption")).to_contain_text(
        "per channel (ordered by engagement")
    funnel_table_matches(page, metrics)
    expect(page.get_by_role("region", name="inapp", exact=True).get_by_role("heading")).to_have_text("inapp")
