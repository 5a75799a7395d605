"""Tier 1: HTTP/1.1 syntax without the network: URLs split as httpx splits them, request heads a
real HTTP/1.1 parser (llhttp, as a server) reads back exactly, and answers read as llhttp reads
them whole, but for the rules we add (status 100-599, HTTP/1.0 and 1.1 only, a Content-Length
a file can have, no 101) and the two leniencies we keep (bare LF, obsolete line folding)."""

from __future__ import annotations

import dataclasses
from collections.abc import Coroutine
from typing import Any

import httptools
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ciartfs.net import wire
from ciartfs.net.pool import MAX_HEAD_BYTES, _Exchange
from ciartfs.net.wire import (
    MAX_CONTENT_LENGTH,
    BrokenAnswer,
    ResponseParser,
    header_dict,
    parse_url,
    request_fields,
    request_head,
)

TOKEN_CHARS = "!#$%&'*+.^_`|~-" + "0123456789" + "abcdefghijklmnopqrstuvwxyz" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


# -- answers: our reading (the pool's `_Exchange` over a scripted connection) against llhttp's ---

class ScriptedConnection:
    """Hands out an answer in the pieces given, then the end of the connection (b"")."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = [p for p in pieces if p]

    async def receive(self, max_bytes: int) -> bytes:
        if not self.pieces:
            return b""
        piece = self.pieces[0]
        if len(piece) > max_bytes:
            self.pieces[0] = piece[max_bytes:]
            return piece[:max_bytes]
        return self.pieces.pop(0)

    receive_head = receive  # (the pool reads heads with this one, bodies with `receive`)

    @property
    def unread(self) -> bytes:
        return b"".join(self.pieces)


def at_once(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never waits (a ScriptedConnection never does) to its end."""
    try:
        coroutine.send(None)
    except StopIteration as e:
        return e.value
    raise AssertionError("the coroutine waited")


@dataclasses.dataclass
class Ours:
    status: int = 0
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    body: bytes = b""
    reusable: bool = False
    error: type[Exception] | None = None  # BrokenAnswer, or RemoteProtocolError: cut short
    unread: bytes = b""  # left on the connection


def our_reading(pieces: list[bytes], method: str = "GET") -> Ours:
    conn = ScriptedConnection(pieces)
    exchange = _Exchange(conn, method)  # type: ignore[arg-type]
    ours = Ours()
    try:
        at_once(exchange.response_head())
        ours.status, ours.headers = exchange.status, exchange.headers
        body = exchange.body()
        while True:
            try:
                ours.body += at_once(body.__anext__())
            except StopAsyncIteration:
                break
        assert exchange.done
        ours.reusable = exchange.reusable
    except httpx.RemoteProtocolError as e:
        ours.error = BrokenAnswer if isinstance(e, BrokenAnswer) else httpx.RemoteProtocolError
    ours.unread = conn.unread
    return ours


@dataclasses.dataclass
class Message:
    status: int = 0
    fields: list[tuple[bytes, bytes]] = dataclasses.field(default_factory=list)
    head_ended: bool = False
    keep_alive: bool = False
    body: bytes = b""
    ended_at: int | None = None  # offset in the bytes fed where the message ended


class LlhttpReading:
    """llhttp (httptools, with bare LF allowed, as ours) fed an answer whole, a byte at a time
    where we need to know where each message ends: the reference our reading is compared with."""

    def __init__(self, data: bytes, *, stepwise: bool = False) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)
        self.messages: list[Message] = []
        self.error_at: int | None = None
        self.offset = 0
        for self.offset in range(0, len(data), 1 if stepwise else max(1, len(data))):
            try:
                self.parser.feed_data(data[self.offset:self.offset + 1] if stepwise else data)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade):
                self.error_at = self.offset
                break

    def on_message_begin(self) -> None:
        self.messages.append(Message())

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.messages[-1].head_ended:  # (not a chunked body's trailers)
            self.messages[-1].fields.append((name, value))

    def on_headers_complete(self) -> None:
        message = self.messages[-1]
        message.head_ended, message.status = True, self.parser.get_status_code()
        message.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.messages[-1].body += body

    def on_message_complete(self) -> None:
        self.messages[-1].ended_at = self.offset + 1  # (where it is known: stepwise)


def reads_until_close(head: bytes) -> bool:
    """Whether llhttp reads the body of this answer until the connection ends: it keeps the
    connection of an HTTP/1.1 answer without "Connection: close" alive unless it does so."""
    lines = head.split(b"\n")
    lines[0] = b"HTTP/1.1" + lines[0][8:]
    probe = LlhttpReading(b"\n".join(line for line in lines if not line.lower().startswith(b"connection:")))
    return not probe.messages[-1].keep_alive


FOLD = b"<fold>"
field_names = st.one_of(st.sampled_from([b"Content-Length", b"content-length", b"Transfer-Encoding", b"Connection"]),
                        st.text(TOKEN_CHARS, min_size=1, max_size=6).map(str.encode),
                        st.sampled_from([b"Content-Length ", b"X\xe9", b"X\x00"]))
field_values = st.lists(st.sampled_from([b"0", b"4", b"10", b"0004", b"1" + b"0" * 23, b"9223372036854775807",
                                         b"9223372036854775808", b"18446744073709551615", b",", b" ", b"\t", b"chunked",
                                         b"CHUNKED", b"gzip", b"chunked, gzip", b"gzip, chunked", b"chunked,", b";q=1", b"close",
                                         b"keep-alive", b"-", b"+", b"\x00", b"\r",
                                         b"\x7f", b"\xe9", b"a", b":", b"http://h:8/a?b=c:d", FOLD]), max_size=4)
reasons = st.lists(st.sampled_from([b" ", b"\t", b"\x00", b"\xe9", b"\x7f", b"OK", b"Partial Content", b"\r"]),
                   max_size=3).map(b"".join)
bodies = st.sampled_from([b"", b"abcd", b"ab", b"3\r\nabc\r\n0\r\n\r\n", b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n", b"3\r\nab",
                          b"zz\r\n{}\r\n0\r\n\r\n", b"4;e=1\r\nabcd\r\n0\r\n\r\n", b"3\r\nabc\r\n0\r\n\r\nJUNK",
                          b"abcdHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"ffffffffffffffffff\r\n"])
informational = st.sampled_from([b"", b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"])


def joined(pieces: list[bytes], fold: bytes) -> bytes:
    """A field value; a fold is read as one space with the whitespace around it (RFC 9112 5.2)."""
    out, after_fold = b"", False  # after_fold: nothing but whitespace since the last fold
    for piece in pieces:
        if piece == FOLD:
            if after_fold:
                continue  # one fold: two in a row (whitespace between) would write an empty line, which ends the head
            out = out.rstrip(b" \t") + fold
            after_fold = True
        elif not (piece.strip(b" \t") == b"" and after_fold):
            out += piece
            after_fold = False
    return out


@settings(max_examples=1000, deadline=None)
@given(before=informational, version=st.sampled_from([b"1.1", b"1.1", b"1.0", b"2.0", b"0.9", b"1.2"]),
       status=st.one_of(st.integers(0, 1100).map(lambda n: b"%03d" % n), st.sampled_from([b"20", b"2x0", b" 200"])),
       reason=reasons, fields=st.lists(st.tuples(field_names, field_values, st.sampled_from([b"\r\n", b"\r\n", b"\n"])),
                                       max_size=5),
       end=st.sampled_from([b"\r\n", b"\n"]), body=bodies, method=st.sampled_from(["GET", "GET", "GET", "HEAD"]),
       cuts=st.lists(st.integers(0, 400), max_size=3))
def test_answers_are_read_as_llhttp_reads_them(before, version, status, reason, fields, end, body, method, cuts):
    """Our reading of an answer (the pool's own, over a connection that hands it out in pieces
    and then closes) against llhttp's over the whole answer: the same status, headers, body and
    keep-alive; broken (not retried) where llhttp refuses the bytes, or for our added rules; cut
    short (retried) where the connection closed first. The head llhttp reads has each obsolete
    folding already replaced by a space, as RFC 9112 5.2 tells a user agent to. (Where llhttp
    gives a 104-199 answer a body, RFC 9112 6.3 gives it none, as we do: a next head follows.)"""
    def head(fold: bytes) -> bytes:
        lines = b"".join(name + b":" + joined(value, fold) + eol for name, value, eol in fields)
        return b"HTTP/" + version + b" " + status + (b" " + reason if reason else b"") + b"\r\n" + lines + end

    sent, meant = before + head(b"\r\n "), before + head(b" ")
    pieces = [sent + body]
    for cut in sorted(cuts):  # the answer in pieces: a head may arrive over several reads
        if 0 < cut < len(pieces[-1]):
            pieces[-1:] = [pieces[-1][:cut], pieces[-1][cut:]]
    ours = our_reading(pieces, method)
    head_alone = LlhttpReading(meant).messages[-1]
    if not head_alone.head_ended:  # llhttp refused the head
        assert ours.error is BrokenAnswer, ours
        return
    declared = header_dict(head_alone.fields).get("content-length", "").strip(" \t")
    if (not 100 <= head_alone.status <= 599 or head_alone.status == 101 or version not in (b"1.1", b"1.0")
            or (declared and int(declared) > MAX_CONTENT_LENGTH)):
        # a rule of ours: llhttp reads "099" and "600" as statuses, HTTP/0.9 and 2.0 as versions,
        # and a Content-Length up to 2^64 - 1, and stops at a 101
        assert ours.error is BrokenAnswer, ours
        return
    if head_alone.status < 200:  # informational: the next bytes must be the next head
        assert ours.error is (httpx.RemoteProtocolError if body == b"" else BrokenAnswer), ours
        return
    coding = header_dict(head_alone.fields).get("transfer-encoding")
    if coding is not None and coding.strip(" \t").lower() != "chunked":
        # ours too: llhttp would hand over a gzip or twice chunked body as it came
        assert ours.error is BrokenAnswer, ours
        return
    theirs = LlhttpReading(meant + body, stepwise=True)
    final = theirs.messages[meant.count(b"\r\n\r\n", 0, len(before))]  # the one after the 1xx ones
    assert (ours.status, ours.headers) == (final.status, header_dict((n, v.strip(b" \t")) for n, v in final.fields))
    if method == "HEAD":
        assert ours.error is None and ours.body == b"" and (not ours.reusable or final.keep_alive)
        return
    if final.ended_at is not None:  # llhttp read all of it: so did we, bytes and keep-alive alike
        assert ours.error is None and ours.body == final.body, (ours, final)
        beyond = (meant + body)[final.ended_at:len(meant + body) - len(ours.unread)]
        assert ours.reusable == (final.keep_alive and beyond == b""), (ours, final, beyond)
    elif theirs.error_at is not None:  # llhttp refused the body (a bad chunk)
        assert ours.error is BrokenAnswer, (ours, theirs)
    elif reads_until_close(meant[len(before):]):  # the body ends where the connection does
        assert ours.error is None and ours.body == final.body and not ours.reusable, (ours, final)
    else:  # llhttp waits for more: the answer was cut short, worth asking again
        assert ours.error is httpx.RemoteProtocolError, (ours, final)


S3_PARTIAL = (b"HTTP/1.1 206 Partial Content\r\nx-amz-id-2: a/b+c=\r\nContent-Range: bytes 0-3/10\r\n"
              b"Content-Length: 4\r\n\r\n0123")


@pytest.mark.parametrize("answer, status, body, reusable", [
    (S3_PARTIAL, 206, b"0123", True),
    (b"HTTP/1.1 302 Found\r\nLocation: https://s.example/b?sig=1\r\nContent-Length: 0\r\n\r\n", 302, b"", True),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nab", 200, b"ab", False),  # HTTP/1.0: closed after
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nab", 200, b"ab", True),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nab", 200, b"ab", False),
    (b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 10\r\n\r\n", 304, b"", True),
    (b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n", 204, b"", True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n1;x=y\r\nd\r\n0\r\nX-T: 1\r\n\r\n", 200, b"abcd", True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked \r\n\r\n3\r\nabc\r\n0\r\n\r\n", 200, b"abc", True),
    (b"HTTP/1.1 200 OK\r\n\r\nuntil the end", 200, b"until the end", False),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + S3_PARTIAL, 206, b"0123", True),
    (b"HTTP/1.1 104 X\r\nContent-Length: 4\r\n\r\n" + S3_PARTIAL, 206, b"0123", True),  # no 1xx has a body
    (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nab", 200, b"ab", True),  # bare LF (RFC 9112 2.2)
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Long: one\r\n\t two\r\n\r\nab", 200, b"ab", True),  # obs-fold
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabJUNK", 200, b"ab", False),  # out of step after
])
def test_answer_examples(answer, status, body, reusable):
    for cut in range(0, len(answer), 7):  # whole, and split at every seventh byte
        ours = our_reading([answer[:cut], answer[cut:]])
        assert (ours.error, ours.status, ours.body, ours.reusable) == (None, status, body, reusable), cut


def test_a_folded_field_reads_as_one_line():
    ours = our_reading([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Long: one \r\n\t two\r\n three\r\n\r\n"])
    assert ours.headers["x-long"] == "one two three"


@pytest.mark.parametrize("fields, expected", [
    # a repeated name (in any case) is one field, its values joined in order (RFC 9110 5.3)
    (b"Vary: a\r\nX-A: 1\r\nvary: b\r\nVARY: c\r\n", {"vary": "a, b, c", "x-a": "1"}),
    # a value's colons are its own: the name ends at the first
    (b"Location: http://h:8080/a?b=c:d\r\n", {"location": "http://h:8080/a?b=c:d"}),
    # whitespace around a value is not part of it (tabs too); an empty value is a value
    (b"X-A: \t one two \t\r\nX-B:\r\nX-C:   \r\n", {"x-a": "one two", "x-b": "", "x-c": ""}),
    # bare LF line ends, mixed with CRLF, and a value ending in whitespace before a bare LF
    (b"X-A: 1 \nX-B: 2\r\nX-C: 3\t\n", {"x-a": "1", "x-b": "2", "x-c": "3"}),
    # bytes outside ASCII read as Latin-1, one character each
    (b"X-A: caf\xc3\xa9\r\n", {"x-a": "caf\xc3\xa9"}),
    # obsolete folding inside a repeated field, read as one space
    (b"X-A: one\r\nX-A: two\r\n three\r\n", {"x-a": "one, two three"}),
])
def test_head_fields_are_split_as_llhttp_reads_them(fields, expected):
    answer = b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 2\r\n\r\nab"
    for cut in range(1, len(answer)):  # whatever the reads the head arrives in
        ours = our_reading([answer[:cut], answer[cut:]])
        assert ours.error is None and ours.body == b"ab" and ours.headers == {**expected, "content-length": "2"}, cut
    unfolded = answer.replace(b"\r\n three", b" three")
    assert ours.headers == header_dict((n, v.strip(b" \t")) for n, v in LlhttpReading(unfolded).messages[0].fields)


def test_a_chunked_body_s_trailers_are_not_headers():
    ours = our_reading([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n",
                        b"3\r\nabc\r\n0\r\nX-A: 2\r\nX-Trailer: 3\r\n\r\n"])
    assert (ours.error, ours.body, ours.headers) == (None, b"abc", {"transfer-encoding": "chunked", "x-a": "1"})


def test_an_oversized_head_is_broken_whatever_the_reads():
    field = b"X-Pad: " + b"a" * 1000 + b"\r\n"
    answer = b"HTTP/1.1 200 OK\r\n" + field * (MAX_HEAD_BYTES // len(field) + 1) + b"Content-Length: 0\r\n\r\n"
    for size in (len(answer), 4096, 1000):
        ours = our_reading([answer[i:i + size] for i in range(0, len(answer), size)])
        assert ours.error is BrokenAnswer, size


def test_an_answer_to_head_has_no_body_whatever_it_declares():
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    ours = our_reading([answer, b"HTTP/1.1 200 OK\r\n"], "HEAD")  # the next answer is not read as a body
    assert (ours.status, ours.body, ours.reusable, ours.unread) == (200, b"", True, b"HTTP/1.1 200 OK\r\n")
    assert our_reading([answer + b"0123456789"]).body == b"0123456789"  # to a GET, the same head frames 10 bytes


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 099 OK\r\nContent-Length: 0\r\n\r\n",  # llhttp: status 99
    b"HTTP/1.1 000 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 600 OK\r\nContent-Length: 0\r\n\r\n",  # llhttp: status 600
    b"HTTP/1.1 999 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 1000 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",  # llhttp reads 0.9 and 2.0 too
    b"HTTP/0.9 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",  # never asked for
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",  # duplicate
    b"HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\n\r\nabcd",
    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 3\r\n\r\nabcd",  # conflicting
    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -4\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",  # a coding we do not undo
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n3\r\nabc",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length :4\r\n\r\nabcd",  # whitespace before the colon
    b"HTTP/1.1 200 OK\r\n Content-Length: 4\r\n\r\nabcd",  # whitespace before the first field line
    b"HTTP/1.1 302 Found\r\nLocation: /a\rb\r\nContent-Length: 0\r\n\r\n",  # a bare CR
    b"HTTP/1.1 302 Found\r\nLocation: /a\x00b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",  # a bad chunk size
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",  # and an absurd one
])
def test_answers_that_break_http_are_broken_not_cut_short(answer):
    assert our_reading([answer]).error is BrokenAnswer


@pytest.mark.parametrize("value", [str(MAX_CONTENT_LENGTH + 1), str(2**64 - 1), "1" + "0" * 23, "4" * 5000, "0" * 20 + "4"])
def test_a_content_length_no_file_can_have_is_a_broken_answer(value):
    # (2^64 - 1: llhttp takes it; 10^23: llhttp refuses an overflow; 5000 digits: more than int()
    # reads; 0...04: no file's length is written with 21 digits)
    for status in (b"200", b"204"):
        answer = b"HTTP/1.1 " + status + b" X\r\nContent-Length: " + value.encode() + b"\r\n\r\n"
        assert our_reading([answer]).error is BrokenAnswer


def test_the_largest_content_length_is_read():
    parser = ResponseParser("GET")
    head = parser.head(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % MAX_CONTENT_LENGTH)
    assert head is not None and head.length == 2**63 - 1


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 206 Partial Content\r\nContent-",  # the head
    b"HTTP/1.1 206 Partial Content\r\nContent-Length: 4\r\n\r\n01",  # a sized body
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n01",  # a chunk
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n0123\r\n",  # the last chunk
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
])
def test_answers_the_connection_cut_short_are_not_broken(answer):
    assert our_reading([answer]).error is httpx.RemoteProtocolError


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
    server = LlhttpServer(ours)  # a real HTTP/1.1 server reads what was meant, no more
    assert server.error is None and server.requests == [(b"GET", target.path.encode())]
    assert server.fields == [(b"Host", b"example.test:8080")] + [(n.encode(), v.strip(" \t").encode()) for n, v in headers]


class LlhttpServer:
    """llhttp reading requests, as a server does."""

    def __init__(self, data: bytes) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.requests: list[tuple[bytes, bytes]] = []  # method, target of each request read whole
        self.fields: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.url = b""
        self.error: Exception | None = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self.error = e

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value.rstrip(b" \t")))  # (llhttp leaves the whitespace after a value)

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.requests.append((self.parser.get_method(), self.url))


def test_a_request_body_is_framed_by_its_length():
    target = parse_url("http://example.test/start-download/a%2Fb")
    fields = [*request_fields(target, [("Content-Type", "application/json")]), ("Content-Length", "8")]
    server = LlhttpServer(request_head("PUT", target.path, fields) + b'{"a": 1}')
    assert server.error is None and server.requests == [(b"PUT", b"/start-download/a%2Fb")] and server.body == b'{"a": 1}'


@pytest.mark.parametrize("path", ["/a b", "/a\tb", "/a\x7f", "/a\x00", "/caf\xe9", "/a\r\nX-Injected: 1", ""])
def test_request_targets_outside_printable_ascii_are_refused(path):
    target = wire.Target("http", "example.test", 80, path)  # (parse_url never makes these: built by hand)
    with pytest.raises(httpx.LocalProtocolError):
        request_fields(target, [])


def test_header_values_cannot_add_lines():
    target = parse_url("http://example.test/a")
    for value in ("a\r\nX-Injected: 1", "a\nb", "a\x00", "caf\xe9"):
        with pytest.raises(httpx.LocalProtocolError):
            request_fields(target, [("Circle-Token", value)])


def test_fields_found_legal_are_remembered_boundedly_and_illegal_ones_never():
    target = parse_url("http://example.test/a")
    wire._LEGAL_FIELDS.clear()
    for i in range(wire.LEGAL_FIELDS_KEPT + 10):  # block reads: a new Range each
        assert request_fields(target, [("Range", f"bytes={i}-{i + 9}")])[1] == ("Range", f"bytes={i}-{i + 9}")
        assert len(wire._LEGAL_FIELDS) <= wire.LEGAL_FIELDS_KEPT
    # the same pair again is sent as checked the first time (surrounding whitespace dropped)
    for _ in range(2):
        assert request_fields(target, [("Accept", " */* ")])[1] == ("Accept", "*/*")
    for _ in range(2):  # refused every time, whatever was accepted before under that name
        with pytest.raises(httpx.LocalProtocolError):
            request_fields(target, [("Accept", "*/*\r\nX-Injected: 1")])
        with pytest.raises(httpx.LocalProtocolError):
            request_fields(target, [("Host", "elsewhere.test")])


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
@given(scheme=st.sampled_from(["http", "https", "HTTP", "hTtPs", "ftp"]),
       host=st.lists(st.sampled_from(["a", "Z", "9", "255", "256", "01", ".", "-", "[::1]", "@", "ü", "%41", ":", "_"]),
                     max_size=8).map("".join),
       port=st.sampled_from(["", ":", ":80", ":443", ":8080", ":0", ":65536", ":x"]),
       rest=st.lists(st.sampled_from(["/", "a", "?", "=", "&", "%", "%2F", "%2f", "%e9", "%zz", ".", "..", "#", " ", "~", "'",
                                      "\\", "\"", "<", "{", "é", "\x7f", "+", ";", "@"]), max_size=8).map("".join))
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
