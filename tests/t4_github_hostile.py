"""Tier 4: hostile GitHub Actions data through a real mount: artifact names that are not file
names, zips whose members lie (a size that hides a bomb, a CRC-32 that does not match), member
paths that climb out, a symbolic-link member. Each bad thing is EIO or skipped for itself,
with a log line; the rest of the run reads exactly, and the mount keeps answering."""

from __future__ import annotations

import errno
import io
import os
import stat
import struct
import zipfile

from conftest import TOKEN, expect_errno

GOOD = b"good bytes\n" * 100


def _zip(entries):
    """A zip from (ZipInfo or name, bytes, method) with the stdlib; returns bytes and infos."""
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w") as z:
        for name, data, method in entries:
            info = name if isinstance(name, zipfile.ZipInfo) else zipfile.ZipInfo(name, (2026, 11, 1, 10, 0, 0))
            info.compress_type = method
            z.writestr(info, data)
    raw = bytearray(sink.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as z:
        infos = {i.filename: i for i in z.infolist()}
    return raw, infos


def _central_offset(raw, name):
    """Where `name`'s central directory entry starts."""
    pos = raw.find(b"PK\x01\x02")
    while pos >= 0:
        name_len = struct.unpack_from("<H", raw, pos + 28)[0]
        if raw[pos + 46:pos + 46 + name_len] == name.encode():
            return pos
        pos = raw.find(b"PK\x01\x02", pos + 4)
    raise AssertionError(name)


def hostile_zip() -> bytes:
    link = zipfile.ZipInfo("link-out", (2026, 11, 1, 10, 0, 0))
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    raw, infos = _zip([("good.txt", GOOD, zipfile.ZIP_DEFLATED),
                       ("bomb.txt", bytes(64 << 20), zipfile.ZIP_DEFLATED),
                       ("crc-lies.txt", b"honest bytes\n" * 50, zipfile.ZIP_STORED),
                       ("../../escape.txt", b"climbed\n", zipfile.ZIP_STORED),
                       (link, b"../../../../etc/passwd", zipfile.ZIP_STORED),
                       ("after.txt", b"still fine\n", zipfile.ZIP_STORED)])
    # bomb.txt says it is 1000 bytes (local header and central directory alike)
    local = infos["bomb.txt"].header_offset
    struct.pack_into("<I", raw, local + 22, 1000)
    struct.pack_into("<I", raw, _central_offset(raw, "bomb.txt") + 24, 1000)
    # crc-lies.txt's CRC-32 is wrong in both places
    local = infos["crc-lies.txt"].header_offset
    struct.pack_into("<I", raw, local + 14, 0xDEADBEEF)
    struct.pack_into("<I", raw, _central_offset(raw, "crc-lies.txt") + 16, 0xDEADBEEF)
    return bytes(raw)


def test_hostile_names_and_zips_fail_alone(fake, mount):
    repo = fake.github.add_repo("acme", "api")
    run = repo.add_run()
    run.add_artifact("hostile", data=hostile_zip())
    run.add_artifact("fine", {"ok.txt": b"ok\n"})
    for name in ("../evil", "a/b", "x" * 300, ".", "nul\x00name"):
        run.add_artifact(name, {"x.txt": b"x"})
    m = mount(env={"GH_TOKEN": TOKEN})
    m.expect_errors = True
    run_dir = m.path / f"actions/acme/api/{run.id}"
    assert sorted(os.listdir(run_dir)) == ["fine", "hostile"]
    hostile = run_dir / "hostile"
    assert sorted(os.listdir(hostile)) == ["after.txt", "bomb.txt", "crc-lies.txt", "good.txt", "link-out"]
    assert (hostile / "good.txt").read_bytes() == GOOD
    assert os.stat(hostile / "bomb.txt").st_size == 1000
    expect_errno(errno.EIO, (hostile / "bomb.txt").read_bytes)
    expect_errno(errno.EIO, (hostile / "crc-lies.txt").read_bytes)
    expect_errno(errno.EIO, (hostile / "crc-lies.txt").read_bytes)  # and stays so
    link = hostile / "link-out"
    assert not link.is_symlink() and link.read_bytes() == b"../../../../etc/passwd"
    assert (hostile / "after.txt").read_bytes() == b"still fine\n"
    assert (run_dir / "fine/ok.txt").read_bytes() == b"ok\n"
    log = m.log_text()
    assert "bomb.txt" in log and "crc-lies.txt" in log and "escape.txt" in log
    assert "nul\\x00name" in log and "\x00" not in log, "names from the network are escaped in the log"
    assert os.listdir(m.path / "actions") == []  # the mount still answers
