"""The approvals API and page: real tokens and a real sign-in from the OIDC provider process
(tests/oidc_provider.py); the API in process over ASGI, the page in a real headless Chromium against
a real `bastion serve --http` process that shares its store file with the test.

Chromium: $BASTION_TEST_CHROMIUM, default /usr/bin/chromium (Debian's package: apt-get install -y chromium).
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest

from bastion.policy.approvals import ApprovalPolicy
from bastion.policy.errors import ApprovalError, ConfigError
from bastion.policy.identity import Identity
from bastion.server.app import create_server
from bastion.server.approvals_web import HTTP_STATUS
from bastion.server.build import build_gateway
from bastion.server.config import load
from bastion.server.http import http_app
from bastion.store import SqliteAuditStore
from bastion.store import events as ev
from bastion.store.approvals import ApprovalStore, Held, HoldStatus
from tests.conftest import requirement
from tests.oidc_server import OidcProvider
from tests.test_http import free_port, serving
from bastion.tools.gateway import Gateway

CHROMIUM = os.environ.get("BASTION_TEST_CHROMIUM", "/usr/bin/chromium")
IN_PROCESS = "http://127.0.0.1:8765"
TEXT = "DELETE FROM orders WHERE id = 7"
# Shown to approvers exactly as written, never as markup.
MARKUP_TEXT = "UPDATE notes SET body = '<script>alert(1)</script><b>bold</b>' WHERE id = 3"
WEB_SECRET_ENV, SESSION_KEY_ENV = "BASTION_TEST_WEB_SECRET", "BASTION_TEST_SESSION_KEY"


def write_config(root: Path, demo_db: Path, issuer: str, base: str = IN_PROCESS, approvals: str = "",
                 auth: bool = True) -> Path:
    shutil.copy(demo_db, root / "demo.db")
    config = root / "bastion.toml"
    auth_section = f"""
[auth]
issuer = "{issuer}"
resource = "{base}/mcp"
groups_claim = "realm_access.roles"
jwks_refetch_interval = 0
""" if auth else ""
    config.write_text(f"""{auth_section}
[approvals]
{approvals}

[connections.demo]
kind = "sqlite"
target = "demo.db"

[[connections.demo.rules]]
id = "dev-write"
preset = "read-write"
groups = ["dev"]
approvers = ["dba"]
""")
    return config


@dataclass
class People:
    requester: str  # asks; a dba too, so only the self-approval rule stops them
    approver: str  # dba
    second: str  # dba
    outsider: str  # dev only


@pytest.fixture
def people(oidc_provider: OidcProvider) -> People:
    tag = uuid.uuid4().hex[:6]
    crew = People(f"rita-{tag}", f"bob-{tag}", f"carol-{tag}", f"mallory-{tag}")
    roles = {crew.requester: ["dev", "dba"], crew.approver: ["dba"], crew.second: ["dba"], crew.outsider: ["dev"]}
    for sub, groups in roles.items():
        oidc_provider.add_user(sub, name=sub.split("-")[0].title(), email=f"{sub}@example.com",
                               realm_access={"roles": groups})
    return crew


def hold(approvals: ApprovalStore, requester: str, text: str = TEXT, groups: tuple[str, ...] = ("dba",),
         min_approvals: int = 1) -> Held:
    """A held call, as the guard holds one (the test stands in for the guard)."""
    return approvals.hold(call_id=f"call-{uuid.uuid4().hex[:12]}",
                          requester=Identity(requester, frozenset({"dev", "dba"}), f"{requester}@example.com"),
                          connection="demo", tool="sql_query", text=text,
                          policy=ApprovalPolicy(frozenset(groups), min_approvals=min_approvals, ttl_s=600),
                          rule="demo:review-writes", facts={"kinds": ["delete"]}, reason="remove the duplicate order")


# -- the JSON API, in process ---------------------------------------------------------------------

@pytest.fixture
def config(tmp_path: Path, demo_db: Path, oidc_provider: OidcProvider) -> Path:
    return write_config(tmp_path, demo_db, oidc_provider.issuer)


@asynccontextmanager
async def bastion(config_path: Path) -> AsyncIterator[tuple[httpx2.AsyncClient, Gateway]]:
    """Bastion's HTTP app in process, with its gateway (lifespan run by hand)."""
    config = load(config_path)
    gateway = build_gateway(config)
    asgi = http_app(create_server(config, gateway=gateway), config, gateway)
    async with asgi.app.router.lifespan_context(asgi.app):  # type: ignore[attr-defined]
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=asgi), base_url=IN_PROCESS,
                                      timeout=30) as http:
            yield http, gateway


class Api:
    def __init__(self, http: httpx2.AsyncClient, provider: OidcProvider) -> None:
        self.http, self.provider = http, provider

    async def __call__(self, who: str, method: str, path: str, body: Any = None) -> httpx2.Response:
        token = self.provider.token(who, f"{IN_PROCESS}/mcp")
        return await self.http.request(method, f"/approvals/api{path}", json=body,
                                       headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
async def api(config: Path, oidc_provider: OidcProvider) -> AsyncIterator[tuple[Api, Gateway]]:
    async with bastion(config) as (http, gateway):
        yield Api(http, oidc_provider), gateway


def error_of(response: httpx2.Response) -> str:
    return str(response.json()["error"]["code"])


@pytest.mark.anyio
async def test_an_approver_lists_the_holds_they_may_decide_and_reads_one_in_full(api: tuple[Api, Gateway],
                                                                                 people: People) -> None:
    call, gateway = api
    mine = hold(gateway.approvals, people.requester)
    gateway.approvals.set_preview(mine.hold_id, {"explain": "Delete on orders\n  ->  Index Scan", "rows": 1})
    others = hold(gateway.approvals, people.requester, text="DELETE FROM invoices WHERE id = 1", groups=("sre",))

    listed = await call(people.approver, "GET", "/holds")
    assert listed.status_code == 200
    assert [h["hold_id"] for h in listed.json()["holds"]] == [mine.hold_id]  # not the one for sre

    one = (await call(people.approver, "GET", f"/holds/{mine.hold_id}")).json()
    assert one["text"] == TEXT and one["reason"] == "remove the duplicate order" and one["rule"] == "demo:review-writes"
    assert one["requester"]["subject"] == people.requester and one["approver_groups"] == ["dba"]
    assert one["status"] == "pending" and one["votes"] == [] and one["expires_at"] == mine.expires_at
    assert one["preview"] == {"explain": "Delete on orders\n  ->  Index Scan", "rows": 1}
    assert one["can_decide"] is True and one["url"] == f"{IN_PROCESS}/approvals/{mine.hold_id}"

    # The requester sees their own held calls, and that they may not decide them.
    own = (await call(people.requester, "GET", "/holds")).json()["holds"]
    assert {h["hold_id"] for h in own} == {mine.hold_id, others.hold_id}
    assert all(h["can_decide"] is False and "themself" in h["cannot_decide"] for h in own)
    # Someone in none of the approver groups sees none of them, and cannot read one.
    assert (await call(people.outsider, "GET", "/holds")).json() == {"holds": []}
    hidden = await call(people.outsider, "GET", f"/holds/{mine.hold_id}")
    assert hidden.status_code == 403 and error_of(hidden) == "not_an_approver" and TEXT not in hidden.text


@pytest.mark.anyio
async def test_approve_and_deny_through_the_api_vote_in_the_store(api: tuple[Api, Gateway], people: People) -> None:
    call, gateway = api
    yes, no = hold(gateway.approvals, people.requester), hold(gateway.approvals, people.requester, text="DELETE FROM t")

    approved = await call(people.approver, "POST", f"/holds/{yes.hold_id}/approve", {"reason": "checked the ticket"})
    assert approved.status_code == 200 and approved.json()["status"] == "approved"
    assert [(v["approver"], v["approve"], v["reason"]) for v in approved.json()["votes"]] == \
        [(people.approver, True, "checked the ticket")]
    denied = await call(people.second, "POST", f"/holds/{no.hold_id}/deny", {"reason": "name the rows"})
    assert denied.status_code == 200 and denied.json()["status"] == "denied"

    assert gateway.approvals.get(yes.hold_id).status is HoldStatus.APPROVED  # type: ignore[union-attr]
    denial = gateway.approvals.get(no.hold_id).denial  # type: ignore[union-attr]
    assert denial is not None and (denial.approver, denial.reason) == (people.second, "name the rows")
    # What is no longer pending leaves the default listing; status=all shows it.
    assert (await call(people.approver, "GET", "/holds")).json()["holds"] == []
    everything = (await call(people.approver, "GET", "/holds?status=approved,denied")).json()["holds"]
    assert {h["hold_id"]: h["status"] for h in everything} == {yes.hold_id: "approved", no.hold_id: "denied"}


@pytest.mark.anyio
async def test_the_api_refuses_what_the_store_would_refuse_and_records_nothing(api: tuple[Api, Gateway],
                                                                               people: People) -> None:
    call, gateway = api
    held = hold(gateway.approvals, people.requester)
    two = hold(gateway.approvals, people.requester, text="DELETE FROM t2", min_approvals=2)

    cases = [
        ("self-approval", people.requester, f"/holds/{held.hold_id}/approve", {}, 403, "self_approval"),
        ("self-denial", people.requester, f"/holds/{held.hold_id}/deny", {"reason": "no"}, 403, "self_approval"),
        ("not an approver", people.outsider, f"/holds/{held.hold_id}/approve", None, 403, "not_an_approver"),
        ("deny without a reason", people.approver, f"/holds/{held.hold_id}/deny", {}, 400, "reason_required"),
        ("deny with a blank reason", people.approver, f"/holds/{held.hold_id}/deny", {"reason": "  "}, 400,
         "reason_required"),
        ("reason not a string", people.approver, f"/holds/{held.hold_id}/approve", {"reason": 5}, 400, "invalid_input"),
        ("unknown field", people.approver, f"/holds/{held.hold_id}/approve", {"reasons": "x"}, 400, "invalid_input"),
        ("body not an object", people.approver, f"/holds/{held.hold_id}/approve", ["x"], 400, "invalid_input"),
        ("unknown hold", people.approver, "/holds/hold-0000000000000000/approve", {}, 404, "hold_not_found"),
        ("unknown hold, read", people.approver, "/holds/hold-0000000000000000", None, 404, "hold_not_found"),
    ]
    for name, who, path, body, status, code in cases:
        method = "GET" if not path.endswith(("/approve", "/deny")) else "POST"
        response = await call(who, method, path, body)
        assert (response.status_code, error_of(response)) == (status, code), name
        assert set(response.json()["error"]) == {"code", "message", "hint"}, name
    assert gateway.approvals.get(held.hold_id).votes == ()  # type: ignore[union-attr]

    bad = await call(people.approver, "GET", "/holds?status=waiting")
    assert bad.status_code == 400 and "pending" in bad.json()["error"]["hint"]

    # A second vote: by the same approver while the hold waits for another (409), and on a decided hold (409).
    first = await call(people.approver, "POST", f"/holds/{two.hold_id}/approve")
    assert first.status_code == 200 and first.json()["status"] == "pending" and first.json()["approvals"] == 1
    again = await call(people.approver, "POST", f"/holds/{two.hold_id}/approve")
    assert (again.status_code, error_of(again)) == (409, "already_voted")
    assert (await call(people.approver, "POST", f"/holds/{held.hold_id}/approve")).status_code == 200
    late = await call(people.second, "POST", f"/holds/{held.hold_id}/deny", {"reason": "too late"})
    assert (late.status_code, error_of(late)) == (409, "hold_closed")
    assert [v.approver for v in gateway.approvals.get(two.hold_id).votes] == [people.approver]  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_the_api_needs_a_valid_bearer_token_and_records_a_refused_one(config: Path, oidc_provider: OidcProvider,
                                                                            people: People) -> None:
    async with bastion(config) as (http, gateway):
        missing = await http.get("/approvals/api/holds")
        wrong_audience = oidc_provider.token(people.approver, "http://127.0.0.1:9999/other")
        refused = await http.get("/approvals/api/holds", headers={"Authorization": f"Bearer {wrong_audience}"})
        unknown_route = await http.get("/approvals/api/nothing-here")
    assert missing.status_code == 401 and error_of(missing) == "unauthenticated"
    assert missing.headers["www-authenticate"].startswith("Bearer ")
    assert "resource_metadata=" in missing.headers["www-authenticate"]
    assert refused.status_code == 401 and 'error="invalid_token"' in refused.headers["www-authenticate"]
    assert unknown_route.status_code == 404 and error_of(unknown_route) == "not_found"
    events = [e for e in SqliteAuditStore(config.parent / "bastion-audit.db").iter_all() if e["type"] == "auth.refused"]
    assert [e["error"]["message"] for e in events] == ["wrong audience"]
    assert wrong_audience not in str(events)


@pytest.mark.anyio
async def test_without_auth_the_api_and_page_answer_404_and_say_why(tmp_path: Path, demo_db: Path) -> None:
    config = write_config(tmp_path, demo_db, "unused", auth=False)
    async with bastion(config) as (http, _):
        api_answer = await http.get("/approvals/api/holds")
        page = await http.get("/approvals/")
        post = await http.post("/approvals/hold-1/approve")
    assert api_answer.status_code == 404 and error_of(api_answer) == "approvals_disabled"
    assert "bastion approvals" in api_answer.json()["error"]["hint"]
    assert page.status_code == 404 and "[auth]" in page.text and "bastion approvals" in page.text
    assert post.status_code == 404
    assert "default-src 'self'" in page.headers["content-security-policy"]


@pytest.mark.anyio
async def test_the_page_without_a_login_client_explains_itself(api: tuple[Api, Gateway]) -> None:
    call, _ = api
    page = await call.http.get("/approvals/")
    assert page.status_code == 404 and "web_client_id" in page.text and "/approvals/api/holds" in page.text


def test_every_approval_error_has_its_own_http_status() -> None:
    def subclasses(cls: type) -> list[type]:
        return [cls] + [s for sub in cls.__subclasses__() for s in subclasses(sub)]

    unmapped = [cls.__name__ for cls in subclasses(ApprovalError)[1:] if cls not in HTTP_STATUS]
    assert not unmapped, f"add these to server/approvals_web.py's HTTP_STATUS: {unmapped}"


def test_secrets_are_read_by_reference_and_a_missing_one_stops_the_start(
        tmp_path: Path, demo_db: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from bastion.server.approvals_page import client_secret, session_key

    config = load(write_config(tmp_path, demo_db, "http://127.0.0.1:1", approvals=f"""
web_client_id = "bastion-web"
web_client_secret_env = "{WEB_SECRET_ENV}"
session_secret_env = "{SESSION_KEY_ENV}"
"""))
    monkeypatch.delenv(WEB_SECRET_ENV, raising=False)
    monkeypatch.delenv(SESSION_KEY_ENV, raising=False)
    with pytest.raises(ConfigError, match=WEB_SECRET_ENV):
        client_secret(config)
    with pytest.raises(ConfigError, match=SESSION_KEY_ENV):
        session_key(config)
    monkeypatch.setenv(SESSION_KEY_ENV, "too-short")
    with pytest.raises(ConfigError, match="shorter than 32"):
        session_key(config)
    monkeypatch.setenv(WEB_SECRET_ENV, "s3cret")
    monkeypatch.setenv(SESSION_KEY_ENV, "k" * 40)
    assert (client_secret(config), session_key(config)) == ("s3cret", "k" * 40)

    unset = config.model_copy(update={"approvals": config.approvals.model_copy(update={"session_secret_env": None})})
    with caplog.at_level(logging.WARNING, logger="bastion.server.approvals_page"):
        assert session_key(unset) != session_key(unset)  # random, per call (one per process in the app)
    assert "session_secret_env is not set" in caplog.text


# -- the page, in a real browser ------------------------------------------------------------------

@dataclass
class Site:
    base: str
    approvals: ApprovalStore
    audit: SqliteAuditStore


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, demo_db: Path, oidc_provider: OidcProvider) -> Iterator[Site]:
    """`bastion serve --http` with the page's sign-in configured, registered as a client of the provider."""
    root = tmp_path_factory.mktemp("approvals-page")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    client_id = f"bastion-web-{uuid.uuid4().hex[:6]}"
    oidc_provider.register_client(client_id, "web-secret", [f"{base}/approvals/callback"])
    config = write_config(root, demo_db, oidc_provider.issuer, base, approvals=f"""
base_url = "{base}"
wait = "30s"
web_client_id = "{client_id}"
web_client_secret_env = "{WEB_SECRET_ENV}"
session_secret_env = "{SESSION_KEY_ENV}"
""")
    with pytest.MonkeyPatch.context() as env:
        env.setenv(WEB_SECRET_ENV, "web-secret")
        env.setenv(SESSION_KEY_ENV, uuid.uuid4().hex * 2)
        with serving(config, port):
            audit = SqliteAuditStore(root / "bastion-audit.db")
            approvals = ApprovalStore(audit)
            try:
                yield Site(base, approvals, audit)
            finally:
                approvals.close()
                audit.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"the approvals page tests need headless Chromium at {CHROMIUM}: install it with "
                    "`apt-get install -y chromium`, or set BASTION_TEST_CHROMIUM to its path")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the approvals page tests need playwright: pip install -e '.[dev]'")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context()
    ctx.set_default_timeout(15_000)
    try:
        yield ctx
    finally:
        ctx.close()


def sign_in(page: Any, site: Site, sub: str, start: str = "/approvals/") -> None:
    """Open ``start`` signed out: the provider's form comes up; choose ``sub``; back at ``start``."""
    page.goto(site.base + start)
    page.wait_for_selector("#sub")  # the provider's sign-in form
    page.select_option("#sub", sub)
    page.click("#sign-in")
    page.wait_for_url(site.base + start)


def session_cookie(context: Any) -> dict[str, Any]:
    (cookie,) = [c for c in context.cookies() if c["name"] == "bastion_approvals"]
    return dict(cookie)


def test_an_approver_signs_in_approves_one_held_call_and_denies_another(site: Site, context: Any,
                                                                       people: People) -> None:
    yes = hold(site.approvals, people.requester, text=MARKUP_TEXT)
    no = hold(site.approvals, people.requester, text="DELETE FROM orders WHERE id = 8")
    site.approvals.set_preview(yes.hold_id, {"rows_touched": 1, "explain": "Update on notes\n  -> Index Scan"})
    page = context.new_page()

    sign_in(page, site, people.approver)
    assert people.approver in page.inner_text("#who")
    card = page.locator(f'article[data-hold="{yes.hold_id}"]')
    assert card.locator("pre.text").inner_text() == MARKUP_TEXT  # as text, not markup
    assert page.locator("script").count() == 0 and page.locator("main b").count() == 0
    assert card.locator(".requester").inner_text().endswith(f"({people.requester})")
    assert card.locator(".reason").inner_text() == "remove the duplicate order"
    assert card.locator(".rule").inner_text() == "demo:review-writes"
    assert card.locator(".connection").inner_text() == "demo"
    assert "Index Scan" in card.locator(".preview").inner_text()
    assert card.locator(".expires time").get_attribute("datetime") == yes.expires_at

    card.locator("form.approve button").click()
    page.wait_for_url(f"{site.base}/approvals/{yes.hold_id}")
    assert page.locator(f'article[data-hold="{yes.hold_id}"]').get_attribute("data-status") == "approved"
    assert "You approved" in page.inner_text("#flash")
    approved = site.approvals.get(yes.hold_id)
    assert approved is not None and approved.status is HoldStatus.APPROVED
    assert [(v.approver, v.approve) for v in approved.votes] == [(people.approver, True)]

    page.goto(f"{site.base}/approvals/")
    assert page.locator(f'article[data-hold="{yes.hold_id}"]').count() == 0  # no longer waiting
    deny = page.locator(f'form.deny[data-hold="{no.hold_id}"]')
    deny.locator('input[name="reason"]').fill("name the rows by id, from the ticket")
    deny.locator("button").click()
    page.wait_for_url(f"{site.base}/approvals/{no.hold_id}")
    assert "name the rows by id" in page.inner_text(".votes")
    denied = site.approvals.get(no.hold_id)
    assert denied is not None and denied.status is HoldStatus.DENIED
    assert denied.denial is not None and denied.denial.reason == "name the rows by id, from the ticket"

    cookie = session_cookie(context)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and not cookie["secure"] and cookie["path"] == "/approvals"
    headers = page.goto(f"{site.base}/approvals/").all_headers()  # type: ignore[union-attr]
    assert headers["content-security-policy"].startswith("default-src 'self'")
    assert "frame-ancestors 'none'" in headers["content-security-policy"]


def test_a_post_without_the_csrf_token_is_refused_and_decides_nothing(site: Site, context: Any,
                                                                     people: People) -> None:
    held = hold(site.approvals, people.requester)
    page = context.new_page()
    sign_in(page, site, people.approver)
    token = page.locator(f'form.approve[data-hold="{held.hold_id}"] input[name="csrf"]').get_attribute("value")
    assert token
    url = f"{site.base}/approvals/{held.hold_id}/approve"

    # The browser's own request context sends the session cookie, but no token.
    from_browser = page.request.post(url, form={"reason": "x"}, headers={"Origin": site.base}, max_redirects=0)
    assert from_browser.status == 403
    cookie = session_cookie(context)
    with httpx.Client(cookies={cookie["name"]: cookie["value"]}, timeout=10) as http:
        refused = {
            "no token": http.post(url, data={"reason": "x"}, headers={"Origin": site.base}),
            "wrong token": http.post(url, data={"csrf": "A" * len(token)}, headers={"Origin": site.base}),
            "another origin": http.post(url, data={"csrf": token}, headers={"Origin": "http://evil.example"}),
            "no origin at all": http.post(url, data={"csrf": token}),
            "a referer from elsewhere": http.post(url, data={"csrf": token},
                                                  headers={"Referer": "http://evil.example/approvals/"}),
        }
        for name, response in refused.items():
            assert response.status_code == 403, name
            assert 'data-code="csrf"' in response.text, name
        still = site.approvals.get(held.hold_id)
        assert still is not None and still.status is HoldStatus.PENDING and still.votes == ()

        # The same request with the page's token and origin passes: the refusals above were theirs.
        passed = http.post(url, data={"csrf": token}, headers={"Origin": site.base})
    assert passed.status_code == 303
    assert site.approvals.get(held.hold_id).status is HoldStatus.APPROVED  # type: ignore[union-attr]


def test_the_requester_sees_their_held_call_but_cannot_decide_it_and_others_cannot_see_it(
        site: Site, browser: Any, people: People) -> None:
    held = hold(site.approvals, people.requester)
    detail = f"/approvals/{held.hold_id}"

    requester = browser.new_context()
    try:
        page = requester.new_page()
        sign_in(page, site, people.requester, start=detail)  # the link in a notice leads back to the hold
        card = page.locator(f'article[data-hold="{held.hold_id}"]')
        assert card.locator("pre.text").inner_text() == TEXT
        assert card.locator("form").count() == 0 and "themself" in card.locator(".cannot-decide").inner_text()
        # A forged form with the requester's own valid token is refused by the decision rule.
        page.goto(f"{site.base}/approvals/")
        token = page.locator('#logout input[name="csrf"]').get_attribute("value")
        cookie = session_cookie(requester)
        forged = httpx.post(f"{site.base}{detail}/approve", data={"csrf": token}, headers={"Origin": site.base},
                            cookies={cookie["name"]: cookie["value"]}, timeout=10)
        assert forged.status_code == 403 and 'data-code="self_approval"' in forged.text
    finally:
        requester.close()

    outsider = browser.new_context()
    try:
        page = outsider.new_page()
        sign_in(page, site, people.outsider, start=detail)
        assert page.locator("#error").get_attribute("data-code") == "not_an_approver"
        assert TEXT not in page.content()
        page.goto(f"{site.base}/approvals/")
        assert page.locator(f'article[data-hold="{held.hold_id}"]').count() == 0
        assert page.locator("#nothing-waiting").is_visible()
    finally:
        outsider.close()
    assert site.approvals.get(held.hold_id).votes == ()  # type: ignore[union-attr]


def test_signing_out_ends_the_session(site: Site, context: Any, people: People) -> None:
    page = context.new_page()
    sign_in(page, site, people.approver)
    page.click("#sign-out")
    page.wait_for_selector("#signed-out")
    assert not [c for c in context.cookies() if c["name"] == "bastion_approvals" and c["value"] != "null"]
    page.goto(f"{site.base}/approvals/")
    page.wait_for_selector("#sub")  # back at the provider's sign-in form


# -- end to end: an agent's held call, approved in the browser ------------------------------------

WRITE = "UPDATE products SET price = price * 2"  # no WHERE: the read-write preset holds it for review


def prices(site: Site) -> list[float]:
    db = sqlite3.connect(site.audit.path.parent / "demo.db")
    try:
        return [row[0] for row in db.execute("SELECT price FROM products ORDER BY id")]
    finally:
        db.close()


def agent_calls(site: Site, token: str, sql: str) -> Any:
    """The agent's tool call over MCP streamable HTTP, in its own thread and event loop (it waits while held)."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async def call() -> Any:
        async with httpx2.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {token}"}) as http, \
                Client(streamable_http_client(f"{site.base}/mcp", http_client=http)) as client:
            return await client.call_tool("sql_query", {"connection": "demo", "sql": sql, "reason": "double the prices"})

    return anyio.run(call)


@requirement("approval:runs-once")
def test_a_held_call_approved_in_the_browser_runs_exactly_once(site: Site, context: Any, oidc_provider: OidcProvider,
                                                              people: People) -> None:
    before = prices(site)
    token = oidc_provider.token(people.requester, f"{site.base}/mcp")
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(agent_calls, site, token, WRITE)
        deadline = time.monotonic() + 20
        while not (held := [h for h in site.approvals.list("pending") if h.requester_subject == people.requester]):
            assert not waiting.done(), f"the call was not held: {waiting.result()}"
            assert time.monotonic() < deadline, "no hold appeared within 20 s"
            time.sleep(0.1)
        (hold_of_call,) = held
        assert prices(site) == before  # held: nothing ran yet

        page = context.new_page()
        sign_in(page, site, people.approver, start=f"/approvals/{hold_of_call.hold_id}")
        assert page.locator("pre.text").inner_text() == WRITE
        page.locator(f'form.approve[data-hold="{hold_of_call.hold_id}"] button').click()
        page.wait_for_selector("#flash")
        result = waiting.result(timeout=30)

    assert not result.is_error, result.content
    assert result.structured_content["row_count"] == len(before)
    assert prices(site) == [p * 2 for p in before]  # once, not twice
    used = site.approvals.get(hold_of_call.hold_id)
    assert used is not None and used.status is HoldStatus.CONSUMED
    assert used.consumed_by_call == result.structured_content["call_id"]
    assert [e["type"] for e in site.audit.call(used.consumed_by_call)] == [ev.REQUESTED, ev.HELD, ev.FINISHED]
    # The page shows it used; the approval cannot be given again.
    page.reload()
    assert page.locator(f'article[data-hold="{hold_of_call.hold_id}"]').get_attribute("data-status") == "consumed"
    assert page.locator("form.approve").count() == 0
