"""Tier 2: the bundled fake CircleCI follows the documented API (the mount tests rely on it)."""

import httpx
import pytest

from conftest import TOKEN


@pytest.fixture
def project(fake):
    p = fake.add_project("github", "acme", "api")
    for n in range(1, 6):
        b = p.add_build(build_num=n, branch="feature/x" if n == 4 else "main",
                        status="failed" if n == 2 else "success",
                        lifecycle="running" if n == 5 else "finished")
        b.add_artifact("/tmp/out/a.txt", bytes(range(256)) * 4)
    return p


def get(url, **kw):
    kw.setdefault("headers", {"Accept": "application/json"})
    return httpx.get(url, timeout=5, **kw)


def nums(answer):
    return [b["build_num"] for b in answer.json()]


def test_recent_builds_paging_filters_and_cap(fake, project):
    base = fake.api_url + "/api/v1.1/project/github/acme/api"
    assert nums(get(base)) == [5, 4, 3, 2, 1]
    assert nums(get(base, params={"limit": 2, "offset": 1})) == [4, 3]
    assert nums(get(base, params={"filter": "completed", "limit": 1})) == [4]
    assert nums(get(base, params={"filter": "failed"})) == [2]
    assert nums(get(base + "/tree/feature%2Fx")) == [4]
    assert get(base, params={"limit": 101}).status_code == 400
    assert get(base + "/3").json()["stop_time"].endswith("Z")
    assert get(base + "/99").status_code == 404
    edn = httpx.get(base, timeout=5)
    assert edn.headers["content-type"] == "application/edn"


def test_artifacts_redirect_to_presigned_storage_with_ranges(fake, project):
    base = fake.api_url + "/api/v1.1/project/github/acme/api"
    (art,) = get(base + "/3/artifacts").json()
    assert art["path"] == art["pretty_path"] == "/tmp/out/a.txt" and art["node_index"] == 0
    assert "0//tmp/out/a.txt" in art["url"]
    assert get(base + "/latest/artifacts", params={"filter": "completed"}).json()[0]["path"] == "/tmp/out/a.txt"
    redirect = httpx.get(art["url"], timeout=5)
    assert redirect.status_code == 302
    location = redirect.headers["location"]
    assert location.startswith(fake.storage_url) and "signature=" in location
    data = bytes(range(256)) * 4
    r = httpx.get(location, headers={"Range": "bytes=10-19"}, timeout=5)
    assert r.status_code == 206 and r.content == data[10:20] and r.headers["content-range"] == "bytes 10-19/1024"
    assert httpx.get(location, headers={"Range": "bytes=-4"}, timeout=5).content == data[-4:]
    assert httpx.get(location, headers={"Range": "bytes=1000-"}, timeout=5).content == data[1000:]
    assert httpx.get(location, headers={"Range": "bytes=5000-6000"}, timeout=5).status_code == 416
    assert httpx.get(location, timeout=5).content == data
    assert httpx.head(location, timeout=5).status_code == 403
    assert httpx.get(location.replace("signature=", "signature=0"), timeout=5).status_code == 403
    fake.faults.ignore_range = True
    assert httpx.get(location, headers={"Range": "bytes=10-19"}, timeout=5).status_code == 200


def test_auth_forms_and_private_projects(fake):
    p = fake.add_project("github", "acme", "secret", private=True)
    p.add_build(build_num=1).add_artifact("s.txt", b"s")
    base = fake.api_url + "/api/v1.1/project/github/acme/secret"
    assert get(base).status_code == 404
    assert get(base, headers={"Accept": "application/json", "Circle-Token": "bad"}).status_code == 401
    assert get(base, headers={"Accept": "application/json", "Circle-Token": TOKEN}).status_code == 200
    assert get(base, auth=(TOKEN, "")).status_code == 200
    assert get(base, params={"circle-token": TOKEN}).status_code == 200
    url = get(base + "/1/artifacts", auth=(TOKEN, "")).json()[0]["url"]
    assert httpx.get(url, timeout=5).status_code == 404
    assert httpx.get(url, headers={"Circle-Token": TOKEN}, timeout=5).status_code == 302


def test_faults_and_request_log(fake, project):
    base = fake.api_url + "/api/v1.1/project/github/acme/api"
    fake.faults.api_statuses = [429, 503]
    first = get(base)
    assert first.status_code == 429 and first.headers["retry-after"] == "1"
    assert get(base).status_code == 503 and get(base).status_code == 200
    fake.faults.malformed_json.add("/api/v1.1/project/github/acme/api/1/artifacts")
    with pytest.raises(ValueError):
        get(base + "/1/artifacts").json()
    fake.faults.storage_hang = True
    location = httpx.get(get(base + "/3/artifacts").json()[0]["url"], timeout=5).headers["location"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(location, timeout=0.5)
    fake.faults.reset()
    assert fake.faults.storage_hang is False and fake.faults.malformed_json == set()
    log = fake.requests
    assert [r.status for r in log[:3]] == [429, 503, 200]
    assert log[0].headers["accept"] == "application/json"
    assert any(r.server == "storage" for r in log)
