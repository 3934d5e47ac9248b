"""/dashboard: its page, script and stylesheet with a policy that allows nothing else, and status.json."""

from __future__ import annotations

import re

from app import create_app
from cache import service as cache_service
from routes.dashboard import POLICY, RecentRedisInfo
from tests.support import FakeClock, free_port

ASSETS = {
    "/dashboard": "text/html",
    "/dashboard/app.js": "text/javascript",
    "/dashboard/app.css": "text/css",
    "/dashboard/icon.svg": "image/svg+xml",
}
DEFAULT_POLICY = "default-src 'none'; frame-ancestors 'none'"


def test_the_page_and_its_assets_carry_a_policy_that_allows_only_their_own_script_and_style(client):
    for path, content_type in ASSETS.items():
        response = client.get(path)
        assert response.status_code == 200 and response.mimetype == content_type, path
        assert response.headers["Content-Security-Policy"] == POLICY
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["Cache-Control"] == "no-store"
    directives = dict(d.strip().split(" ", 1) for d in POLICY.split(";"))
    assert directives["default-src"] == "'none'" and directives["frame-ancestors"] == "'none'"
    for directive in ("script-src", "style-src", "connect-src", "img-src"):
        assert directives[directive] == "'self'"  # no 'unsafe-inline', no other origin


def test_the_page_has_no_inline_script_style_or_handler_and_loads_nothing_from_elsewhere(client):
    html = client.get("/dashboard").get_data(as_text=True)
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    assert scripts == [(' src="/dashboard/app.js" defer', "")]
    assert "<style" not in html and not re.search(r"\sstyle=", html) and not re.search(r"\son\w+=", html)
    references = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert references and all(ref.startswith("/") and not ref.startswith("//") for ref in references)
    for ref in references:
        assert client.get(ref).status_code == 200, ref


def test_every_other_response_keeps_the_strict_policy(client):
    for response in (client.get("/health/live"), client.get("/items/nothing"), client.get("/dashboard/nope")):
        assert response.headers["Content-Security-Policy"] == DEFAULT_POLICY


def test_status_names_redis_memory_l1_capacity_and_workers(make_app, stack):
    client = make_app(CACHE_L1_MAX_ITEMS="123").test_client()
    status = client.get("/dashboard/status.json").get_json()
    assert status["l1"]["capacity_per_worker"] == 123 and status["workers"] == 1  # one process, not gunicorn
    if stack["REDIS_URL"]:
        assert isinstance(status["redis"]["used_memory"], int) and status["redis"]["used_memory"] > 0
    else:
        assert status["redis"]["embedded"] is True and "used_memory" not in status["redis"]


def test_status_says_redis_is_unavailable_and_still_answers(tmp_path):
    env = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    app = create_app(env)
    try:
        response = app.test_client().get("/dashboard/status.json")
        assert response.status_code == 200
        assert response.get_json()["redis"] == {"embedded": False, "error": "redis unavailable"}
    finally:
        app.extensions["item_store"].close()
        cache_service.reset()


def test_redis_info_is_read_at_most_once_a_second():
    clock, reads = FakeClock(), []
    recent = RecentRedisInfo(max_age=1.0, clock=clock)

    def read() -> dict:
        reads.append(clock())
        return {"used_memory": len(reads)}

    assert [recent.get(read) for _ in range(3)] == [{"used_memory": 1}] * 3
    clock.tick(0.999)
    assert recent.get(read) == {"used_memory": 1}
    clock.tick(0.001)
    assert recent.get(read) == {"used_memory": 2} and len(reads) == 2
