"""The dashboard's login in ``start`` mode: refusals without a session, the login form, session cookies, CSRF on
every action, logout; and ``dev`` mode's open dashboard."""

from __future__ import annotations

import re

from stepline.server.dashboard.auth import COOKIE

from .conftest import ADMIN_TOKEN, Dash, MakeDash, login

PAGES = ["/dashboard/runs", "/dashboard/functions", "/dashboard/events", "/dashboard/apps",
         "/dashboard/functions/test-app-greet", "/dashboard/runs/01X", "/dashboard/events/01X"]  # fmt: skip


async def test_without_a_login_every_page_stream_and_action_is_refused(secured: Dash) -> None:
    run_id = await secured.run_of(await secured.send("dash/nap"))
    for path in PAGES:
        resp = await secured.http.get(path)
        assert resp.status_code == 303 and resp.headers["location"].startswith("/dashboard/login?next="), path
        assert (await secured.http.get(path, headers={"X-Stepline-Fragment": "live"})).status_code == 401
    assert (await secured.http.get("/dashboard/stream")).status_code == 401
    for path in (f"/dashboard/runs/{run_id}/cancel", "/dashboard/runs/bulk-cancel", "/dashboard/events/send"):
        resp = await secured.http.post(path, data={"confirmed": "1", "csrf": "x"})
        assert resp.status_code == 401 and "Log in first" in resp.text
    assert (await secured.client.get_run(run_id)).status == "running"  # type: ignore[union-attr]
    # A forged cookie is no session.
    secured.http.cookies.set(COOKIE, "eyJzaWQiOiJ4In0.forged.sig")
    assert (await secured.http.get("/dashboard/runs")).status_code == 303
    # The REST API keeps its own auth (the signing key), unaffected by the dashboard's.
    assert (await secured.http.get("/v1/runs")).status_code == 401


async def test_login_session_csrf_and_logout(secured: Dash) -> None:
    run_id = await secured.run_of(await secured.send("dash/nap"))
    page = await secured.page("/dashboard/login?next=/dashboard/functions")
    assert 'type="password"' in page
    bad = await login(secured, "wrong", status=401)
    assert "Wrong admin token" in bad.text and COOKIE not in bad.headers.get("set-cookie", "")
    resp = await login(secured)
    assert resp.headers["location"] == "/dashboard/functions"
    cookie = resp.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Max-Age=43200" in cookie
    for path in PAGES[:5]:
        await secured.page(path)
    assert 'id="logout"' in await secured.page("/dashboard/runs")

    # Actions still need the page's CSRF token, tied to this session.
    assert (await secured.act(f"/dashboard/runs/{run_id}/cancel", 403, csrf="0" * 64)).status_code == 403
    await secured.act(f"/dashboard/runs/{run_id}/cancel")
    assert (await secured.client.get_run(run_id)).status == "cancelled"  # type: ignore[union-attr]
    audit = await secured.client.store.list_events("stepline/dashboard.action", 5)
    assert audit[0].data["by"] == "admin"

    csrf = await secured.csrf()
    old_cookie = secured.http.cookies.get(COOKIE)
    resp = await secured.http.post("/dashboard/logout", data={"csrf": csrf})
    assert resp.status_code == 303 and resp.headers["location"] == "/dashboard/login"
    assert (await secured.http.get("/dashboard/runs")).status_code == 303
    # The logged-out session cookie no longer works, even if replayed.
    assert old_cookie
    secured.http.cookies.set(COOKIE, old_cookie)
    assert (await secured.http.get("/dashboard/runs")).status_code == 303


async def test_login_refuses_foreign_forms_open_redirects_and_guessing(secured: Dash) -> None:
    resp = await secured.http.post("/dashboard/login", data={"token": ADMIN_TOKEN, "csrf": "nope"})
    assert resp.status_code == 403
    page = await secured.page("/dashboard/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    for target in ("https://evil.example/", "//evil.example/x", "/v1/runs"):
        resp = await secured.http.post("/dashboard/login", data={"token": ADMIN_TOKEN, "csrf": csrf, "next": target})
        assert resp.headers["location"] == "/dashboard/runs", target
    secured.http.cookies.clear()
    for _ in range(10):
        await secured.http.post("/dashboard/login", data={"token": "guess", "csrf": csrf})
    resp = await secured.http.post("/dashboard/login", data={"token": ADMIN_TOKEN, "csrf": csrf})
    assert resp.status_code == 429


async def test_dev_mode_is_open_and_an_admin_token_closes_it(make_dash: MakeDash) -> None:
    dev = await make_dash()
    assert (await dev.http.get("/dashboard/runs")).status_code == 200
    assert (await dev.http.get("/dashboard/login")).status_code == 303  # nothing to log in to
    assert 'id="logout"' not in await dev.page("/dashboard/runs")
    closed = await make_dash(admin_token="dev-token")
    assert (await closed.http.get("/dashboard/runs")).status_code == 303
    await login(closed, "dev-token")
    assert (await closed.http.get("/dashboard/runs")).status_code == 200


# --- hardening: sessions and the throttle are shared through the store ----------------------------------------------
SECURE = {"kind": "cloud", "signing_keys": ("signkey-test-" + "ab" * 32,), "admin_token": ADMIN_TOKEN}


async def test_logout_holds_on_every_node_and_after_a_restart(make_dash: MakeDash) -> None:
    """Two nodes on one store (two server apps, as two `stepline start` processes would be): a session made on
    one works on the other; logging out on either ends it for both, and for a node started afterwards."""
    a, b = await make_dash(**SECURE), await make_dash(**SECURE)
    await login(a)
    cookie = a.http.cookies.get(COOKIE)
    assert cookie
    b.http.cookies.set(COOKIE, cookie)
    assert (await b.http.get("/dashboard/runs")).status_code == 200
    resp = await b.http.post("/dashboard/logout", data={"csrf": await b.csrf()})
    assert resp.status_code == 303
    b.http.cookies.set(COOKIE, cookie)
    for node in (a, b, await make_dash(**SECURE)):  # the third: a restart, with nothing in memory
        node.http.cookies.set(COOKIE, cookie)
        assert (await node.http.get("/dashboard/runs")).status_code == 303


async def test_the_login_throttle_is_shared_and_keyed_on_the_peer_not_forwarded_headers(make_dash: MakeDash) -> None:
    a, b = await make_dash(**SECURE), await make_dash(**SECURE)
    page = await a.page("/dashboard/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    for i in range(10):  # spread over two nodes, each guess claiming another address
        node = a if i % 2 else b
        await node.http.post("/dashboard/login", data={"token": "guess", "csrf": csrf},
                             headers={"X-Forwarded-For": f"10.0.0.{i}"})  # fmt: skip
    for node in (a, b):
        resp = await node.http.post("/dashboard/login", data={"token": ADMIN_TOKEN, "csrf": csrf},
                                    headers={"X-Forwarded-For": "10.9.9.9"})  # fmt: skip
        assert resp.status_code == 429


async def test_the_login_form_reads_nothing_large(secured: Dash) -> None:
    resp = await secured.http.post("/dashboard/login", content=b"token=" + b"x" * 100_000,
                                   headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert resp.status_code == 413 and "larger than 4096 bytes" in resp.text

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(1000):  # 64 MiB in all, without a Content-Length
            yield b"y" * 65536

    resp = await secured.http.post("/dashboard/login", content=chunks(),
                                   headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert resp.status_code == 413
