"""The fake GitHub Actions API and its Azure Blob stand-in behave as the real services do (the
GitHub provider and its tests rely on it): real HTTP against a FakeCI started in this process.
What "as the real services" means is written down in fakeserver/github.py and azureblob.py."""

from __future__ import annotations

import datetime
import hashlib
import io
import re
import time
import urllib.parse
import zipfile
import zlib
from typing import Any

import httpx
import pytest

from ciartfs.fakeserver import FakeCI
from ciartfs.fakeserver.generated_zip import GeneratedZip
from ciartfs.fakeserver.github import FakeRepo, FakeWorkflowRun, zip_bytes
from conftest import TOKEN  # the conftest `fake` fixture accepts it

HTTP = httpx.Client(timeout=5)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MEMBERS = {"index.html": b"<html>coverage</html>\n", "css/": b"", "css/style.css": b"body{}\n" * 50,
           "r\u00e9sum\u00e9/\u65e5\u672c.txt": b"unicode name\n"}
LINK_RE = re.compile(r'<([^>]+)>; rel="(\w+)"')


def links(response: httpx.Response) -> dict[str, str]:
    return {rel: url for url, rel in LINK_RE.findall(response.headers.get("link", ""))}


@pytest.fixture
def repo(fake: FakeCI) -> FakeRepo:
    """acme/api: 5 runs of ci.yml (run 2 failed, run 4 on feature/a/b, run 5 in progress) and one
    of nightly.yml; the newest completed ci run has two artifacts."""
    r = fake.github.add_repo("acme", "api")
    for n in range(1, 6):
        r.add_run("ci.yml", branch="feature/a/b" if n == 4 else "main",
                  conclusion=None if n == 5 else ("failure" if n == 2 else "success"))
    r.add_run("nightly.yml", conclusion="success")
    return r


def run_of(repo: FakeRepo, number: int, file: str = "ci.yml") -> FakeWorkflowRun:
    return next(r for r in repo.runs.values() if r.run_number == number and r.workflow.file == file)


def api(fake: FakeCI, path: str, **kw: Any) -> httpx.Response:
    return HTTP.get(fake.api_url + path, **kw)


# -- listings ----------------------------------------------------------------------------------------

def test_runs_are_listed_newest_first_with_the_schema_fields(fake: FakeCI, repo: FakeRepo):
    r = api(fake, "/repos/acme/api/actions/runs")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json; charset=utf-8"
    body = r.json()
    assert body["total_count"] == 6 and len(body["workflow_runs"]) == 6
    created = [run["created_at"] for run in body["workflow_runs"]]
    assert created == sorted(created, reverse=True)
    run = body["workflow_runs"][-1]  # the oldest: ci.yml #1
    required = {"id", "node_id", "head_branch", "run_number", "display_title", "event", "status", "conclusion",
                "head_sha", "path", "workflow_id", "url", "html_url", "created_at", "updated_at", "head_commit",
                "head_repository", "repository", "jobs_url", "logs_url", "check_suite_url", "cancel_url",
                "rerun_url", "artifacts_url", "workflow_url", "pull_requests", "run_started_at", "name"}
    assert required <= run.keys()
    assert (run["path"], run["run_number"], run["status"], run["conclusion"]) == (".github/workflows/ci.yml", 1,
                                                                                   "completed", "success")
    assert run["artifacts_url"] == f"{fake.api_url}/repos/acme/api/actions/runs/{run['id']}/artifacts"
    assert "link" not in r.headers  # one page holds all


def test_runs_filter_by_branch_with_a_slash_and_by_status_or_conclusion(fake: FakeCI, repo: FakeRepo):
    def ids(query: str) -> list[int]:
        return [run["id"] for run in api(fake, f"/repos/acme/api/actions/runs?{query}").json()["workflow_runs"]]

    assert ids("branch=" + urllib.parse.quote("feature/a/b", safe="")) == [run_of(repo, 4).id]
    assert ids("status=failure") == [run_of(repo, 2).id]
    assert ids("status=in_progress") == [run_of(repo, 5).id]
    assert len(ids("status=success")) == 4 and run_of(repo, 2).id not in ids("status=success")
    assert len(ids("status=completed")) == 5
    in_progress = api(fake, f"/repos/acme/api/actions/runs/{run_of(repo, 5).id}").json()
    assert (in_progress["status"], in_progress["conclusion"]) == ("in_progress", None)


def test_a_workflows_runs_by_file_name_or_id(fake: FakeCI, repo: FakeRepo):
    by_file = api(fake, "/repos/acme/api/actions/workflows/nightly.yml/runs").json()
    assert by_file["total_count"] == 1 and by_file["workflow_runs"][0]["path"] == ".github/workflows/nightly.yml"
    flow_id = repo.workflows["ci.yml"].id
    by_id = api(fake, f"/repos/acme/api/actions/workflows/{flow_id}/runs?status=success").json()
    assert by_id["total_count"] == 3 and {r["workflow_id"] for r in by_id["workflow_runs"]} == {flow_id}
    missing = api(fake, "/repos/acme/api/actions/workflows/nope.yml/runs")
    assert missing.status_code == 404 and missing.json()["message"] == "Not Found"


def test_workflows_and_a_repositorys_artifacts_are_listed(fake: FakeCI, repo: FakeRepo):
    flows = api(fake, "/repos/acme/api/actions/workflows").json()
    assert flows["total_count"] == 2 and {w["path"] for w in flows["workflows"]} == {".github/workflows/ci.yml",
                                                                                      ".github/workflows/nightly.yml"}
    older = run_of(repo, 1).add_artifact("logs", {"a": b"a"})
    newer = run_of(repo, 3).add_artifact("logs", {"b": b"b"})
    run_of(repo, 3).add_artifact("other", {"c": b"c"})
    listed = api(fake, "/repos/acme/api/actions/artifacts?name=logs").json()
    assert listed["total_count"] == 2 and [a["id"] for a in listed["artifacts"]] == [newer.id, older.id]


def test_paging_links_are_githubs_repositories_urls_in_githubs_order(fake: FakeCI, repo: FakeRepo):
    first = api(fake, "/repos/acme/api/actions/runs?per_page=2&branch=main")
    assert first.json()["total_count"] == 5 and len(first.json()["workflow_runs"]) == 2
    assert [rel for _, rel in LINK_RE.findall(first.headers["link"])] == ["next", "last"]
    base = f"{fake.api_url}/repositories/{repo.id}/actions/runs"
    assert links(first) == {"next": f"{base}?per_page=2&branch=main&page=2", "last": f"{base}?per_page=2&branch=main&page=3"}
    middle = HTTP.get(links(first)["next"])  # the /repositories/{id} form is served too
    assert [rel for _, rel in LINK_RE.findall(middle.headers["link"])] == ["prev", "next", "last", "first"]
    last = HTTP.get(links(middle)["last"])
    assert [rel for _, rel in LINK_RE.findall(last.headers["link"])] == ["prev", "first"]
    seen = [r["id"] for page in (first, middle, last) for r in page.json()["workflow_runs"]]
    assert len(seen) == len(set(seen)) == 5
    beyond = api(fake, "/repos/acme/api/actions/runs?per_page=2&page=9")
    assert beyond.json()["workflow_runs"] == [] and beyond.json()["total_count"] == 6


def test_per_page_defaults_to_30_and_is_capped_at_100(fake: FakeCI):
    many = fake.github.add_repo("acme", "many")
    for _ in range(120):
        many.add_run()
    assert len(api(fake, "/repos/acme/many/actions/runs").json()["workflow_runs"]) == 30
    capped = api(fake, "/repos/acme/many/actions/runs?per_page=500")
    assert len(capped.json()["workflow_runs"]) == 100 and links(capped)["last"].endswith("page=2")


def test_filtered_run_listings_reach_at_most_1000_results(fake: FakeCI):
    huge = fake.github.add_repo("acme", "huge")
    for _ in range(1050):
        huge.add_run()
    unfiltered = api(fake, "/repos/acme/huge/actions/runs?per_page=100")
    assert links(unfiltered)["last"].endswith("page=11")
    filtered = api(fake, "/repos/acme/huge/actions/runs?per_page=100&status=success")
    assert filtered.json()["total_count"] == 1050 and links(filtered)["last"].endswith("page=10")
    assert api(fake, "/repos/acme/huge/actions/runs?per_page=100&status=success&page=11").json()["workflow_runs"] == []


def test_run_artifacts_list_with_the_schema_fields_and_filter_by_name(fake: FakeCI, repo: FakeRepo):
    run = run_of(repo, 3)
    coverage = run.add_artifact("coverage-report", MEMBERS)
    run.add_artifact("test-logs", {"log.txt": b"ok\n"})
    listing = api(fake, f"/repos/acme/api/actions/runs/{run.id}/artifacts").json()
    assert listing["total_count"] == 2 and [a["name"] for a in listing["artifacts"]] == ["coverage-report", "test-logs"]
    record = listing["artifacts"][0]
    blob = coverage.data()
    assert record["size_in_bytes"] == len(blob) and record["digest"] == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert record["url"] == f"{fake.api_url}/repos/acme/api/actions/artifacts/{coverage.id}"
    assert record["archive_download_url"] == record["url"] + "/zip" and record["expired"] is False
    assert record["workflow_run"] == {"id": run.id, "repository_id": repo.id, "head_repository_id": repo.id,
                                      "head_branch": "main", "head_sha": run.head_sha}
    assert {"node_id", "created_at", "updated_at", "expires_at"} <= record.keys()
    assert api(fake, f"/repos/acme/api/actions/artifacts/{coverage.id}").json() == record
    named = api(fake, f"/repos/acme/api/actions/runs/{run.id}/artifacts?name=test-logs").json()
    assert named["total_count"] == 1 and named["artifacts"][0]["name"] == "test-logs"
    paged = api(fake, f"/repos/acme/api/actions/runs/{run.id}/artifacts?per_page=1")
    assert len(paged.json()["artifacts"]) == 1 and links(paged)["next"].endswith(
        f"/repositories/{repo.id}/actions/runs/{run.id}/artifacts?per_page=1&page=2")


def test_zips_are_real_zips_stored_or_deflated_with_directories_and_unicode_names(fake: FakeCI, repo: FakeRepo):
    run = run_of(repo, 1)
    for compression in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        artifact = run.add_artifact(f"a{compression}", MEMBERS, compression=compression)
        with zipfile.ZipFile(io.BytesIO(artifact.data())) as archive:
            assert {i.filename: archive.read(i) for i in archive.infolist()} == MEMBERS
            assert [i.compress_type for i in archive.infolist() if not i.is_dir()] == [compression] * 3
            assert all(i.flag_bits & 0x08 for i in archive.infolist())  # data descriptors, as a streaming zipper
    plain = zip_bytes({"a.txt": b"a"}, data_descriptors=False)
    assert not zipfile.ZipFile(io.BytesIO(plain)).infolist()[0].flag_bits & 0x08


def test_old_artifacts_have_no_digest_and_may_report_another_size(fake: FakeCI, repo: FakeRepo):
    artifact = run_of(repo, 1).add_artifact("old", {"a": b"a" * 1000}, digest_known=False, reported_size=1000)
    record = api(fake, f"/repos/acme/api/actions/artifacts/{artifact.id}").json()
    assert record["digest"] is None and record["size_in_bytes"] == 1000 != artifact.size
    assert len(HTTP.get(location(fake, artifact.id)).content) == artifact.size


# -- errors and auth ---------------------------------------------------------------------------------

def test_unknown_things_are_404_with_githubs_json_body(fake: FakeCI, repo: FakeRepo):
    for path in ("/repos/nobody/nothing/actions/runs", "/repos/acme/api/actions/runs/999999999",
                 "/repos/acme/api/actions/runs/999999999/artifacts", "/repos/acme/api/actions/artifacts/999999999",
                 "/repos/acme/api/actions/artifacts/999999999/zip", "/repos/acme/api/actions/nonsense"):
        r = api(fake, path, headers=AUTH)
        assert r.status_code == 404, path
        body = r.json()
        assert body["message"] == "Not Found" and body["documentation_url"].startswith("https://docs.github.com/")
        assert body["status"] == "404"


def test_an_artifact_of_another_repository_is_not_found_here(fake: FakeCI, repo: FakeRepo):
    other = fake.github.add_repo("acme", "other").add_run().add_artifact("x", {"a": b"a"})
    assert api(fake, f"/repos/acme/api/actions/artifacts/{other.id}").status_code == 404
    assert api(fake, f"/repos/acme/other/actions/artifacts/{other.id}").status_code == 200


def test_private_repositories_are_hidden_without_a_valid_token(fake: FakeCI):
    secret = fake.github.add_repo("acme", "secret", private=True)
    artifact = secret.add_run().add_artifact("x", {"a": b"a"})
    for path in ("/repos/acme/secret/actions/runs", f"/repos/acme/secret/actions/artifacts/{artifact.id}"):
        assert api(fake, path).status_code == 404
        assert api(fake, path, headers=AUTH).status_code == 200
        assert api(fake, path, headers={"Authorization": f"token {TOKEN}"}).status_code == 200
    bad = api(fake, "/repos/acme/secret/actions/runs", headers={"Authorization": "Bearer wrong"})
    assert bad.status_code == 401 and bad.json()["message"] == "Bad credentials"


def test_public_repositories_list_without_a_token_but_a_bad_one_is_401(fake: FakeCI, repo: FakeRepo):
    assert api(fake, "/repos/acme/api/actions/runs").status_code == 200
    assert api(fake, "/repos/acme/api/actions/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_downloading_needs_a_token_even_from_a_public_repository(fake: FakeCI, repo: FakeRepo):
    artifact = run_of(repo, 1).add_artifact("x", {"a": b"a"})
    r = api(fake, f"/repos/acme/api/actions/artifacts/{artifact.id}/zip")
    assert r.status_code == 403 and r.json()["message"] == "You must have the actions scope to download artifacts."
    assert api(fake, f"/repos/acme/api/actions/artifacts/{artifact.id}/zip", headers=AUTH).status_code == 302


def test_an_expired_artifact_is_listed_but_its_zip_is_410(fake: FakeCI, repo: FakeRepo):
    artifact = run_of(repo, 1).add_artifact("gone", {"a": b"a"}, expired=True)
    record = api(fake, f"/repos/acme/api/actions/artifacts/{artifact.id}").json()
    assert record["expired"] is True and record["expires_at"] < record["created_at"]
    r = api(fake, f"/repos/acme/api/actions/artifacts/{artifact.id}/zip", headers=AUTH)
    assert r.status_code == 410 and r.json()["message"] == "Artifact has expired"


# -- rate limits and conditional requests ----------------------------------------------------------

def test_every_answer_carries_the_rate_limit_headers(fake: FakeCI, repo: FakeRepo):
    for path, headers in (("/repos/acme/api/actions/runs", {}), ("/repos/acme/api/actions/runs", AUTH),
                          ("/repos/acme/api/actions/runs/1", AUTH)):
        r = api(fake, path, headers=headers)
        assert {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "x-ratelimit-used"} <= r.headers.keys()
        assert r.headers["x-ratelimit-resource"] == "core"
    anonymous = api(fake, "/repos/acme/api/actions/runs")
    assert (anonymous.headers["x-ratelimit-limit"], anonymous.headers["x-ratelimit-used"]) == ("60", "2")
    authorized = api(fake, "/repos/acme/api/actions/runs", headers=AUTH)
    assert authorized.headers["x-ratelimit-limit"] == "5000" and authorized.headers["x-ratelimit-remaining"] == "4997"
    assert int(authorized.headers["x-ratelimit-reset"]) > time.time()


def test_a_matching_if_none_match_is_304_without_a_body_and_free(fake: FakeCI, repo: FakeRepo):
    first = api(fake, "/repos/acme/api/actions/runs", headers=AUTH)
    etag = first.headers["etag"]
    assert etag.startswith('W/"')
    again = api(fake, "/repos/acme/api/actions/runs", headers={**AUTH, "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    assert again.headers["x-ratelimit-used"] == first.headers["x-ratelimit-used"]
    repo.add_run()  # the listing changes: its ETag too
    changed = api(fake, "/repos/acme/api/actions/runs", headers={**AUTH, "If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag


def test_an_exhausted_limit_is_403_with_remaining_0(fake: FakeCI, repo: FakeRepo):
    fake.github.anonymous_limit = 2
    fake.github.reset_rate_limits()
    assert [api(fake, "/repos/acme/api/actions/runs").status_code for _ in range(2)] == [200, 200]
    r = api(fake, "/repos/acme/api/actions/runs")
    assert r.status_code == 403 and r.headers["x-ratelimit-remaining"] == "0"
    assert r.json()["message"].startswith("API rate limit exceeded")
    assert api(fake, "/repos/acme/api/actions/runs", headers=AUTH).status_code == 200  # a token has its own budget


@pytest.mark.parametrize(("kind", "status"), [("primary", 403), ("primary-429", 429), ("secondary", 403),
                                              ("secondary-429", 429)])
def test_rate_limit_answers_on_demand(fake: FakeCI, repo: FakeRepo, kind: str, status: int):
    fake.github.retry_after = 1
    fake.faults.github_rate_limits.append(kind)
    r = api(fake, "/repos/acme/api/actions/runs", headers=AUTH)
    assert r.status_code == status
    if kind.startswith("primary"):
        assert r.headers["x-ratelimit-remaining"] == "0" and "retry-after" not in r.headers
        assert r.json()["message"].startswith("API rate limit exceeded")
        reset = int(r.headers["x-ratelimit-reset"])
        assert reset <= time.time() + 2
        assert api(fake, "/repos/acme/api/actions/runs", headers=AUTH).status_code in (403, 429)  # spent until the reset
        time.sleep(max(0.0, reset - time.time()) + 0.1)
    else:
        assert r.headers["retry-after"] == "1" and int(r.headers["x-ratelimit-remaining"]) > 0
        assert "secondary rate limit" in r.json()["message"]
    assert api(fake, "/repos/acme/api/actions/runs", headers=AUTH).status_code == 200


# -- the 302 and the blob host -----------------------------------------------------------------------

def location(fake: FakeCI, artifact_id: int) -> str:
    r = api(fake, f"/repos/acme/api/actions/artifacts/{artifact_id}/zip", headers=AUTH)
    assert r.status_code == 302 and r.content == b""
    return r.headers["location"]


def test_the_zip_redirects_to_a_sas_url_on_the_blob_host_serving_the_blob(fake: FakeCI, repo: FakeRepo):
    artifact = run_of(repo, 1).add_artifact("coverage-report", MEMBERS)
    url = location(fake, artifact.id)
    parsed = urllib.parse.urlsplit(url)
    assert url.startswith(fake.blob_url + "/") and parsed.path.endswith(".zip")
    query = dict(urllib.parse.parse_qsl(parsed.query))
    assert {"sv", "se", "sig", "sp", "sr"} <= query.keys() and list(query) == sorted(query)
    fake.clear_requests()
    r = HTTP.get(url)
    assert r.status_code == 200 and r.content == artifact.data()
    assert r.headers["content-type"] == "application/zip" and r.headers["accept-ranges"] == "bytes"
    assert r.headers["content-disposition"] == 'attachment; filename="coverage-report.zip"'
    assert r.headers["x-ms-blob-type"] == "BlockBlob" and "x-ms-request-id" in r.headers
    assert r.headers["server"].startswith("Windows-Azure-Blob/")
    [logged] = fake.requests
    assert (logged.server, logged.status, logged.bytes_sent) == ("blob", 200, len(artifact.data()))


def test_the_blob_host_refuses_any_authorization_header(fake: FakeCI, repo: FakeRepo):
    url = location(fake, run_of(repo, 1).add_artifact("x", MEMBERS).id)
    r = HTTP.get(url, headers=AUTH)
    assert r.status_code == 403 and r.headers["x-ms-error-code"] == "AuthenticationFailed"
    assert b"<Code>AuthenticationFailed</Code>" in r.content and r.headers["content-type"] == "application/xml"


def _expiry(url: str) -> float:
    se = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["se"]
    return datetime.datetime.strptime(se, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()


def test_sas_urls_expire_after_url_ttl_and_cannot_be_forged(fake: FakeCI, repo: FakeRepo):
    artifact = run_of(repo, 1).add_artifact("x", MEMBERS)
    assert 60 <= _expiry(location(fake, artifact.id)) - time.time() <= 62  # GitHub's minute, by default
    fake.github.url_ttl = 1
    url = location(fake, artifact.id)
    assert _expiry(url) - time.time() <= 2
    assert HTTP.get(url).status_code == 200
    forged = re.sub(r"se=[^&]+", "se=2099-01-01T00%3A00%3A00Z", url)
    assert HTTP.get(forged).status_code == 403
    assert HTTP.get(url.split("?")[0]).status_code == 403  # no SAS at all
    time.sleep(2.1)
    expired = HTTP.get(url)
    assert expired.status_code == 403 and b"Signed expiry time" in expired.content
    assert HTTP.get(location(fake, artifact.id)).status_code == 200  # a fresh one works


def test_ranges_as_azure_answers_them(fake: FakeCI, repo: FakeRepo):
    artifact = run_of(repo, 1).add_artifact("x", {"big.bin": bytes(range(256)) * 64}, compression=zipfile.ZIP_STORED)
    data, url = artifact.data(), location(fake, artifact.id)
    total = len(data)
    r = HTTP.get(url, headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == data[10:20] and r.headers["content-range"] == f"bytes 10-19/{total}"
    r = HTTP.get(url, headers={"Range": f"bytes={total - 22}-"})
    assert r.status_code == 206 and r.content == data[-22:]
    r = HTTP.get(url, headers={"Range": f"bytes={total - 5}-{total + 100}"})  # an end past the blob: clipped
    assert r.status_code == 206 and r.content == data[-5:]
    r = HTTP.get(url, headers={"x-ms-range": "bytes=0-3", "Range": "bytes=4-7"})  # x-ms-range wins
    assert r.content == data[:4]
    r = HTTP.get(url, headers={"Range": f"bytes={total}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{total}"
    assert b"<Code>InvalidRange</Code>" in r.content
    for ignored in ("bytes=-22", "bytes=0-1,5-6", "bytes=9-3", "items=0-1"):  # not Azure's two formats
        r = HTTP.get(url, headers={"Range": ignored})
        assert r.status_code == 200 and r.content == data, ignored


def test_head_answers_the_headers_of_a_whole_get(fake: FakeCI, repo: FakeRepo):
    artifact = run_of(repo, 1).add_artifact("x", MEMBERS)
    r = HTTP.head(location(fake, artifact.id))
    assert r.status_code == 200 and r.content == b"" and int(r.headers["content-length"]) == artifact.size


def test_an_unarchived_artifact_is_a_single_file_of_its_own_type(fake: FakeCI, repo: FakeRepo):
    artifact = run_of(repo, 1).add_artifact("report.html", data=b"<html>plain</html>", archive=False)
    record = api(fake, f"/repos/acme/api/actions/artifacts/{artifact.id}").json()
    assert record["size_in_bytes"] == len(b"<html>plain</html>")
    r = HTTP.get(location(fake, artifact.id))
    assert r.content == b"<html>plain</html>" and r.headers["content-type"] == "text/html"
    assert r.headers["content-disposition"] == 'attachment; filename="report.html"'


def test_blob_host_faults(fake: FakeCI, repo: FakeRepo):
    artifact = run_of(repo, 1).add_artifact("x", {"big.bin": bytes(200_000)}, compression=zipfile.ZIP_STORED)
    url = location(fake, artifact.id)
    fake.faults.blob_statuses.append(503)
    assert HTTP.get(url).status_code == 503
    assert HTTP.get(url).status_code == 200
    fake.faults.blob_body_faults.append("cut")
    with pytest.raises(httpx.HTTPError):
        HTTP.get(url)
    assert HTTP.get(url).content == artifact.data()


def test_replacing_a_repository_forgets_its_runs_artifacts_and_blobs(fake: FakeCI, repo: FakeRepo):
    artifact = run_of(repo, 1).add_artifact("x", MEMBERS)
    url = location(fake, artifact.id)
    fake.github.add_repo("acme", "api")
    assert api(fake, f"/repos/acme/api/actions/artifacts/{artifact.id}").status_code == 404
    assert HTTP.get(url).status_code == 404


# -- archives made on the fly ----------------------------------------------------------------------

class HttpRangeFile(io.RawIOBase):
    """A blob on the blob host read as a seekable file, one Range request per read."""

    def __init__(self, url: str, size: int) -> None:
        self.url, self.size, self.pos, self.requests = url, size, 0, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else self.size + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer: Any) -> int:
        if self.pos >= self.size:
            return 0
        r = HTTP.get(self.url, headers={"Range": f"bytes={self.pos}-{min(self.pos + len(buffer), self.size) - 1}"})
        assert r.status_code == 206
        self.requests += 1
        buffer[:len(r.content)] = r.content
        self.pos += len(r.content)
        return len(r.content)


def open_remote(fake: FakeCI, artifact_id: int) -> tuple[zipfile.ZipFile, HttpRangeFile]:
    size = api(fake, f"/repos/acme/api/actions/artifacts/{artifact_id}").json()["size_in_bytes"]
    remote = HttpRangeFile(location(fake, artifact_id), size)
    return zipfile.ZipFile(io.BufferedReader(remote, 1 << 16)), remote


def test_a_generated_deflated_artifact_reads_as_a_zip_and_its_digest_is_of_its_bytes(fake: FakeCI, repo: FakeRepo):
    generated = GeneratedZip.deflated(count=40, member_size=20_000)
    artifact = run_of(repo, 1).add_artifact("logs", content=generated)
    whole = HTTP.get(location(fake, artifact.id)).content
    record = api(fake, f"/repos/acme/api/actions/artifacts/{artifact.id}").json()
    assert record["size_in_bytes"] == len(whole) == generated.size
    assert record["digest"] == "sha256:" + hashlib.sha256(whole).hexdigest()
    with zipfile.ZipFile(io.BytesIO(whole)) as archive:
        assert archive.testzip() is None
        infos = archive.infolist()
        assert len(infos) == 40 and {i.compress_type for i in infos} == {zipfile.ZIP_DEFLATED}
        assert all(i.compress_size < i.file_size for i in infos)
        assert [hashlib.sha256(archive.read(i)).hexdigest() for i in infos[:3]] == [generated.member_sha256(n)
                                                                                    for n in range(3)]
        assert len({archive.read(i) for i in infos}) == 40  # labelled: no two members alike


def test_member_crcs_are_those_of_their_bytes(monkeypatch: pytest.MonkeyPatch):
    """The CRC-32s the generated zips state for large members are combined from their pieces'
    (never a pass over a 4 GiB member): the same as over the bytes."""
    from ciartfs.fakeserver import generated_zip
    from ciartfs.fakeserver.generated_zip import MemberSpec

    monkeypatch.setattr(generated_zip, "COMBINED_CRC_OVER", 0)

    bases = [b"1234567", b"xyz", b""]
    specs = [MemberSpec("a", 16 + 7 * 5 + 3, 0), MemberSpec("b", 1000, 1, labelled=False),
             MemberSpec("c", 0, 1, labelled=False), MemberSpec("d", 16, 0), MemberSpec("e", 7 * 4, 0, labelled=False)]
    generated = GeneratedZip(specs, bases)
    for i in range(len(specs)):
        assert generated.crc(i) == zlib.crc32(b"".join(generated.member_read(i))), specs[i]
    huge = GeneratedZip.huge_member()
    assert huge.crc(1) == 0xCA1328A8  # (zlib.crc32 over its 4 GiB + 1 MiB + 123 zeros, computed once)


def test_70000_members_make_a_zip64_archive_by_count(fake: FakeCI, repo: FakeRepo):
    generated = GeneratedZip.many_members(count=70_000)
    assert generated.zip64
    artifact = run_of(repo, 1).add_artifact("many", content=generated, digest_known=False)
    archive, remote = open_remote(fake, artifact.id)
    with archive:
        infos = archive.infolist()
        assert len(infos) == 70_000 and infos[-1].filename == "d069/f069999.bin"
        assert hashlib.sha256(archive.read(infos[-1])).hexdigest() == generated.member_sha256(69_999)
    assert remote.requests < 400  # ranges, not the whole blob


def test_a_member_over_4_gib_is_served_sparsely_in_a_zip64_archive(fake: FakeCI, repo: FakeRepo):
    generated = GeneratedZip.huge_member()
    artifact = run_of(repo, 1).add_artifact("huge", content=generated, digest_known=False)
    archive, _ = open_remote(fake, artifact.id)
    with archive:
        sizes = {i.filename: i.file_size for i in archive.infolist()}
        assert sizes["huge/zeros.bin"] == generated.members[1].size > 1 << 32
        assert archive.read("after.txt") == b"".join(generated.member_read(2))
        with archive.open("huge/zeros.bin") as member:
            assert member.read(1 << 16) == bytes(1 << 16)
    tail = HTTP.get(location(fake, artifact.id), headers={"Range": f"bytes={generated.size - 22}-"})
    assert tail.status_code == 206 and tail.content[:4] == b"PK\x05\x06"


def test_the_demo_has_actions_runs_with_a_coverage_report_and_a_private_repository(demo_fake: FakeCI):
    runs = api(demo_fake, "/repos/acme/api/actions/runs").json()["workflow_runs"]
    assert {r["conclusion"] for r in runs} == {"success", "failure", None}
    assert "feature/login" in {r["head_branch"] for r in runs}
    finished = next(r for r in runs if r["name"] == "CI" and r["conclusion"] == "success")
    artifacts = {a["name"]: a for a in HTTP.get(finished["artifacts_url"]).json()["artifacts"]}
    assert {"coverage-report", "test-logs", "summary.md"} <= artifacts.keys()
    zipped = HTTP.get(location(demo_fake, artifacts["coverage-report"]["id"])).content
    assert {"index.html", "style.css"} <= set(zipfile.ZipFile(io.BytesIO(zipped)).namelist())
    assert any(a["expired"] for r in runs for a in HTTP.get(r["artifacts_url"]).json()["artifacts"])
    assert api(demo_fake, "/repos/acme/secret/actions/runs").status_code == 404
    assert api(demo_fake, "/repos/acme/secret/actions/runs", headers=AUTH).json()["total_count"] == 1
