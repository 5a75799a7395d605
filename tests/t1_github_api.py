"""Tier 1: what GitHub's API needs of the HTTP and document layers, against a scripted
transport: Link paging, conditional requests (ETag / 304), rate-limit answers as waits, the
API's own headers on its origin only, and the blob host never seeing the token."""

import time

import httpx
import pytest
import trio

from ciartfs.errors import BadListing, Forbidden, UpstreamError
from ciartfs.net.client import HttpClient, link_next
from ciartfs.providers.apidocs import ApiDocs
from ciartfs.providers.github.api import ActionsApi, credential
from t1_http import Transport, ranged

API = "https://api.github.example"
BLOB = "https://blob.example"
TOKEN = "ghp_secret123"
DATA = bytes(range(256)) * 64


def client_for(handler, token=TOKEN, timeout=3.0):
    return HttpClient(timeout=timeout, credentials=(credential(API, token),), transport=Transport(handler))


@pytest.mark.parametrize(("header", "expected"), [
    ('<https://a/x?page=2>; rel="next", <https://a/x?page=9>; rel="last"', "https://a/x?page=2"),
    ('<https://a/x?page=1>; rel="prev", <https://a/x?page=3>; rel="next"', "https://a/x?page=3"),
    ('<https://a/x?page=9>; rel="last"', None),
    ("", None),
    ('<https://a/x?page=2>; rel=next', "https://a/x?page=2"),
])
def test_link_next(header, expected):
    assert link_next(header) == expected


async def test_the_api_headers_replace_defaults_and_never_reach_the_blob_host():
    seen = []

    async def handler(request):
        seen.append(request)
        if request.url.host == "api.github.example":
            return httpx.Response(302, headers={"Location": f"{BLOB}/b?sig=1"})
        if "authorization" in request.headers:
            return httpx.Response(403, text="<Error><Code>InvalidAuthenticationInfo</Code></Error>")
        return ranged(request, DATA)

    client = client_for(handler)
    reply = await client.get_range(API + "/repos/o/r/actions/artifacts/1/zip", 0, 100, credentials=True)
    assert reply.data == DATA[:100]
    api, blob = seen
    assert api.headers["authorization"] == f"Bearer {TOKEN}"
    assert api.headers["x-github-api-version"] == "2022-11-28"
    assert api.headers.get_list("accept") == ["application/vnd.github+json"]
    assert "authorization" not in blob.headers and "x-github-api-version" not in blob.headers
    assert TOKEN not in str(blob.url)
    await client.aclose()


async def test_without_a_token_the_api_headers_still_go():
    seen = []

    async def handler(request):
        seen.append(request)
        return httpx.Response(200, json={"total_count": 0, "workflow_runs": []})

    client = client_for(handler, token=None)
    await client.get_json(API + "/repos/o/r/actions/runs")
    assert "authorization" not in seen[0].headers
    assert seen[0].headers["accept"] == "application/vnd.github+json"
    await client.aclose()


def signing_api(api_calls, sig, api_delay=0.0, refusal=403):
    """The API answers 302 to a blob URL signed with sig[0]; the blob host refuses any other
    signature with `refusal`: 403 as Azure refuses an expired SAS, 400 for a malformed one."""

    async def handler(request):
        if request.url.host == "api.github.example":
            api_calls.append(1)
            await trio.sleep(api_delay)
            return httpx.Response(302, headers={"Location": f"{BLOB}/b?sig={sig[0]}"})
        if request.url.params.get("sig") != sig[0]:
            return httpx.Response(refusal, text="<Error><Code>AuthenticationFailed</Code></Error>")
        return ranged(request, DATA)

    return handler


@pytest.mark.parametrize("refusal", [403, 400])
async def test_a_blob_url_that_expired_is_resolved_again_once(refusal):
    api_calls, sig = [], ["s1"]
    client = client_for(signing_api(api_calls, sig, refusal=refusal))
    url = API + "/repos/o/r/actions/artifacts/1/zip"
    for start in range(0, 1000, 100):  # one resolution serves every block
        assert (await client.get_range(url, start, 100, credentials=True)).data == DATA[start:start + 100]
    assert len(api_calls) == 1
    sig[0] = "s2"  # the signed URL expired
    assert (await client.get_range(url, 5, 10, credentials=True)).data == DATA[5:15]
    assert len(api_calls) == 2
    await client.aclose()


async def test_a_primary_rate_limit_waits_for_the_reset_within_the_timeout(autojump_clock):
    calls = []

    async def handler(request):
        calls.append(trio.current_time())
        if len(calls) == 1:
            return httpx.Response(403, json={"message": "API rate limit exceeded"}, headers={
                "X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(int(time.time()) + 2)})
        return httpx.Response(200, json={"ok": 1}, headers={"X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "59",
                                                           "X-RateLimit-Reset": "2000000000"})

    client = client_for(handler, timeout=10.0)
    assert await client.get_json(API + "/x") == {"ok": 1}
    assert 1.0 <= calls[1] - calls[0] <= 4.0
    budget = client.rate_limit(API)
    assert budget is not None and (budget.limit, budget.remaining, budget.reset) == (60, 59, 2000000000.0)
    await client.aclose()


async def test_a_rate_limit_resetting_after_the_timeout_is_eio_saying_when(autojump_clock):
    async def handler(request):
        return httpx.Response(403, json={"message": "API rate limit exceeded"}, headers={
            "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(time.time()) + 3600)})

    client = client_for(handler, timeout=5.0)
    with pytest.raises(UpstreamError, match=r"rate limit hit.*resets at") as caught:
        await client.get_json(API + "/x")
    assert not isinstance(caught.value, Forbidden)
    with pytest.raises(UpstreamError, match="rate limit hit"):
        await client.get_range(API + "/repos/o/r/actions/artifacts/1/zip", 0, 10, credentials=True)
    await client.aclose()


async def test_a_secondary_rate_limit_403_with_retry_after_is_a_wait(autojump_clock):
    calls = []

    async def handler(request):
        calls.append(trio.current_time())
        if len(calls) == 1:
            return httpx.Response(403, json={"message": "You have exceeded a secondary rate limit"},
                                  headers={"Retry-After": "3"})
        return httpx.Response(200, json=[])

    client = client_for(handler, timeout=10.0)
    with trio.fail_after(10):
        assert await client.get_json(API + "/x") == []
    assert calls[1] - calls[0] >= 3.0
    await client.aclose()


async def test_a_plain_403_is_still_a_refusal():
    async def handler(request):
        return httpx.Response(403, json={"message": "Resource not accessible by integration"})

    client = client_for(handler)
    with pytest.raises(Forbidden):
        await client.get_json(API + "/x")
    await client.aclose()


class PagedApi:
    """Runs in pages of 2 with Link headers and ETags; If-None-Match answers 304."""

    def __init__(self, runs=5, next_origin=None):
        self.runs = runs
        self.requests = []
        self.next_origin = next_origin or API

    async def handler(self, request):
        self.requests.append(request)
        page = int(request.url.params.get("page", "1"))
        etag = f'W/"runs-{self.runs}-p{page}"'
        if request.headers.get("if-none-match") == etag:
            return httpx.Response(304, headers={"ETag": etag})
        per = 2
        first = (page - 1) * per
        runs = [{"id": 1000 - i, "status": "completed", "conclusion": "success", "head_branch": "main"}
                for i in range(first, min(first + per, self.runs))]
        headers = {"ETag": etag}
        if first + per < self.runs:
            # as GitHub writes them: the repository by id, not by name
            headers["Link"] = f'<{self.next_origin}/repositories/42/actions/runs?per_page=2&page={page + 1}>; rel="next"'
        return httpx.Response(200, json={"total_count": self.runs, "workflow_runs": runs}, headers=headers)


async def test_listings_follow_link_pages_and_ask_again_conditionally():
    server = PagedApi()
    client = client_for(server.handler)
    docs = ApiDocs(client, None)
    api = ActionsApi(docs, API, token_set=True)
    runs = await api.runs("o", "r", 10)
    assert [r.id for r in runs] == [1000, 999, 998, 997, 996]
    assert len(server.requests) == 3
    again = await api.runs("o", "r", 10)
    assert again == runs
    assert [r.headers.get("if-none-match") for r in server.requests[3:]] == [
        'W/"runs-5-p1"', 'W/"runs-5-p2"', 'W/"runs-5-p3"']
    assert docs.not_modified == 3
    server.runs = 6  # changed: new ETags, new documents
    assert len(await api.runs("o", "r", 10)) == 6
    await client.aclose()


async def test_a_next_page_on_another_origin_is_not_followed():
    server = PagedApi(next_origin="https://evil.example")
    client = client_for(server.handler)
    api = ActionsApi(ApiDocs(client, None), API, token_set=True)
    with pytest.raises(BadListing, match="another endpoint"):
        await api.runs("o", "r", 10)
    assert all(r.url.host == "api.github.example" for r in server.requests)
    await client.aclose()


async def test_a_next_page_of_another_endpoint_is_not_followed():
    server = PagedApi()

    async def elsewhere(request):
        response = await server.handler(request)
        if "link" in response.headers:
            response.headers["Link"] = f'<{API}/repositories/42/actions/secrets?page=2>; rel="next"'
        return response

    client = client_for(elsewhere)
    with pytest.raises(BadListing, match="another endpoint"):
        await ActionsApi(ApiDocs(client, None), API, token_set=True).runs("o", "r", 10)
    assert len(server.requests) == 1
    await client.aclose()


async def test_only_as_many_pages_as_needed():
    server = PagedApi(runs=50)
    client = client_for(server.handler)
    api = ActionsApi(ApiDocs(client, None), API, token_set=True)
    assert len(await api.runs("o", "r", 3)) == 3
    assert len(server.requests) == 2
    await client.aclose()


async def test_concurrent_reads_after_the_blob_url_expired_resolve_it_once():
    api_calls, sig = [], ["s1"]
    client = client_for(signing_api(api_calls, sig, api_delay=0.05))  # the API is slower than the blob host
    url = API + "/repos/o/r/actions/artifacts/1/zip"
    assert (await client.get_range(url, 0, 10, credentials=True)).data == DATA[:10]
    sig[0] = "s2"
    got = {}

    async def read(start):
        got[start] = (await client.get_range(url, start, 100, credentials=True)).data

    async with trio.open_nursery() as nursery:
        for start in range(0, 1600, 100):
            nursery.start_soon(read, start)
    assert got == {s: DATA[s:s + 100] for s in range(0, 1600, 100)}
    assert len(api_calls) == 2  # the first resolution, then one for all sixteen
    await client.aclose()


@pytest.mark.parametrize(("api_url", "url", "applies"), [
    ("https://api.github.com", "https://api.github.com/repos/o/r/actions/runs?per_page=1", True),
    ("https://api.github.com", "https://api.github.com/repositories/42/actions/runs?page=2", True),
    ("https://api.github.com", "https://api.github.com/user", False),
    ("https://api.github.com", "https://api.github.com/repos/../user", False),
    ("https://api.github.com", "https://api.github.com/repos/o/./r", True),  # sent as /repos/o/r
    ("https://api.github.com", "http://api.github.com/repos/o/r", False),
    ("https://api.github.com", "https://evil.example/repos/o/r", False),
    ("https://ghe.example/api/v3", "https://ghe.example/api/v3/repos/o/r/actions/runs", True),
    ("https://ghe.example/api/v3", "https://ghe.example/repos/o/r/actions/runs", False),
    # another CI system's API on the same origin (the demo's fake serves all of them)
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080/api/v1.1/project/github/o/r", False),
])
def test_the_credential_applies_under_the_apis_repository_paths_only(api_url, url, applies):
    assert credential(api_url, "tok").applies_to(url) is applies


def test_the_token_comes_from_gh_token_then_github_token_or_a_file(tmp_path):
    from ciartfs.config import load_settings

    token_file = tmp_path / "gh-token"
    token_file.write_text("from-file\n")

    def token(flags, env):
        return load_settings(flags, env=env).provider("github").token

    assert token({}, {}) is None
    assert token({}, {"GITHUB_TOKEN": "b"}) == "b"
    assert token({}, {"GH_TOKEN": "a", "GITHUB_TOKEN": "b"}) == "a"  # what gh reads first
    assert token({"github_token_file": str(token_file)}, {"GH_TOKEN": "a"}) == "from-file"  # a flag wins
    assert token({}, {"CIARTFS_GITHUB_TOKEN_FILE": str(token_file)}) == "from-file"
    settings = load_settings({}, env={"GH_TOKEN": "s3cret", "GITHUB_API_URL": "https://ghe.example/api/v3/"})
    github = settings.provider("github")
    assert github.api_url == "https://ghe.example/api/v3" and "s3cret" in settings.secrets()
    assert "s3cret" not in repr(settings)


async def test_github_enterprise_pages_under_its_api_base_path():
    ghe = "https://ghe.example/api/v3"
    server = PagedApi(next_origin=ghe)
    client = HttpClient(timeout=3.0, credentials=(credential(ghe, TOKEN),), transport=Transport(server.handler))
    api = ActionsApi(ApiDocs(client, None), ghe, token_set=True)
    assert len(await api.runs("o", "r", 10)) == 5
    assert [r.url.path for r in server.requests] == ["/api/v3/repos/o/r/actions/runs"] + [
        "/api/v3/repositories/42/actions/runs"] * 2
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in server.requests)
    outside = PagedApi(next_origin="https://ghe.example")  # the right origin, outside the API's base path
    client2 = HttpClient(timeout=3.0, credentials=(credential(ghe, TOKEN),), transport=Transport(outside.handler))
    with pytest.raises(BadListing, match="another endpoint"):
        await ActionsApi(ApiDocs(client2, None), ghe, token_set=True).runs("o", "r", 10)
    await client.aclose()
    await client2.aclose()
