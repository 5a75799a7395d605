"""Tier 3: CircleCI's HTML artifacts, served straight from the circle-artifacts host (no 302 to
storage), with and without Range support there, through a real mount: what needs the kernel's
page cache, a second mount, or the daemon's own memory. The rest is in-process (tier 2)."""

from __future__ import annotations

import hashlib
import os
import subprocess

from conftest import TOKEN, blob
from datasets import BIG, site
from datasets import html_gets as gets


def sha256sum(path) -> str:
    out = subprocess.run(["sha256sum", str(path)], capture_output=True, check=True, timeout=60).stdout
    return out.split()[0].decode()


def test_html_is_listed_on_the_circle_artifacts_host_and_served_without_a_redirect(fake):
    import httpx

    project, build = site(fake, {"report.html": b"<html>hi</html>", "data.bin": b"x"})
    secret = fake.add_project("github", "acme", "secret", private=True)
    page = secret.add_build(1).add_artifact("index.html", b"<html>private</html>")
    html = fake.artifact_url(project, build, build.artifacts[0])
    assert html.startswith(fake.html_url + "/")
    assert fake.artifact_url(project, build, build.artifacts[1]).startswith(fake.api_url + "/artifacts/")
    answer = httpx.get(html)
    assert answer.status_code == 200 and answer.content == b"<html>hi</html>"
    assert httpx.get(html, headers={"Range": "bytes=1-4"}).content == b"html"
    fake.faults.direct_ignore_range = True
    answer = httpx.get(html, headers={"Range": "bytes=1-4"})
    assert answer.status_code == 200 and answer.content == b"<html>hi</html>"
    # a private project's HTML: at its API-host route (which takes the token), directly
    private_url = fake.artifact_url(secret, secret.builds[1], page)
    assert private_url.startswith(fake.api_url + "/artifacts/")
    assert httpx.get(private_url).status_code == 404
    answer = httpx.get(private_url, headers={"Circle-Token": TOKEN})
    assert answer.status_code == 200 and answer.content == b"<html>private</html>"
    assert not [r for r in fake.requests if r.server == "storage"]


def test_a_large_report_on_a_host_ignoring_range_is_fetched_once(fake, mount):
    data = blob(1, BIG)
    site(fake, {"report.html": data})
    fake.faults.direct_ignore_range = True
    cache = mount.tmp_path / "cache"
    m = mount(token=TOKEN, cache_dir=cache)
    f = m.path / "github/acme/site/1/0/report.html"
    assert sha256sum(f) == hashlib.sha256(data).hexdigest()
    assert len(gets(fake, "/report.html")) == 1, "one GET of the whole body must serve every block"
    assert all(r.status == 200 for r in gets(fake, "/report.html"))
    assert not any("circle-token" in r.headers for r in fake.requests if r.server == "html"), \
        "the token went to a host that is not a documented circle-artifacts one"
    with open(f, "rb") as fh:  # again, past the kernel's page cache
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    assert sha256sum(f) == hashlib.sha256(data).hexdigest()
    m.stop()
    m2 = mount(token=TOKEN, cache_dir=cache)  # a new mount: from the disk cache alone
    assert sha256sum(m2.path / "github/acme/site/1/0/report.html") == hashlib.sha256(data).hexdigest()
    assert len(gets(fake, "/report.html")) == 1


def test_a_report_ignoring_range_streams_through_the_disk_cache_not_memory(fake, mount):
    data = blob(4, 64 << 20)
    site(fake, {"report.html": data})
    fake.faults.direct_ignore_range = True
    m = mount("--memory-cache", "8M", "--max-inflight-memory", "16M", token=TOKEN)
    path = m.path / "github/acme/site/1/0/report.html"
    before = vm_hwm(m.proc.pid)
    assert os.stat(path).st_size == len(data)
    assert sha256sum(path) == hashlib.sha256(data).hexdigest()
    growth = vm_hwm(m.proc.pid) - before
    assert len(gets(fake, "/report.html")) == 1
    # Measured 19-23 MiB (for a 96 MiB body too): the 8 MiB memory cache, a batch on its way
    # to the disk, chunks, allocator slack. Half the 64 MiB body that one GET brought.
    assert growth < 32 << 20, f"peak RSS grew by {growth >> 20} MiB streaming a 64 MiB body"


def vm_hwm(pid: int) -> int:
    """The process's peak resident memory in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) << 10
    raise AssertionError("no VmHWM")
