"""Tier 1: the HTTP layer against a scripted in-process transport: credential scoping across redirects,
range verification, retries, the time bound, error mapping."""

import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from ciartfs.errors import ArtifactExpired, BadListing, Forbidden, NotFound, UpstreamError, UpstreamTimeout
from ciartfs.net import client as client_module
from ciartfs.net.client import REDIRECT_TARGET_MAX_AGE, HttpClient, location_url
from ciartfs.net.credentials import HeaderCredential, origin_of
from ciartfs.providers.circleci.v1 import TokenVerdicts, artifact_url_takes_token, credential

API = "https://circleci.example"
STORAGE = "https://storage.example"
DATA = bytes(range(256)) * 40  # 10240 bytes
TOKEN = "tok-123"


class Transport(httpx.AsyncBaseTransport):
    """Like httpx.MockTransport but leaves the body unread, as a real connection does,
    so the client's raw (undecoded) streaming is exercised."""

    def __init__(self, handler):
        self.handler = handler

    async def handle_async_request(self, request):
        response = await self.handler(request)
        body = response.content
        return httpx.Response(response.status_code, headers=response.headers, stream=_Body(body))


class _Body(httpx.AsyncByteStream):
    def __init__(self, data: bytes):
        self.data = data

    async def __aiter__(self):
        for i in range(0, len(self.data), 4096):
            yield self.data[i:i + 4096]


class Server:
    """A scripted API + storage pair; records every request."""

    def __init__(self):
        self.requests: list[httpx.Request] = []
        self.storage_script: list[httpx.Response] = []
        self.valid_sig = "sig1"

    async def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        url = str(request.url)
        if url.startswith(API + "/art"):
            return httpx.Response(302, headers={"Location": f"{STORAGE}/blob?signature={self.valid_sig}"})
        if url.startswith(API + "/api/json"):
            return httpx.Response(200, json={"ok": True})
        if url.startswith(STORAGE):
            if self.storage_script:
                status, content, headers = self.storage_script.pop(0)
                return httpx.Response(status, content=content, headers=headers)
            if request.url.params.get("signature") != self.valid_sig:
                return httpx.Response(403, text="expired")
            return ranged(request, DATA)
        return httpx.Response(404)


def ranged(request, data, *, total=None):
    first, last = request.headers.get("range", "").removeprefix("bytes=").split("-")
    if first:
        start, end = int(first), min(int(last), len(data) - 1)
    else:  # bytes=-n
        start, end = max(0, len(data) - int(last)), len(data) - 1
    return httpx.Response(206, content=data[start:end + 1],
                          headers={"Content-Range": f"bytes {start}-{end}/{total or len(data)}"})


@pytest.fixture
async def server_and_client():
    server = Server()
    cred = credential(API, TOKEN)
    client = HttpClient(timeout=3.0, credentials=(cred,), transport=Transport(server.handler))
    try:
        yield server, client
    finally:
        await client.aclose()


def headers_to(server, prefix):
    return [r.headers for r in server.requests if str(r.url).startswith(prefix)]


async def test_token_goes_to_api_not_to_storage(server_and_client):
    server, client = server_and_client
    reply = await client.get_range(API + "/art/1", 100, 50, credentials=True)
    assert reply.data == DATA[100:150] and reply.total == len(DATA)
    assert [h.get("circle-token") for h in headers_to(server, API)] == [TOKEN]
    storage = headers_to(server, STORAGE)
    assert storage and all("circle-token" not in h and "authorization" not in h for h in storage)
    assert all(h["accept-encoding"] == "identity" for h in storage)


async def test_redirect_target_is_reused_then_re_resolved_when_expired(server_and_client):
    server, client = server_and_client
    await client.get_range(API + "/art/1", 0, 10, credentials=True)
    await client.get_range(API + "/art/1", 10, 10, credentials=True)
    assert len(headers_to(server, API)) == 1  # second read went straight to storage
    server.valid_sig = "sig2"  # the presigned URL expired: storage now says 403 to sig1
    reply = await client.get_range(API + "/art/1", 20, 10, credentials=True)
    assert reply.data == DATA[20:30]
    assert len(headers_to(server, API)) == 2
    assert all("circle-token" not in h for h in headers_to(server, STORAGE))


async def test_a_redirect_target_is_not_used_past_its_maximum_age(server_and_client, autojump_clock):
    # Even a target that still works is resolved again once it is REDIRECT_TARGET_MAX_AGE old
    # (on trio's clock, mocked here): a presigned URL may be revoked without storage saying so.
    server, client = server_and_client
    await client.get_range(API + "/art/1", 0, 10, credentials=True)
    await trio.sleep(REDIRECT_TARGET_MAX_AGE - 1)
    await client.get_range(API + "/art/1", 10, 10, credentials=True)
    assert len(headers_to(server, API)) == 1  # still young: straight to storage
    await trio.sleep(2)
    reply = await client.get_range(API + "/art/1", 20, 10, credentials=True)
    assert reply.data == DATA[20:30]
    assert len(headers_to(server, API)) == 2  # too old: asked the API again, though sig1 still works


async def test_redirect_targets_are_kept_boundedly_and_a_dropped_one_still_redirects(monkeypatch):
    monkeypatch.setattr(client_module, "REDIRECT_TARGETS_KEPT", 3)
    targets = client_module._RedirectTargets()
    for i in range(4):
        targets.set(f"u{i}", f"t{i}")
    assert not targets.redirects("u0") and targets.get("u0") is None  # the least recently used went
    assert targets.get("u1") == "t1"  # used: now the most recent
    targets.set("u4", "t4")
    assert targets.get("u1") == "t1" and not targets.redirects("u2")
    targets.drop("u1")  # its target failed: resolved again, by one request while others wait
    assert targets.get("u1") is None and targets.redirects("u1")


@pytest.mark.parametrize("url,gets_token", [
    (API + "/x", True),
    ("https://24-88881093-gh.circle-artifacts.com/0/a.txt", True),
    ("http://24-88881093-gh.circle-artifacts.com/0/a.txt", False),  # never over plain http
    ("https://circle-artifacts.com.evil.example/0/a", False),
    ("https://circleci.example:8443/x", False),  # another port is another origin
    ("https://evil.example/x", False),
])
def test_credential_scope(url, gets_token):
    assert credential(API, TOKEN).applies_to(url) is gets_token


async def test_redirect_to_artifact_host_does_not_carry_token():
    seen = []

    async def handler(request):
        seen.append(request)
        if request.url.host == "circleci.example":
            return httpx.Response(302, headers={"Location": "https://1-2-gh.circle-artifacts.com/x"})
        return ranged(request, DATA)

    client = HttpClient(timeout=3, credentials=(credential(API, TOKEN),), transport=Transport(handler))
    await client.get_range(API + "/a", 0, 10, credentials=True)
    await client.aclose()
    assert "circle-token" in seen[0].headers and "circle-token" not in seen[1].headers


@pytest.mark.parametrize("bad", [
    (206, DATA[:10], {"Content-Range": "bytes 5-14/10240"}),  # wrong offset
    (206, DATA[:5], {"Content-Range": "bytes 0-9/10240"}),    # short body
    (206, DATA[:10], {}),                                      # no Content-Range
    (503, b"busy", {}),
])
async def test_bad_answers_are_retried_not_returned(server_and_client, bad):
    server, client = server_and_client
    server.storage_script = [bad]
    reply = await client.get_range(API + "/art/1", 0, 10)
    assert reply.data == DATA[:10]
    assert len(headers_to(server, STORAGE)) == 2


async def test_range_ignored_gives_exact_bytes(server_and_client):
    server, client = server_and_client
    server.storage_script = [(200, DATA, {})]
    reply = await client.get_range(API + "/art/1", 4000, 100)
    assert reply.data == DATA[4000:4100] and reply.total == len(DATA)


async def test_empty_file_416(server_and_client):
    server, client = server_and_client
    server.storage_script = [(416, b"", {"Content-Range": "bytes */0"})]
    reply = await client.get_range(API + "/art/1", 0, 4096)
    assert reply.data == b"" and reply.total == 0


async def test_expired_artifact_and_forbidden():
    async def handler(request):
        return httpx.Response({"/gone": 404, "/denied": 401}[request.url.path])

    client = HttpClient(timeout=3, transport=Transport(handler))
    with pytest.raises(ArtifactExpired, match="expired"):
        await client.get_range(API + "/gone", 0, 10)
    with pytest.raises(Forbidden):
        await client.get_range(API + "/denied", 0, 10)
    await client.aclose()


async def test_json_errors_map():
    async def handler(request):
        path = request.url.path
        assert request.headers["accept"] == "application/json"
        if path == "/ok":
            return httpx.Response(200, json=[1, 2])
        if path == "/bad":
            return httpx.Response(200, text='[{"path": ')
        return httpx.Response({"/missing": 404, "/denied": 403, "/teapot": 418}[path])

    client = HttpClient(timeout=3, transport=Transport(handler))
    assert await client.get_json(API + "/ok") == [1, 2]
    with pytest.raises(BadListing, match="malformed JSON"):
        await client.get_json(API + "/bad")
    with pytest.raises(NotFound):
        await client.get_json(API + "/missing")
    with pytest.raises(Forbidden):
        await client.get_json(API + "/denied")
    with pytest.raises(UpstreamError, match="418"):
        await client.get_json(API + "/teapot")
    await client.aclose()


async def test_json_nested_deeper_than_the_stack_is_a_bad_listing_at_once():
    calls = []

    async def handler(request):
        calls.append(request)
        return httpx.Response(200, content=b"[" * 200_000 + b"]" * 200_000)

    client = HttpClient(timeout=30, transport=Transport(handler))
    with pytest.raises(BadListing, match="nested too deep"):
        await client.get_json(API + "/deep")
    assert len(calls) == 1  # the same answer again would not parse either
    await client.aclose()


@pytest.mark.parametrize("location", ["//[bad/x", "https://h:99999/x", "ftp://h/x"])
async def test_a_redirect_to_an_invalid_url_is_an_error_at_once(location):
    seen = []

    async def handler(request):
        seen.append(request)
        return httpx.Response(302, headers={"Location": location})

    client = HttpClient(timeout=30, transport=Transport(handler))
    with pytest.raises(UpstreamError, match=r"invalid URL|non-HTTP URL"):
        await client.get_range(API + "/a", 0, 10)
    assert len(seen) == 1
    await client.aclose()


@pytest.mark.parametrize("downgrade", ["http://storage.example/blob", "HTTP://storage.example:443/blob",
                                       "//storage.example/blob"])
async def test_an_https_url_redirecting_to_http_is_refused_at_once(downgrade):
    seen = []

    async def handler(request):
        seen.append(str(request.url))
        if request.url.host == "circleci.example":
            return httpx.Response(302, headers={"Location": downgrade})
        return ranged(request, DATA)

    client = HttpClient(timeout=30, credentials=(credential(API, TOKEN),), transport=Transport(handler))
    if downgrade.startswith("//"):  # scheme-relative: stays on https, followed
        assert (await client.get_range(API + "/a", 0, 10)).data == DATA[:10]
        assert seen[1].startswith("https://storage.example/")
    else:
        with pytest.raises(UpstreamError, match="https to plain http refused"):
            await client.get_range(API + "/a", 0, 10)
        assert seen == [API + "/a"]  # nothing went over plain http, and nothing was retried
    await client.aclose()


async def test_http_may_redirect_to_https_but_not_back():
    seen = []

    async def handler(request):
        seen.append(str(request.url))
        if request.url.path == "/start":
            return httpx.Response(302, headers={"Location": "https://storage.example/hop"})
        if request.url.path == "/hop":
            return httpx.Response(302, headers={"Location": "http://storage.example/blob"})
        return ranged(request, DATA)

    client = HttpClient(timeout=30, transport=Transport(handler))
    with pytest.raises(UpstreamError, match="https to plain http refused"):
        await client.get_range("http://api.example/start", 0, 10)
    assert seen == ["http://api.example/start", "https://storage.example/hop"]
    await client.aclose()


@pytest.mark.parametrize("sent, meant", [
    (b"https://s.example/caf\xc3\xa9?k=\xc3\xa9", "https://s.example/caf\u00e9?k=\u00e9"),  # UTF-8, as RFC 3987 would
    (b"https://b\xc3\xbccher.example/x", "https://b\u00fccher.example/x"),
    (b"/caf\xe9", "/caf%E9"),  # not UTF-8: the byte as sent, percent-encoded
    (b"/plain?a=%C3%A9", "/plain?a=%C3%A9"),
])
def test_location_bytes_are_read_as_sent(sent, meant):
    assert location_url(sent.decode("latin-1")) == meant  # header values arrive as Latin-1 text


async def test_retry_after_is_honoured_and_time_is_bounded():
    calls = []

    async def handler(request):
        calls.append(trio.current_time())
        if len(calls) == 1:
            return httpx.Response(429, headers={"Retry-After": "1"})
        if request.url.path == "/hang":
            await trio.sleep_forever()
        return httpx.Response(200, json={})

    client = HttpClient(timeout=2.0, transport=Transport(handler))
    assert await client.get_json(API + "/x") == {}
    assert calls[1] - calls[0] >= 1.0
    start = trio.current_time()
    with pytest.raises(UpstreamTimeout, match="within 2s"):
        await client.get_json(API + "/hang")
    assert trio.current_time() - start < 2.5
    await client.aclose()


def test_origin_normalises_ports():
    assert origin_of("https://A.example/x") == ("https", "a.example", 443)
    assert origin_of("http://a.example:80/") == ("http", "a.example", 80)
    assert HeaderCredential(headers={}, origins=frozenset({("http", "a", 80)})).applies_to("http://a/x")


async def test_tail_request_gives_the_last_bytes_and_the_total(server_and_client):
    server, client = server_and_client
    server.storage_script = [(206, DATA[-300:], {"Content-Range": f"bytes {len(DATA) - 300}-{len(DATA) - 1}/{len(DATA)}"})]
    reply = await client.get_tail(API + "/art/1", 300)
    assert (reply.start, reply.data, reply.total) == (len(DATA) - 300, DATA[-300:], len(DATA))
    assert headers_to(server, STORAGE)[-1]["range"] == "bytes=-300"
    # larger than the file: all of it
    server.storage_script = [(206, DATA, {"Content-Range": f"bytes 0-{len(DATA) - 1}/{len(DATA)}"})]
    reply = await client.get_tail(API + "/art/1", 1 << 20)
    assert (reply.start, reply.data, reply.total) == (0, DATA, len(DATA))
    # Range ignored: the whole body streams by, its tail is kept
    server.storage_script = [(200, DATA, {})]
    reply = await client.get_tail(API + "/art/1", 1000)
    assert (reply.start, reply.data, reply.total) == (len(DATA) - 1000, DATA[-1000:], len(DATA))
    # a Content-Range that does not end at the end is retried, never returned
    server.storage_script = [(206, DATA[:300], {"Content-Range": f"bytes 0-299/{len(DATA)}"})]
    reply = await client.get_tail(API + "/art/1", 300)
    assert reply.data == DATA[-300:] and len(headers_to(server, STORAGE)) == 5
    # an empty file
    server.storage_script = [(416, b"", {"Content-Range": "bytes */0"})]
    reply = await client.get_tail(API + "/art/1", 300)
    assert (reply.data, reply.total) == (b"", 0)


async def test_no_redirect_carries_credentials_not_even_back_to_the_api_origin():
    """A storage hop that redirects back to the API host (another task's private artifact, the
    token's own /me) must not get the credentials a second time."""
    seen = []

    async def handler(request):
        seen.append(request)
        if request.url.path == "/art":
            return httpx.Response(302, headers={"Location": STORAGE + "/blob"})
        if request.url.host == "storage.example":
            return httpx.Response(302, headers={"Location": API + "/api/v1.1/me"})
        return httpx.Response(401 if "circle-token" not in request.headers else 200, content=b"me")

    client = HttpClient(timeout=3, credentials=(credential(API, TOKEN),), transport=Transport(handler))
    with pytest.raises(Forbidden):
        await client.get_range(API + "/art", 0, 10, credentials=True)
    await client.aclose()
    assert [str(r.url) for r in seen] == [API + "/art", STORAGE + "/blob", API + "/api/v1.1/me"]
    assert [("circle-token" in r.headers) for r in seen] == [True, False, False]


async def test_a_url_not_built_by_a_provider_gets_no_credentials():
    seen = []

    async def handler(request):
        seen.append(request)
        return ranged(request, DATA) if "range" in request.headers else httpx.Response(200, content=DATA)

    client = HttpClient(timeout=3, credentials=(credential(API, TOKEN),), transport=Transport(handler))
    await client.get_range(API + "/api/v1.1/me", 0, 10)
    await client.get_tail(API + "/api/v1.1/me", 10)
    await client.fetch_whole(API + "/api/v1.1/me", lambda chunks, enc: _drain(chunks))
    await client.get_range(API + "/artifacts/x", 0, 10, credentials=True)
    await client.aclose()
    assert [("circle-token" in r.headers) for r in seen] == [False, False, False, True]


async def _drain(chunks):
    async for _ in chunks:
        pass


HOST = "https://circleci.example"
WHERE = "github/acme/api/7"


@pytest.mark.parametrize("url,takes_token", [
    ("https://24-88881093-gh.circle-artifacts.com/0/a.txt", True),  # the documented shape
    ("https://output.circle-artifacts.com/output/job/3f2a/artifacts/0/a.txt", True),
    ("https://24-88881093-gh.circle-artifacts.com:8443/0/a.txt", False),  # another port
    ("http://24-88881093-gh.circle-artifacts.com/0/a.txt", False),  # never over plain http
    ("https://circle-artifacts.com.evil.example/0/a", False),
    (HOST + "/artifacts/github/acme/api/7/0/a.txt", True),  # the configured host's route, this build and node
    (HOST + "/artifacts/github/acme/api/7/0/dir/%2E%2E/a.txt", False),  # a dot segment, however spelt
    (HOST + "/artifacts/github/acme/api/7/0/../../../../../../api/v1.1/me", False),  # normalised to /api/...
    (HOST + "/artifacts/github/acme/api/7/1/a.txt", False),  # another node
    (HOST + "/artifacts/github/acme/secret/1/0/a.txt", False),  # another project's files
    (HOST + "/artifacts/github/acme/api/7/0/", False),  # no file
    (HOST + "/api/v1.1/me", False),  # the API itself
    (HOST + "/api/v1.1/project/github/acme/api/7/artifacts", False),
    ("https://evil.example/artifacts/github/acme/api/7/0/a.txt", False),  # the route on another host
])
def test_which_listing_urls_take_the_token(url, takes_token):
    assert artifact_url_takes_token(url, HOST, WHERE, 0) is takes_token
    assert TokenVerdicts(HOST, WHERE)(url, 0) is takes_token


_ORIGINS = st.sampled_from([HOST, HOST + ":443", "http://circleci.example", "https://circleci.example:8443",
                            "https://evil.example", "https://24-8-gh.circle-artifacts.com",
                            "https://24-8-gh.circle-artifacts.com:443", "http://24-8-gh.circle-artifacts.com",
                            "https://circle-artifacts.com.evil.example", "https://CircleCI.example"])
_SEGMENTS = st.sampled_from(["", ".", "..", "%2E", "%2e%2E", "artifacts", "github", "acme", "api", "secret", "7", "1",
                             "0", "a.txt", "A~b-c_d", "x?y", "x#y", "%2F", "@", "v1.1", "me"])


@settings(max_examples=400)
@given(origin=st.one_of(st.just(HOST), _ORIGINS), segments=st.lists(_SEGMENTS, max_size=10), node=st.sampled_from([0, 1]),
       route_node=st.sampled_from([None, 0, 1]), where=st.sampled_from([WHERE, "github/acme/secret/7"]))
def test_the_token_verdicts_of_a_listing_are_the_rule_s(origin, segments, node, route_node, where):
    """TokenVerdicts decides once per origin and compared segments: for any URL, and after
    a verdict remembered from the build's own route (which never decides another URL
    wrongly), it says what the rule says."""
    own = origin + "/" + "/".join(["artifacts", *WHERE.split("/"), str(node), "x"])
    prefix = [] if route_node is None else ["artifacts", *where.split("/"), str(route_node)]
    url = origin + "/" + "/".join(prefix + segments)
    verdicts = TokenVerdicts(HOST, WHERE)
    for other in (own, url, origin + "/" + "/".join([*prefix, ".."])):
        assert verdicts(other, node) is artifact_url_takes_token(other, HOST, WHERE, node), other


@pytest.mark.parametrize(("status", "headers"), [
    (206, {"Content-Range": "bytes 0-9/1000000000000000000000000000000"}),  # 10^30: an OverflowError in st_size
    (206, {"Content-Range": f"bytes 0-9/{2**63}"}),  # one past the largest off_t
    (206, {"Content-Range": "bytes 0-9/" + "9" * 5000}),  # more digits than int() accepts
    (416, {"Content-Range": f"bytes */{2**64}"}),
    (200, {"Content-Length": str(2**63)}),  # Range ignored, an impossible length declared
])
async def test_a_total_no_file_can_have_is_a_bad_answer_at_once(server_and_client, status, headers):
    server, client = server_and_client
    server.storage_script = [(status, DATA[:10], headers)] * 3
    for get in (lambda: client.get_range(API + "/art/1", 0 if status != 416 else 20000, 4096),
                lambda: client.get_tail(API + "/art/1", 4096)):
        before = len(headers_to(server, STORAGE))
        with pytest.raises(UpstreamError, match="bad answer") as info:
            await get()
        assert not isinstance(info.value, UpstreamTimeout)
        assert len(headers_to(server, STORAGE)) == before + 1  # not retried: the server said it


async def test_the_largest_possible_total_is_still_a_size(server_and_client):
    server, client = server_and_client
    largest = 2**63 - 1
    server.storage_script = [(206, DATA[:10], {"Content-Range": f"bytes 0-9/{largest}"})]
    reply = await client.get_range(API + "/art/1", 0, 10)
    assert (reply.data, reply.total) == (DATA[:10], largest)
