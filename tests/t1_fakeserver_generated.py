"""The fake storage's generated gzip streams: valid gzip, any range by arithmetic, never held
whole (a 10 GiB bomb costs nothing until its bytes are read)."""

from __future__ import annotations

import gzip
import hashlib
import random
import time
import zlib

import httpx

from ciartfs.fakeserver.generated import GeneratedGzip


def test_a_generated_log_is_valid_gzip_of_its_pieces():
    log = GeneratedGzip.text(2 << 20, seed=3)
    stream = b"".join(log.read(0, log.size))
    assert len(stream) == log.size
    decoded = gzip.decompress(stream)  # checks the trailer's CRC-32 and size too
    assert len(decoded) == log.decoded_size and hashlib.sha256(decoded).hexdigest() == log.sha256()
    assert 3 < log.decoded_size / log.size < 8  # compresses like a CI log
    labels = [decoded[i:i + 16] for i in range(0, len(decoded), 64 << 10)]
    assert len(set(labels)) == len(labels) == log.count  # every piece differs from the others


def test_any_range_of_the_stream_is_the_same_bytes():
    log = GeneratedGzip.text(1 << 20, seed=4, piece_bytes=16 << 10, distinct_bases=3)
    stream = b"".join(log.read(0, log.size))
    rng = random.Random(5)
    cases = [(0, 1), (9, 11), (0, log.size), (log.size - 9, log.size), (log.size - 3, log.size + 50),
             (log.size, log.size + 5)] + [(a, a + rng.randrange(40000)) for a in (rng.randrange(log.size) for _ in range(200))]
    for start, end in cases:
        assert b"".join(log.read(start, end)) == stream[start:end], (start, end)


def test_a_bomb_is_sized_and_started_without_being_generated():
    began = time.perf_counter()
    bomb = GeneratedGzip.zeros(10 << 30)
    assert bomb.decoded_size == 10 << 30
    assert 1000 < bomb.decoded_size / bomb.size < 1032  # deflate's limit is ~1032:1
    head = b"".join(bomb.read(0, 64 << 10))
    inflater = zlib.decompressobj(wbits=31)
    assert inflater.decompress(head, 1 << 20) == bytes(1 << 20)
    assert time.perf_counter() - began < 2, "the bomb was generated, not described"
    small = GeneratedGzip.zeros(8 << 20)
    assert gzip.decompress(b"".join(small.read(0, small.size))) == bytes(8 << 20)


def test_storage_serves_a_generated_artifact_gzip_encoded_with_ranges(fake):
    log = GeneratedGzip.text(1 << 20, seed=6)
    task = fake.queue.add_task("gEnErAtEdQaC0000000001A")
    art = task.add_run("completed").add_artifact("public/logs/live.log", generated=log)
    url = fake.presigned_url(art.blob_id)
    whole = httpx.get(url, headers={"Accept-Encoding": "identity"}, timeout=10)
    assert whole.status_code == 200 and whole.headers["content-encoding"] == "gzip"
    raw = whole.content  # httpx decodes Content-Encoding
    assert hashlib.sha256(raw).hexdigest() == log.sha256()
    with httpx.stream("GET", url, headers={"Range": "bytes=100-199"}, timeout=10) as part:
        assert part.status_code == 206 and part.headers["content-range"] == f"bytes 100-199/{log.size}"
        assert b"".join(part.iter_raw()) == b"".join(log.read(100, 200))  # compressed bytes, as S3 does
