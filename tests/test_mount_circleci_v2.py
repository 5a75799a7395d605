"""Tier 3: CircleCI API v2 through real mounts: v2-only projects and the workflow view."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from ciartfs.providers.circleci_v2 import unique_names
from conftest import blob


@pytest.fixture
def v2(fake):
    """A v2-only project (circleci/<org>/<project>) and github/acme/api with pipeline 7:
    workflow 'ci' run twice (a rerun) and 'deploy/prod', each with jobs."""
    only = fake.add_project("circleci", "6f0b5b0e-org", "a1b2c3-proj")
    job = only.add_build(build_num=42, subject="build")
    for i in range(5):  # more than one page (the fake pages by 2)
        job.add_artifact(f"out/f{i}.txt", f"file {i}\n".encode())
    job.add_artifact("bin/tool", blob(1, 300_000), node_index=1)

    gh = fake.add_project("github", "acme", "api")
    for num, name in [(10, "build"), (11, "test"), (12, "build"), (13, "test"), (14, "push")]:
        b = gh.add_build(build_num=num, subject=name)
        b.add_artifact("report.txt", f"job {num} ({name})\n".encode())
    b = gh.builds[11]
    b.add_artifact("coverage/index.html", b"<html>cov</html>\n")
    pipeline = fake.v2.add_pipeline(gh, 7)
    pipeline.add_workflow("ci", [10, 11], created_at="2026-11-01T09:50:00.000Z")
    pipeline.add_workflow("ci", [12, 13], created_at="2026-11-01T09:55:00.000Z")  # the rerun
    pipeline.add_workflow("deploy/prod", [14], created_at="2026-11-01T09:58:00.000Z")
    return fake


def test_v2_only_project_jobs(v2, mount):
    m = mount()
    job = m.path / "circleci/6f0b5b0e-org/a1b2c3-proj/42"
    assert sorted(os.listdir(job)) == ["0", "1"]
    assert sorted(os.listdir(job / "0/out")) == [f"f{i}.txt" for i in range(5)]
    for i in range(5):
        assert (job / f"0/out/f{i}.txt").read_bytes() == f"file {i}\n".encode()
    data = v2.projects[("circleci", "6f0b5b0e-org", "a1b2c3-proj")].builds[42].artifacts[-1].data
    assert hashlib.sha256((job / "1/bin/tool").read_bytes()).digest() == hashlib.sha256(data).digest()
    pages = [r for r in v2.requests if r.path.endswith("/42/artifacts")]
    assert len(pages) == 3 and sum("page-token" in r.query for r in pages) == 2
    with pytest.raises(OSError) as info:
        os.listdir(m.path / "circleci/6f0b5b0e-org/a1b2c3-proj/99")
    assert info.value.errno == errno.ENOENT


def test_workflow_view_with_renames(v2, mount):
    m = mount()
    pipe = m.path / "github/acme/api/pipeline/7"
    assert sorted(os.listdir(pipe)) == ["ci", "ci~2", "deploy%2Fprod"]
    assert sorted(os.listdir(pipe / "ci")) == ["build", "test"]
    assert (pipe / "ci/build/0/report.txt").read_bytes() == b"job 10 (build)\n"
    assert (pipe / "ci~2/test/0/report.txt").read_bytes() == b"job 13 (test)\n"
    assert (pipe / "deploy%2Fprod/push/0/report.txt").read_bytes() == b"job 14 (push)\n"
    found = sorted(os.path.relpath(os.path.join(d, f), pipe) for d, _, fs in os.walk(pipe) for f in fs)
    assert len(found) == 6 and "ci/test/0/coverage/index.html" in found
    with pytest.raises(FileNotFoundError):
        os.listdir(m.path / "github/acme/api/pipeline/8")
    # the same job through the v1.1 tree shares the cached blocks
    v2.clear_requests()
    assert (m.path / "github/acme/api/11/0/coverage/index.html").read_bytes() == b"<html>cov</html>\n"
    assert not [r for r in v2.requests if r.server == "storage"]


def test_unique_names_rule():
    items = [("ci", 2), ("ci", 1), ("a/b", 3), ("", 4), ("..", 5), ("x" * 300, 6), ("ci~2", 7)]
    names = dict((item[1], name) for name, item in unique_names(items, lambda i: i[0], lambda i: i[1]))
    assert names[1] == "ci" and names[2] == "ci~2" and names[7] == "ci~2~2"
    assert names[3] == "a%2Fb" and names[4] == "_" and names[5] == "_.."
    assert len(names[6].encode()) <= 255 and names[6].startswith("x" * 200)
    assert unique_names(list(reversed(items)), lambda i: i[0], lambda i: i[1]) == \
        unique_names(items, lambda i: i[0], lambda i: i[1])  # order-independent
