"""METRICS_TOKEN: when set, /metrics, /metrics/cache and /dashboard/status.json need it as a Bearer token;
unset, they are open (a Prometheus scraper on a private network). routes/http.py."""

from __future__ import annotations

import pytest

from app import create_app
from cache import service as cache_service

TOKEN = "metrics-token-0123456789"
GUARDED = ("/metrics", "/metrics/cache", "/dashboard/status.json")


@pytest.fixture
def make_client(tmp_path):
    apps = []

    def make(**env: str):
        apps.append(create_app({"REDIS_URL": "", "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", **env}))
        return apps[-1].test_client()

    yield make
    for app in apps:
        app.extensions["item_store"].close()
    cache_service.reset()


@pytest.mark.parametrize("path", GUARDED)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token-0123456789", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer", "API_TOKEN-shaped"],
)
def test_with_the_token_set_a_request_without_it_is_refused_with_json(make_client, path, authorization):
    client = make_client(METRICS_TOKEN=TOKEN, API_TOKEN="api-token-not-the-metrics-one")
    headers = {"Authorization": authorization} if authorization else {}
    response = client.get(path, headers=headers)
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.get_json() == {"error": "unauthorized", "message": "send 'Authorization: Bearer <METRICS_TOKEN>'"}


@pytest.mark.parametrize("path", GUARDED)
def test_with_the_token_set_a_request_with_it_is_answered(make_client, path):
    client = make_client(METRICS_TOKEN=TOKEN)
    assert client.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get(path, headers={"Authorization": f"bearer  {TOKEN} "}).status_code == 200


def test_the_api_token_does_not_open_metrics(make_client):
    client = make_client(METRICS_TOKEN=TOKEN, API_TOKEN="api-token-0123456789")
    assert client.get("/metrics", headers={"Authorization": "Bearer api-token-0123456789"}).status_code == 401


@pytest.mark.parametrize("path", GUARDED)
def test_unset_they_are_open_as_before(make_client, path):
    assert make_client().get(path).status_code == 200


def test_the_dashboard_page_and_its_assets_hold_no_figures_and_stay_open(make_client):
    """The page's script sends the token it is given in the URL fragment (/dashboard#token=...)."""
    client = make_client(METRICS_TOKEN=TOKEN)
    for path in ("/dashboard", "/dashboard/app.js", "/dashboard/app.css", "/dashboard/icon.svg"):
        assert client.get(path).status_code == 200, path


def test_the_setting_is_unset_by_default_and_kept_as_given():
    from config import load_config

    assert load_config({}).metrics_token is None and load_config({"METRICS_TOKEN": ""}).metrics_token is None
    assert load_config({"METRICS_TOKEN": TOKEN}).metrics_token == TOKEN
