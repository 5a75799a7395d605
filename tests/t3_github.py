"""Tier 3: GitHub Actions artifacts through a real mount, driven by ordinary tools: zip
members as files (ls -R, find, grep -r, sha256sum, mmap), an `archive: false` artifact as a
file, and what a missing token or a missing name looks like to them."""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import subprocess
import zipfile

import pytest

from conftest import TOKEN, blob, expect_errno


def run(*cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


LOG = b"".join(b"line %06d: test_%d %s\n" % (i, i % 97, b"FAILED" if i % 5000 == 4999 else b"passed")
               for i in range(60_000))
MEMBERS = {
    "index.html": b"<html><link rel=stylesheet href=style.css><body>report</body></html>\n",
    "style.css": b"body { font-family: sans-serif }\n",
    "logs/": b"",
    "logs/pytest.log": LOG,
    "logs/deep/nested/core.bin": blob(7, 5 << 20),
    "caf\u00e9/\u65e5\u672c.txt": b"unicode names\n",
    "empty.txt": b"",
}


@pytest.fixture
def actions(fake):
    repo = fake.github.add_repo("acme", "api")
    run_ = repo.add_run("ci.yml", branch="main")
    run_.add_artifact("report", MEMBERS)
    run_.add_artifact("binaries", {"app.bin": blob(8, 3 << 20), "README": b"stored, not deflated\n"},
                      compression=zipfile.ZIP_STORED)
    run_.add_artifact("summary.md", data=b"# all green\n", archive=False)
    return run_


def test_members_through_ordinary_tools(actions, mount):
    m = mount(env={"GH_TOKEN": TOKEN})
    root = m.path / "actions/acme/api"
    assert os.listdir(m.path / "actions") == []
    assert os.readlink(root / "latest") == str(actions.id)
    run_dir = root / "latest"
    assert sorted(os.listdir(run_dir)) == ["binaries", "report", "summary.md"]

    listing = run("ls", "-lR", f"{run_dir}/")
    assert listing.returncode == 0, listing.stderr
    for name in ("pytest.log", "core.bin", "\u65e5\u672c.txt", "app.bin", "summary.md"):
        assert name in listing.stdout
    found = run("find", f"{run_dir}/", "-type", "f", "-name", "*.log")
    assert found.stdout.split() == [str(run_dir / "report/logs/pytest.log")]

    expected = {f"report/{p}": d for p, d in MEMBERS.items() if not p.endswith("/")}
    expected |= {"binaries/app.bin": blob(8, 3 << 20), "binaries/README": b"stored, not deflated\n",
                 "summary.md": b"# all green\n"}
    for rel, data in expected.items():
        assert os.stat(run_dir / rel).st_size == len(data), rel
    sums = run("sha256sum", *sorted(expected), cwd=run_dir)
    assert sums.returncode == 0, sums.stderr
    assert sums.stdout == "".join(f"{hashlib.sha256(expected[r]).hexdigest()}  {r}\n" for r in sorted(expected))

    grep = run("grep", "-rl", "FAILED", f"{run_dir}/")
    assert grep.stdout.split() == [str(run_dir / "report/logs/pytest.log")]
    count = run("grep", "-rc", "FAILED", str(run_dir / "report/logs/pytest.log"))
    assert count.stdout.strip() == str(LOG.count(b"FAILED"))

    core = MEMBERS["logs/deep/nested/core.bin"]
    with open(run_dir / "report/logs/deep/nested/core.bin", "rb") as f, \
            mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mapped:
        assert mapped[(4 << 20) + 17:(4 << 20) + 4113] == core[(4 << 20) + 17:(4 << 20) + 4113]
        assert mapped[:4096] == core[:4096] and mapped[-100:] == core[-100:]

    expect_errno(errno.ENOENT, os.stat, run_dir / "report/no-such-member")
    expect_errno(errno.ENOENT, os.stat, root / "123456789")
    expect_errno(errno.EROFS, open, run_dir / "report/new.txt", "w")
    assert not [r for r in m_requests(m, actions) if "authorization" in {k.lower() for k in r.headers}]


def m_requests(m, actions):
    return [r for r in actions.repo.github.fake.requests if r.server == "blob"]


def test_without_a_token_members_are_eacces_with_a_log_line(actions, mount):
    m = mount()
    run_dir = m.path / f"actions/acme/api/{actions.id}"
    assert sorted(os.listdir(run_dir)) == ["binaries", "report", "summary.md"]
    cat = run("cat", str(run_dir / "report/index.html"))
    assert cat.returncode != 0 and "Permission denied" in cat.stderr
    assert "report: downloading GitHub Actions artifacts needs a token" in m.log_text()
    # an `archive: false` artifact cannot be told from a zip without its blob (nothing in the
    # API's artifact object says which): a directory too, and entering it says why
    assert os.path.isdir(run_dir / "summary.md")
    expect_errno(errno.EACCES, os.listdir, run_dir / "summary.md")
    listing = run("ls", str(run_dir / "summary.md"))
    assert listing.returncode != 0 and "Permission denied" in listing.stderr
    assert "summary.md: downloading GitHub Actions artifacts needs a token" in m.log_text()
    assert "GH_TOKEN" in m.log_text()
