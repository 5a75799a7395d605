"""Tier 2: CircleCI's HTML artifacts in-process (tests/inproc.py), served straight from the
circle-artifacts host (no 302 to storage), with and without Range support there. What needs
the kernel's page cache or the daemon's memory is in the real-mount file."""

from __future__ import annotations

import hashlib

from conftest import TOKEN, blob
from datasets import BIG, site
from datasets import html_gets as gets


async def test_listing_sizes_of_reports_ignoring_range_downloads_each_at_most_once(fake, inproc):
    files = {f"reports/r{i}.html": blob(10 + i, (3 << 20) + i) for i in range(8)}
    site(fake, files)
    fake.faults.direct_ignore_range = True
    fs = await inproc(token=TOKEN)
    listed = await fs.ls_l("github/acme/site/1/0/reports")
    for path, data in files.items():
        assert listed[path.rsplit("/", 1)[1]].size == len(data), path
        assert len(gets(fake, path)) == 1, f"{path}: listing its size took more than one GET"
    for path, data in files.items():
        assert await fs.read_file(f"github/acme/site/1/0/{path}") == data
    for path in files:  # the probe's body streamed on, or a first read fetched it: never more
        assert len(gets(fake, path)) <= 2, path
    before = len(fake.requests)
    for path, data in files.items():
        assert await fs.read_file(f"github/acme/site/1/0/{path}") == data
    assert len(fake.requests) == before, "a second read made requests"


async def test_a_large_report_on_a_host_with_range_support_is_read_by_range(fake, inproc):
    data = blob(2, BIG)
    site(fake, {"report.html": data})
    fs = await inproc(token=TOKEN)
    got = await fs.read_file("github/acme/site/1/0/report.html")
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    answers = gets(fake, "/report.html")
    assert len(answers) > 1 and all(r.status == 206 and r.headers.get("range") for r in answers)
    assert not [r for r in fake.requests if r.server == "storage"], "HTML went through the 302"


async def test_a_private_projects_report_is_served_directly_at_its_api_route(fake, inproc):
    data = blob(3, 4 << 20)
    project = fake.add_project("github", "acme", "secret", private=True)
    project.add_build(1).add_artifact("report.html", data)
    fake.faults.direct_ignore_range = True
    fs = await inproc(token=TOKEN)
    assert await fs.read_file("github/acme/secret/1/0/report.html") == data
    fetched = [r for r in fake.requests if r.server == "api" and r.path.endswith("/report.html")]
    assert len(fetched) == 1 and fetched[0].status == 200 and fetched[0].headers.get("circle-token") == TOKEN
    assert not [r for r in fake.requests if r.server in ("storage", "html")]
