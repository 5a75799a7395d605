"""The bundled fake CircleCI follows the documented v1.1 API (the client and mount tests rely
on it): real HTTP against a FakeCI started in this process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest

from ciartfs.fakeserver import FakeArtifact, FakeBuild, FakeCI, FakeProject, Faults, Recorded, demo_dataset
from conftest import TOKEN  # the conftest `fake` fixture accepts it

JSON = {"Accept": "application/json"}
DATA = bytes(range(256)) * 4  # 1024 bytes
ODD = "reports/a b#c?d%e&f=g/ünï+cödé.txt"  # characters a URL must encode
HTTP = httpx.Client(timeout=5)  # one client: building an SSL context per request costs ~20 ms
SUMMARY_KEYS = {"build_num", "branch", "vcs_revision", "status", "lifecycle", "outcome", "start_time", "stop_time",
                "queued_at", "subject", "build_url", "username", "reponame", "vcs_type"}


@pytest.fixture
def project(fake: FakeCI) -> FakeProject:
    """Builds 1..5: 2 failed, 4 on feature/x, 5 running; each with one artifact."""
    p = fake.add_project("github", "acme", "api", private=False)
    for n in range(1, 6):
        b = p.add_build(build_num=n, branch="feature/x" if n == 4 else "main",
                        status="failed" if n == 2 else "success",
                        lifecycle="running" if n == 5 else "finished",
                        stop_time=f"2026-11-0{n}T10:00:00Z")
        b.add_artifact("/tmp/out/a.txt", DATA)
    return p


def base(fake: FakeCI, slug: str = "github/acme/api") -> str:
    return f"{fake.api_url}/api/v1.1/project/{slug}"


def get(url: str, headers: dict[str, str] | None = None, **kw) -> httpx.Response:
    kw.setdefault("timeout", 5)
    return HTTP.get(url, headers=JSON if headers is None else headers, **kw)


def nums(answer: httpx.Response) -> list[int]:
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    return [b["build_num"] for b in answer.json()]


def location_of(fake: FakeCI, project: FakeProject, build: int = 3, node: int = 0) -> str:
    (art,) = [a for a in get(f"{base(fake)}/{build}/artifacts").json() if a["node_index"] == node]
    redirect = HTTP.get(art["url"])
    assert redirect.status_code == 302, redirect.text
    return redirect.headers["location"]


# -- recent builds, branches, single builds --------------------------------------------------------


def test_recent_builds_newest_first_with_paging_filters_and_cap(fake, project):
    url = base(fake)
    assert nums(get(url)) == [5, 4, 3, 2, 1]
    assert nums(get(url, params={"limit": 2, "offset": 1, "shallow": "true"})) == [4, 3]
    assert nums(get(url, params={"offset": 5})) == []
    assert nums(get(url, params={"filter": "completed"})) == [4, 3, 2, 1]
    assert nums(get(url, params={"filter": "successful"})) == [4, 3, 1]
    assert nums(get(url, params={"filter": "failed"})) == [2]
    assert nums(get(url, params={"filter": "running"})) == [5]
    assert nums(get(url, params={"filter": "completed", "limit": 1, "offset": 1})) == [3]
    assert nums(get(url, params={"limit": 100})) == [5, 4, 3, 2, 1]
    over = get(url, params={"limit": 101})
    assert over.status_code == 400 and over.json() == {"message": "limit must be <= 100"}
    assert get(url, params={"limit": "ten"}).status_code == 400
    assert get(url, params={"offset": -1}).status_code == 400


def test_default_page_is_30(fake):
    p = fake.add_project("github", "acme", "many")
    for n in range(1, 36):
        p.add_build(build_num=n)
    assert nums(get(base(fake, "github/acme/many"))) == list(range(35, 5, -1))
    assert nums(get(base(fake, "github/acme/many"), params={"offset": 30})) == [5, 4, 3, 2, 1]


def test_tree_branch_with_an_encoded_slash(fake, project):
    url = base(fake) + "/tree/"
    assert nums(get(url + "feature%2Fx")) == [4]
    assert nums(get(url + "main", params={"limit": 2})) == [5, 3]
    assert nums(get(url + "main", params={"filter": "failed"})) == [2]
    assert nums(get(url + "no-such-branch")) == []


def test_single_build_summary(fake, project):
    finished = get(base(fake) + "/3").json()
    assert set(finished) >= SUMMARY_KEYS
    assert finished["build_num"] == 3 and finished["branch"] == "main" and finished["status"] == "success"
    assert finished["lifecycle"] == "finished" and finished["outcome"] == "success"
    assert finished["stop_time"] == "2026-11-03T10:00:00.000Z"
    assert finished["start_time"] < finished["stop_time"] and finished["queued_at"] <= finished["start_time"]
    assert (finished["username"], finished["reponame"], finished["vcs_type"]) == ("acme", "api", "github")
    assert finished["build_url"].endswith("/gh/acme/api/3") and len(finished["vcs_revision"]) == 40
    running = get(base(fake) + "/5").json()
    assert running["status"] == "running" and running["lifecycle"] == "running"
    assert running["stop_time"] is None and running["outcome"] is None
    # list items are the same summaries
    assert get(base(fake), params={"limit": 1, "offset": 2}).json() == [finished]


def test_unknown_things_are_404_json(fake, project):
    for url in (base(fake) + "/99", base(fake) + "/99/artifacts", base(fake, "github/acme/nope"),
                base(fake, "gitlab/acme/api"), base(fake, "github/nobody/api") + "/1",
                base(fake) + "/3/bogus", fake.api_url + "/api/v1.1/nothing-here"):
        answer = get(url)
        assert answer.status_code == 404, url
        assert answer.headers["content-type"] == "application/json" and "message" in answer.json()


def test_without_accept_json_the_api_answers_edn(fake, project):
    for accept in ({}, {"Accept": "*/*"}, {"Accept": "text/html"}):
        answer = get(base(fake), headers=accept)
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/edn"
        with pytest.raises(ValueError):
            json.loads(answer.content)
    assert nums(get(base(fake), headers={"Accept": "text/html, application/json;q=0.9"})) == [5, 4, 3, 2, 1]


# -- artifacts -------------------------------------------------------------------------------------


def test_artifact_listing_fields_order_and_urls(fake, project):
    b = project.builds[3]
    b.add_artifact("z-last/but-inserted.txt", b"z", node_index=0)
    b.add_artifact("test-results/junit.xml", b"<xml/>", node_index=1)
    b.add_artifact(ODD, b"odd", node_index=1)
    answer = get(base(fake) + "/3/artifacts")
    assert answer.headers["content-type"] == "application/json"
    listing = answer.json()
    assert [(a["path"], a["node_index"]) for a in listing] == [
        ("/tmp/out/a.txt", 0), ("z-last/but-inserted.txt", 0), ("test-results/junit.xml", 1), (ODD, 1)]
    for a in listing:
        assert set(a) == {"path", "pretty_path", "node_index", "url"} and a["pretty_path"] == a["path"]
        assert a["url"].startswith(f"{fake.api_url}/artifacts/github/acme/api/3/{a['node_index']}/")
    assert listing[0]["url"].endswith("/3/0//tmp/out/a.txt")  # like the docs' 0//tmp/... example
    odd_url = listing[3]["url"]
    assert " " not in odd_url and "#" not in odd_url and "?" not in odd_url
    tail = odd_url.split("/3/1/", 1)[1]
    assert [urllib.parse.unquote(s) for s in tail.split("/")] == ODD.split("/")
    # each URL leads to its own bytes
    for a, data in zip(listing, (DATA, b"z", b"<xml/>", b"odd"), strict=True):
        assert HTTP.get(a["url"], follow_redirects=True).content == data


def test_raw_artifacts_and_url_override_and_expired(fake, project):
    project.builds[1].raw_artifacts = [{"path": 7}, {"node_index": "x", "url": None}, "junk"]
    assert get(base(fake) + "/1/artifacts").json() == [{"path": 7}, {"node_index": "x", "url": None}, "junk"]
    b = project.builds[2]
    b.add_artifact("evil.txt", b"e", url="http://169.254.169.254/latest/meta-data")
    gone = b.add_artifact("old.log", b"old", expired=True)
    assert isinstance(gone, FakeArtifact) and gone.expired
    listing = get(base(fake) + "/2/artifacts").json()
    assert listing[1]["url"] == "http://169.254.169.254/latest/meta-data"
    assert listing[2]["path"] == "old.log"  # still listed ...
    assert HTTP.get(listing[2]["url"]).status_code == 404  # ... but gone
    assert HTTP.get(listing[0]["url"]).status_code == 302
    unknown = listing[0]["url"].replace("a.txt", "b.txt")
    assert HTTP.get(unknown).status_code == 404


def test_latest_artifacts_by_branch_and_filter(fake, project):
    for n, b in project.builds.items():
        b.add_artifact(f"build-{n}.txt", str(n).encode())

    def latest(**params: str) -> int:
        paths = [a["path"] for a in get(base(fake) + "/latest/artifacts", params=params).json()]
        return int(paths[-1].removeprefix("build-").removesuffix(".txt"))

    assert latest() == 5
    assert latest(filter="completed") == 4
    assert latest(branch="main") == 5
    assert latest(branch="main", filter="completed") == 3
    assert latest(branch="main", filter="failed") == 2
    assert latest(branch="feature/x") == 4
    assert latest(filter="successful", branch="") == 4
    assert get(base(fake) + "/latest/artifacts", params={"branch": "nope"}).status_code == 404


def test_artifact_url_redirects_to_presigned_storage_without_token(fake, project):
    url = get(base(fake) + "/3/artifacts").json()[0]["url"]
    before = time.time()
    redirect = HTTP.get(url)
    assert redirect.status_code == 302 and redirect.headers["content-length"] == "0"
    location = redirect.headers["location"]
    parsed = urllib.parse.urlsplit(location)
    assert location.startswith(fake.storage_url + "/blob/")
    query = dict(urllib.parse.parse_qsl(parsed.query))
    assert set(query) == {"expires", "signature"} and len(query["signature"]) >= 32
    assert before + 3600 - 2 <= int(query["expires"]) <= time.time() + 3600 + 1
    fake.clear_requests()
    blob = HTTP.get(location)
    assert blob.status_code == 200 and blob.content == DATA
    assert blob.headers["accept-ranges"] == "bytes" and blob.headers["content-length"] == "1024"
    (rec,) = fake.requests
    assert rec.server == "storage" and "circle-token" not in rec.headers and "authorization" not in rec.headers
    # the docs' way: the token as a query parameter on the artifact URL
    assert HTTP.get(url, params={"circle-token": TOKEN}).status_code == 302


# -- authentication --------------------------------------------------------------------------------


def test_each_token_form_and_private_projects(fake):
    p = fake.add_project("github", "acme", "secret", private=True)
    p.add_build(build_num=1).add_artifact("s.txt", b"classified")
    url = base(fake, "github/acme/secret")
    missing = get(url)
    assert missing.status_code == 404 and missing.json() == {"message": "Project not found"}
    assert get(url + "/1").status_code == 404 and get(url + "/1/artifacts").status_code == 404
    assert nums(get(url, headers={**JSON, "Circle-Token": TOKEN})) == [1]
    assert nums(get(url, auth=(TOKEN, ""))) == [1]
    assert nums(get(url, params={"circle-token": TOKEN})) == [1]
    art_url = get(url + "/1/artifacts", auth=(TOKEN, "")).json()[0]["url"]
    assert HTTP.get(art_url).status_code == 404
    for auth in ({"headers": {"Circle-Token": TOKEN}}, {"auth": (TOKEN, "")}, {"params": {"circle-token": TOKEN}}):
        redirect = HTTP.get(art_url, **auth)
        assert redirect.status_code == 302
        assert HTTP.get(redirect.headers["location"]).content == b"classified"


def test_a_bad_token_is_401_everywhere(fake, project):
    fake.add_project("github", "acme", "secret", private=True).add_build(build_num=1)
    art_url = get(base(fake) + "/3/artifacts").json()[0]["url"]
    urls = [base(fake), base(fake) + "/3", base(fake) + "/3/artifacts", base(fake) + "/latest/artifacts",
            base(fake) + "/tree/main", base(fake, "github/acme/secret"), base(fake, "github/acme/nope"), art_url]
    for url in urls:
        for auth in ({"headers": {**JSON, "Circle-Token": "wrong"}}, {"auth": ("wrong", "")},
                     {"params": {"circle-token": "wrong"}}):
            answer = HTTP.get(url, **{"headers": JSON, **auth})
            assert answer.status_code == 401, (url, auth)
            assert answer.json() == {"message": "Invalid token provided."}
    # a valid token on a public project is fine too
    assert nums(get(base(fake), headers={**JSON, "Circle-Token": TOKEN})) == [5, 4, 3, 2, 1]


# -- storage host ----------------------------------------------------------------------------------


def test_storage_ranges_like_s3(fake, project):
    location = location_of(fake, project)

    def ranged(spec: str) -> httpx.Response:
        return HTTP.get(location, headers={"Range": spec})

    for spec, start, end in (("bytes=10-19", 10, 19), ("bytes=0-0", 0, 0), ("bytes=1000-", 1000, 1023),
                             ("bytes=-4", 1020, 1023), ("bytes=1020-5000", 1020, 1023), ("bytes=-5000", 0, 1023)):
        r = ranged(spec)
        assert r.status_code == 206, spec
        assert r.content == DATA[start:end + 1], spec
        assert r.headers["content-range"] == f"bytes {start}-{end}/1024", spec
        assert r.headers["content-length"] == str(end - start + 1)
    for spec in ("bytes=1024-", "bytes=5000-6000", "bytes=-0"):
        r = ranged(spec)
        assert r.status_code == 416 and r.headers["content-range"] == "bytes */1024", spec
        assert b"InvalidRange" in r.content
    for spec in ("bytes=0-1,5-6", "bytes=9-3", "lines=1-2"):  # ignored: the whole body
        r = ranged(spec)
        assert r.status_code == 200 and r.content == DATA, spec
    whole = HTTP.get(location)
    assert whole.status_code == 200 and whole.content == DATA and "content-range" not in whole.headers


def test_large_blob_streams_exactly(fake, project):
    big = os.urandom(3 * 1024 * 1024 + 17)
    project.builds[3].add_artifact("dist/big.bin", big)
    url = get(base(fake) + "/3/artifacts").json()[1]["url"]
    location = HTTP.get(url).headers["location"]
    assert HTTP.get(location).content == big
    r = HTTP.get(location, headers={"Range": "bytes=1048570-2097160"})
    assert r.status_code == 206 and r.content == big[1048570:2097161]


def test_head_is_refused(fake, project):
    location = location_of(fake, project)
    head = HTTP.head(location)
    assert head.status_code == 403 and head.content == b""
    assert HTTP.get(location).status_code == 200


def test_tampered_or_expired_signatures_are_403(fake, project):
    location = location_of(fake, project)
    parsed = urllib.parse.urlsplit(location)
    query = dict(urllib.parse.parse_qsl(parsed.query))

    def with_(path: str = parsed.path, **changes: str) -> httpx.Response:
        q = urllib.parse.urlencode({**query, **changes})
        return HTTP.get(f"{fake.storage_url}{path}?{q}")

    assert with_().status_code == 200
    flipped = ("0" if query["signature"][0] != "0" else "1") + query["signature"][1:]
    for answer in (with_(signature=flipped), with_(expires=str(int(query["expires"]) + 1000)),
                   with_(signature=""), with_(expires="soon"), HTTP.get(fake.storage_url + parsed.path)):
        assert answer.status_code == 403
        assert answer.headers["content-type"] == "application/xml" and b"<Code>AccessDenied</Code>" in answer.content
    other_blob = parsed.path.rsplit("/", 1)[0] + "/" + str(int(parsed.path.rsplit("/", 1)[1]) + 1)
    assert with_(path=other_blob).status_code == 403  # the signature covers the blob
    fake.faults.presign_ttl = -5  # already expired when issued
    expired = HTTP.get(location_of(fake, project))
    assert expired.status_code == 403 and b"expired" in expired.content
    fake.faults.presign_ttl = 1.0
    short = location_of(fake, project)
    assert HTTP.get(short).status_code == 200
    expires = int(dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(short).query))["expires"])
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    assert HTTP.get(short).status_code == 403


# -- faults ----------------------------------------------------------------------------------------


def test_api_hang_times_out_then_recovers(fake, project):
    fake.faults.api_hang = True
    with pytest.raises(httpx.ReadTimeout):
        get(base(fake), timeout=0.3)
    hung = fake.requests[-1]
    assert hung.server == "api" and hung.status == 0  # recorded on arrival, not answered
    fake.faults.api_hang = False
    assert nums(get(base(fake))) == [5, 4, 3, 2, 1]
    deadline = time.time() + 2
    while hung.status == 0 and time.time() < deadline:
        time.sleep(0.01)
    assert hung.status in (200, -1)  # released: answered (to a client that has gone)


def test_storage_hang_and_stop_returns_promptly(fake, project):
    location = location_of(fake, project)
    fake.clear_requests()
    fake.faults.storage_hang = True
    with pytest.raises(httpx.ReadTimeout):
        HTTP.get(location, timeout=0.3)
    outcome: list[object] = []
    waiter = threading.Thread(target=lambda: outcome.append(_try_get(location, 10)))
    waiter.start()
    deadline = time.time() + 2
    while len(fake.requests) < 2 and time.time() < deadline:
        time.sleep(0.01)
    assert [(r.server, r.status) for r in fake.requests] == [("storage", 0), ("storage", 0)]
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 1.0
    waiter.join(timeout=3)
    assert not waiter.is_alive() and outcome and outcome[0] != 200


def _try_get(url: str, timeout: float) -> object:
    try:
        return HTTP.get(url, timeout=timeout).status_code
    except httpx.HTTPError as e:
        return e


def test_stop_cuts_keep_alive_connections(fake, project):
    with httpx.Client(headers=JSON, timeout=2) as client:
        assert client.get(base(fake)).status_code == 200
        fake.stop()
        with pytest.raises(httpx.TransportError):
            client.get(base(fake))


def test_keep_alive_http11_with_content_length(fake, project):
    host, port = urllib.parse.urlsplit(fake.api_url).netloc.split(":")
    with socket.create_connection((host, int(port))) as sock:
        stream = sock.makefile("rb")
        for path in ("/api/v1.1/project/github/acme/api/3", "/api/v1.1/project/github/acme/api/4"):
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n".encode())
            status = stream.readline()
            assert status.startswith(b"HTTP/1.1 200")
            headers = {}
            while (line := stream.readline()) != b"\r\n":
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = stream.read(int(headers["content-length"]))
            assert json.loads(body)["build_num"] == int(path[-1])


def test_ignore_range(fake, project):
    location = location_of(fake, project)
    fake.faults.ignore_range = True
    r = HTTP.get(location, headers={"Range": "bytes=10-19"})
    assert r.status_code == 200 and r.content == DATA and "content-range" not in r.headers
    fake.faults.ignore_range = False
    assert HTTP.get(location, headers={"Range": "bytes=10-19"}).status_code == 206


def test_status_queues(fake, project):
    location = location_of(fake, project)
    fake.faults.storage_statuses = [503, 500]
    assert HTTP.head(location).status_code == 403  # HEAD takes nothing from the queue
    assert [HTTP.get(location).status_code for _ in range(3)] == [503, 500, 200]
    assert fake.faults.storage_statuses == []
    fake.faults.api_statuses = [429, 502]
    first = get(base(fake))
    assert first.status_code == 429 and first.headers["retry-after"] == "1"
    assert first.headers["content-type"] == "application/json"
    assert get(base(fake)).status_code == 502
    assert nums(get(base(fake))) == [5, 4, 3, 2, 1]
    fake.faults.storage_statuses.append(429)
    throttled = HTTP.get(location)
    assert throttled.status_code == 429 and throttled.headers["retry-after"] == "1"
    assert HTTP.get(location).content == DATA


def test_malformed_json_on_exact_paths(fake, project):
    bad = "/api/v1.1/project/github/acme/api/3/artifacts"
    fake.faults.malformed_json.add(bad)
    broken = get(fake.api_url + bad)
    assert broken.status_code == 200 and broken.headers["content-type"] == "application/json"
    with pytest.raises(ValueError):
        broken.json()
    assert get(base(fake) + "/2/artifacts").json()[0]["path"] == "/tmp/out/a.txt"
    assert nums(get(base(fake))) == [5, 4, 3, 2, 1]


def test_faults_reset():
    faults = Faults()
    faults.storage_hang = faults.api_hang = faults.ignore_range = True
    faults.storage_statuses.append(503)
    faults.api_statuses.append(429)
    faults.malformed_json.add("/x")
    faults.presign_ttl = 1
    faults.reset()
    assert faults == Faults()
    faults.storage_statuses.append(1)
    assert Faults().storage_statuses == []  # defaults are not shared


def test_request_log(fake, project):
    fake.clear_requests()
    assert fake.requests == []
    get(base(fake), headers={**JSON, "Circle-Token": TOKEN, "X-Trace": "t1"}, params={"limit": 2})
    HTTP.post(base(fake), headers=JSON, content=b"{}")
    location = location_of(fake, project)
    HTTP.get(location, headers={"Range": "bytes=0-9"})
    log = fake.requests
    assert all(isinstance(r, Recorded) for r in log)
    first = log[0]
    assert (first.server, first.method, first.path, first.query, first.status) == (
        "api", "GET", "/api/v1.1/project/github/acme/api", {"limit": "2"}, 200)
    assert first.headers["circle-token"] == TOKEN and first.headers["x-trace"] == "t1"
    assert first.headers["accept"] == "application/json"
    assert all(name == name.lower() for r in log for name in r.headers)
    assert (log[1].method, log[1].status) == ("POST", 405)
    assert [(r.server, r.status) for r in log[2:]] == [("api", 200), ("api", 302), ("storage", 206)]
    assert log[-1].headers["range"] == "bytes=0-9" and log[-1].path.startswith("/blob/")
    assert set(log[-1].query) == {"expires", "signature"}
    assert [r.time for r in log] == sorted(r.time for r in log)
    log.clear()  # a copy
    assert len(fake.requests) == 5


# -- the model, the demo data, python -m -----------------------------------------------------------


def test_model_defaults():
    p = FakeProject("github", "acme", "api")
    b = p.add_build(build_num=7)
    assert isinstance(b, FakeBuild) and p.builds == {7: b}
    assert (b.branch, b.status, b.lifecycle, b.stop_time) == ("main", "success", "finished", "2026-11-01T10:00:00Z")
    assert b.queued_at <= b.start_time < b.stop_time and b.artifacts == [] and b.raw_artifacts is None
    running = p.add_build(build_num=8, lifecycle="running", stop_time="2026-11-01T10:00:00Z")
    assert running.status == "running" and running.stop_time is None and running.outcome is None
    fixed = p.add_build(build_num=9, status="fixed", start_time="2026-11-01T09:00:00Z", vcs_revision="abc")
    assert fixed.outcome == "success" and fixed.start_time == "2026-11-01T09:00:00Z" and fixed.vcs_revision == "abc"


def test_demo_dataset(fake):
    demo_dataset(fake)
    assert {"github/acme/api", "github/acme/secret", "bitbucket/acme/web"} <= {"/".join(k) for k in fake.projects}
    assert fake.projects["github", "acme", "secret"].private
    builds = get(base(fake), params={"limit": 100}).json()
    assert len(builds) >= 10 and {b["branch"] for b in builds} == {"main", "feature/login"}
    assert builds[0]["lifecycle"] == "running" and builds[0]["stop_time"] is None
    assert [b["status"] for b in builds].count("failed") == 1
    assert all(b["stop_time"] for b in builds[1:])
    failed = next(b["build_num"] for b in builds if b["status"] == "failed")
    listing = get(f"{base(fake)}/{failed}/artifacts").json()
    paths = {(a["path"], a["node_index"]) for a in listing}
    assert {("test-results/junit.xml", 0), ("test-results/junit.xml", 1), ("coverage/index.html", 0),
            ("coverage/style.css", 0), ("coverage/src/app.py.html", 0), ("logs/build.log", 0),
            ("dist/app.tar.gz", 0), ("core_dumps/core.1234.dump", 0)} <= paths

    def fetch(path: str, node: int = 0) -> bytes:
        (url,) = [a["url"] for a in listing if a["path"] == path and a["node_index"] == node]
        return HTTP.get(url, follow_redirects=True).content

    assert b"FAILED" in fetch("test-results/junit.xml") and b"<testsuite" in fetch("test-results/junit.xml", 1)
    index = fetch("coverage/index.html")
    assert b'href="style.css"' in index and b'href="src/app.py.html"' in index
    assert 100 * 1024 < len(fetch("logs/build.log")) < 2 * 1024 * 1024
    assert fetch("core_dumps/core.1234.dump")[:4] == b"\x7fELF"
    tarball = fetch("dist/app.tar.gz")
    assert 2.5 * 2**20 < len(tarball) < 4 * 2**20 and tarball.count(0) < len(tarball) // 100
    for project in fake.projects.values():
        for build in project.builds.values():
            assert sum(len(a.data) for a in build.artifacts) < 8 * 2**20
    assert get(base(fake, "github/acme/secret")).status_code == 404
    assert nums(get(base(fake, "github/acme/secret"), auth=(TOKEN, ""))) != []
    assert len(nums(get(base(fake, "bitbucket/acme/web")))) >= 2
    # deterministic
    again = FakeCI()
    demo_dataset(again)
    for key, project in fake.projects.items():
        twin = again.projects[key]
        for num, build in project.builds.items():
            assert [(a.path, a.node_index, a.data) for a in build.artifacts] == \
                   [(a.path, a.node_index, a.data) for a in twin.builds[num].artifacts]
            assert (build.status, build.stop_time) == (twin.builds[num].status, twin.builds[num].stop_time)


def test_python_m_fakeserver_serves_the_demo_until_interrupted():
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "ciartfs.fakeserver"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=root, text=True)
    try:
        api_line = proc.stdout.readline()
        storage_line = proc.stdout.readline()
        api_url = api_line.split()[3]
        assert api_url.startswith("http://127.0.0.1:") and "http://127.0.0.1:" in storage_line
        answer = HTTP.get(api_url + "/api/v1.1/project/github/acme/api", headers=JSON)
        assert answer.status_code == 200 and answer.json()[0]["lifecycle"] == "running"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 0
        assert proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
