"""Tier 3 (real mounts): names cost only the API listing (issue 17). `ls` and `find -name` of a
directory make no storage request; files shown before their size is known (0 bytes, attributes
that expire at once) read back exact, through the kernel's page cache, and `ls -l` shows their
true sizes."""

from __future__ import annotations

import hashlib
import os
import subprocess

from conftest import blob

SIZES = [100 + 37 * i for i in range(300)] + [0, 16383, 16384, 16385, 131072, 131073, 700_000, 3 << 20]
DIR = "github/acme/flat/1/0/many"


def flat(fake) -> dict[str, bytes]:
    build = fake.add_project("github", "acme", "flat").add_build(
        build_num=1, branch="main", status="success", lifecycle="finished", stop_time="2026-11-01T10:00:00Z")
    files = {f"f{i:04d}.bin": blob(i, size) for i, size in enumerate(SIZES)}
    for name, data in files.items():
        build.add_artifact(f"many/{name}", data)
    return files


def artifact_requests(fake) -> list:
    return [r for r in fake.requests if r.server != "api" or r.path.startswith("/artifacts/")]


def run(*cmd: str, **kw) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True, **kw)
    return out.stdout


def digests(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def sha256sum(directory, names) -> dict[str, str]:
    out = run("sha256sum", *names, cwd=directory)
    return {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in out.splitlines()}


def test_ls_and_find_make_no_storage_request_and_files_read_back_exact(fake, mount):
    files = flat(fake)
    m = mount()
    d = m.path / DIR
    run("ls", str(d.parent))
    fake.clear_requests()
    assert run("ls", str(d)).split() == sorted(files)
    assert sorted(run("find", str(d), "-name", "*.bin", "-printf", "%f\n").split()) == sorted(files)
    assert sorted(run("find", str(d), "-type", "f", "-printf", "%f\n").split()) == sorted(files)
    assert artifact_requests(fake) == [], "names cost only the API listing"
    # every inode the kernel now holds was shown at 0 bytes: reads see the true size and bytes
    assert sha256sum(d, sorted(files)) == digests(files)
    assert {n: os.stat(d / n).st_size for n in files} == {n: len(b) for n, b in files.items()}
    # again, through the page cache (keep_cache) this time
    assert sha256sum(d, sorted(files)) == digests(files)


def test_ls_l_shows_exact_sizes_and_reads_stay_exact(fake, mount):
    files = flat(fake)
    m = mount()
    d = m.path / DIR
    run("ls", str(d))  # shown with sizes unknown first
    out = run("ls", "-ln", str(d))
    sizes = {line.split()[-1]: int(line.split()[4]) for line in out.splitlines()[1:]}
    assert sizes == {n: len(b) for n, b in files.items()}
    assert run("du", "-b", "--apparent-size", "-s", str(d)).split()[0] == str(sum(map(len, files.values())))
    # `ls -l` probes 16 KiB per file, never a whole 128 KiB block
    ranges = [r.headers.get("range") for r in fake.requests if r.server == "storage" and r.method == "GET"]
    assert ranges and set(ranges) == {"bytes=0-16383"}, set(ranges)
    assert sha256sum(d, sorted(files)) == digests(files)
