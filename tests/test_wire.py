"""Tier 1: HTTP/1.1 syntax without the network: URLs split as httpx splits them, request heads a
real HTTP/1.1 parser (h11) reads back exactly, and response heads read as h11 reads them."""

from __future__ import annotations

import h11
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ciartfs.net.wire import MAX_CONTENT_LENGTH, HEAD_END, BrokenAnswer, content_length, header_dict, parse_url, plain_head, request_fields, request_head

TOKEN_CHARS = "!#$%&'*+.^_`|~-" + "0123456789" + "abcdefghijklmnopqrstuvwxyz" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
head_bytes = st.sampled_from([b"\r\n", b"\n", b" ", b"\t", b":", b"\x00", b"\xe9", b"a", b"Content-Length", b"1"])


def h11_reads(head: bytes) -> h11.Event | None:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    try:
        conn.receive_data(head)
        return conn.next_event()
    except h11.RemoteProtocolError:
        return None


field_names = st.one_of(st.sampled_from([b"Content-Length", b"content-length", b"Transfer-Encoding", b"Connection"]),
                        st.text(TOKEN_CHARS + " ", min_size=1, max_size=6).map(str.encode))
field_values = st.lists(st.one_of(head_bytes, st.sampled_from([b"4", b"0", b",", b"chunked", b"close", b"+"])),
                        max_size=4).map(b"".join)


@settings(max_examples=1000, deadline=None)
@given(version=st.sampled_from([b"1.1", b"1.0", b"2.0"]), status=st.integers(0, 999),
       reason=st.lists(head_bytes, max_size=3).map(b"".join),
       fields=st.lists(st.tuples(field_names, field_values), max_size=6),
       eol=st.sampled_from([b"\r\n", b"\r\n", b"\n"]))
def test_every_head_the_transport_reads_itself_h11_reads_alike(version, status, reason, fields, eol):
    """The transport's decision, as `_Exchange.response_head` makes it: a plain head whose body
    Content-Length frames is read here, anything else by h11."""
    head = b"HTTP/" + version + b" %03d " % status + reason + eol + b"".join(n + b":" + v + eol for n, v in fields) + eol
    end = HEAD_END.search(head)
    ours = plain_head(head[:end.end()]) if end else None
    length = content_length(ours[2], ours[0]) if ours is not None else None
    if ours is None or length is None:
        return  # h11's to judge
    theirs = h11_reads(head)  # what we take, h11 takes: same status, version, headers, body length
    assert isinstance(theirs, h11.Response)
    their_headers = header_dict(theirs.headers)
    # (h11 folds repeated equal Content-Lengths into one; we keep "4, 4": the length agrees)
    their_length = their_headers.pop("content-length", None)
    our_status, our_version, our_headers = ours
    our_headers = dict(our_headers)
    our_headers.pop("content-length", None)
    assert (our_status, our_version, our_headers) == (theirs.status_code, theirs.http_version == b"1.1", their_headers)
    assert length == (0 if status in (204, 304) else int(their_length or "-1"))


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-3/10\r\nContent-Length: 4\r\n\r\n",
    b"HTTP/1.1 302 Found\r\nLocation: https://s.example/b?sig=1\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nX-Amz-Id-2: a/b+c=\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
])
def test_common_answers_are_read_without_h11(head):
    ours = plain_head(head)
    assert ours is not None and content_length(ours[2], ours[0]) is not None


@pytest.mark.parametrize("status", [b"099", b"000", b"600", b"999", b"2000", b"20"])
def test_statuses_outside_100_to_599_are_left_to_h11(status):
    assert plain_head(b"HTTP/1.1 " + status + b" X\r\nContent-Length: 0\r\n\r\n") is None


@pytest.mark.parametrize("value", [str(MAX_CONTENT_LENGTH + 1), "1" + "0" * 23, "4" * 5000, "0" * 20 + "4"])
def test_a_content_length_no_file_can_have_is_a_broken_answer(value):
    # (5000 digits: more than int() reads; 0...04: h11 too refuses more than 20 digits)
    for status in (200, 204):
        with pytest.raises(BrokenAnswer):
            content_length({"content-length": value}, status)


def test_the_largest_content_length_is_read():
    assert content_length({"content-length": str(MAX_CONTENT_LENGTH)}, 200) == 2**63 - 1


@settings(max_examples=300, deadline=None)
@given(path=st.text("abcXYZ019-._~!$&'()*+,;=:@/?", max_size=30),
       headers=st.lists(st.tuples(st.one_of(st.text(TOKEN_CHARS, min_size=1, max_size=8),
                                            st.sampled_from(["Host", "HOST", "Content-Length", "transfer-encoding"])),
                                  st.text(st.one_of(st.characters(min_codepoint=0, max_codepoint=0x7f),
                                                    st.sampled_from(" \t\r\n\x00a")), max_size=12)), max_size=5))
def test_request_heads_read_back_as_sent_or_are_refused(path, headers):
    target = parse_url("http://example.test:8080/" + path)
    printable = all(c == "\t" or " " <= c <= "~" for _, v in headers for c in v)
    framing = any(n.lower() in ("host", "content-length", "transfer-encoding") for n, _ in headers)
    try:
        fields = request_fields(target, headers)
        ours = request_head("GET", target.path, fields)
    except httpx.LocalProtocolError:
        # refused only for a control character (CR, LF, NUL and the rest), or for a header the
        # request sets itself (a second Host, a body's framing on a request without one)
        assert not printable or framing
        return
    assert printable and not framing
    server = h11.Connection(h11.SERVER)  # a real HTTP/1.1 server reads what was meant, no more
    server.receive_data(ours)
    event = server.next_event()
    assert isinstance(event, h11.Request)
    assert (event.method, event.target) == (b"GET", target.path.encode())
    assert list(event.headers) == [(b"host", b"example.test:8080")] + [(n.lower().encode(), v.strip(" \t").encode())
                                                                     for n, v in headers]
    assert isinstance(server.next_event(), h11.EndOfMessage) and server.trailing_data == (b"", False)  # no more
    # and h11 takes the same request, as it must when it reads an unusual answer to it
    h11.Connection(h11.CLIENT).send(h11.Request(method="GET", target=target.path, headers=fields))


def test_header_values_cannot_add_lines():
    target = parse_url("http://example.test/a")
    for value in ("a\r\nX-Injected: 1", "a\nb", "a\x00", "caf\xe9"):
        with pytest.raises(httpx.LocalProtocolError):
            request_fields(target, [("Circle-Token", value)])


def httpx_target(url: str) -> tuple[str, str, int, str] | None:
    try:
        u = httpx.URL(url)
    except httpx.InvalidURL:
        return None
    port = u.port or {"http": 80, "https": 443}.get(u.scheme, 0)
    if u.scheme not in ("http", "https") or not u.host or not 0 < port < 65536:  # (ours refuses bad ports)
        return None
    return u.scheme, u.raw_host.decode().lower(), port, u.raw_path.decode()


def our_target(url: str) -> tuple[str, str, int, str] | None:
    try:
        t = parse_url(url)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol):
        return None
    assert parse_url(t.url) == t  # and the URL it gives back means the same
    return t.scheme, t.host, t.port, t.path


@settings(max_examples=1000, deadline=None)
@given(scheme=st.sampled_from(["http", "https", "HTTP", "ftp"]),
       host=st.lists(st.sampled_from(["a", "Z", "9", "255", "256", "01", ".", "-", "[::1]", "@", "ü", "%41", ":", "_"]),
                     max_size=8).map("".join),
       port=st.sampled_from(["", ":", ":80", ":443", ":8080", ":0", ":65536", ":x"]),
       rest=st.lists(st.sampled_from(["/", "a", "?", "=", "&", "%", "%2F", "%2f", "%e9", "%zz", ".", "..", "#", " ", "~", "'", "\\",
                                      "\"", "<", "{", "é", "\x7f", "+", ";", "@"]), max_size=8).map("".join))
def test_urls_are_split_as_httpx_splits_them(scheme, host, port, rest):
    url = f"{scheme}://{host}{port}{rest}"
    assert our_target(url) == httpx_target(url)


@pytest.mark.parametrize("url, expected", [
    ("http://Example.TEST/a?b=1", ("http", "example.test", 80, "/a?b=1")),
    ("https://h:8443", ("https", "h", 8443, "/")),
    ("http://h?x=1", ("http", "h", 80, "/?x=1")),
    ("http://h/a/../b", ("http", "h", 80, "/b")),
    ("http://user:pw@h/a#frag", ("http", "h", 80, "/a")),  # userinfo and fragment never sent
    ("http://[::1]:81/a b", ("http", "::1", 81, "/a%20b")),
    ("http://bücher.test/", ("http", "xn--bcher-kva.test", 80, "/")),
    ("http://127.0.0.1:8/", ("http", "127.0.0.1", 8, "/")),
])
def test_url_examples(url, expected):
    assert our_target(url) == expected == httpx_target(url)


@pytest.mark.parametrize("url", ["ftp://h/a", "http://", "http://h:99999/", "h/a", "javascript:alert(1)",
                                 "http://999.1.1.1/", "http://1.2.3.04/"])
def test_urls_without_an_http_target_are_refused(url):
    with pytest.raises((httpx.InvalidURL, httpx.UnsupportedProtocol)):
        parse_url(url)
