"""Tier 2: GitHub Actions in-process (tests/inproc.py) over the fake API and its blob host:
the actions/ tree, `latest` links, zip members as files with exact bytes, what needs a token,
expiry, rate limits, conditional requests, and where the token goes."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import zipfile

import pyfuse3
import trio

from conftest import TOKEN, blob
from inproc import errno_of

REPO = "actions/acme/api"


def gh_repo(fake, owner="acme", name="api", private=False):
    return fake.github.add_repo(owner, name, private)


async def gh_fs(inproc, fake, *, token=TOKEN, **flags):
    env = {"GH_TOKEN": token} if token else {}
    return await inproc(github_api_url=fake.api_url, env=env, **flags)


def blob_requests(fake):
    return [r for r in fake.requests if r.server == "blob"]


def zip_resolutions(fake):
    return [r for r in fake.requests if r.server == "api" and r.path.endswith("/zip")]


async def test_tree_runs_latest_branch_and_workflow_links(fake, inproc):
    repo = gh_repo(fake)
    ci, nightly = repo.add_workflow("ci.yml"), repo.add_workflow("nightly.yml")
    good = repo.add_run(ci, branch="main")
    good.add_artifact("report", {"a.txt": b"a\n"})
    feature = repo.add_run(ci, branch="feature/x")
    feature.add_artifact("report", {"a.txt": b"f\n"})
    night = repo.add_run(nightly, branch="main")
    night.add_artifact("dist", {"b.bin": b"b"})
    # newer than all of those, but none may be `latest`
    repo.add_run(ci, branch="main", conclusion="failure").add_artifact("report", {"a.txt": b"x"})
    repo.add_run(ci, branch="main", conclusion=None).add_artifact("report", {"a.txt": b"y"})
    repo.add_run(ci, branch="main").add_artifact("report", {"a.txt": b"z"}, expired=True)
    fs = await gh_fs(inproc, fake)

    assert await fs.listdir("actions") == []  # owners cannot be enumerated
    names = await fs.listdir(REPO)
    assert {str(r) for r in repo.runs} | {"latest", "branch", "workflow"} == set(names)
    assert await fs.readlink(f"{REPO}/latest") == str(night.id)
    assert await fs.listdir(f"{REPO}/branch") == ["feature%2Fx", "main"]
    assert await fs.readlink(f"{REPO}/branch/feature%2Fx/latest") == f"../../{feature.id}"
    assert await fs.readlink(f"{REPO}/branch/main/latest") == f"../../{night.id}"
    assert await fs.readlink(f"{REPO}/workflow/ci.yml/latest") == f"../../{feature.id}"
    assert await fs.read_file(f"{REPO}/workflow/ci.yml/latest/report/a.txt") == b"f\n"
    assert await fs.read_file(f"{REPO}/latest/dist/b.bin") == b"b"
    run_info = json.loads(await fs.getxattr(f"{REPO}/{good.id}", "user.ciartfs.run"))
    assert run_info["branch"] == "main" and run_info["conclusion"] == "success" and run_info["sha"] == good.head_sha


async def test_unknown_names_are_enoent(fake, inproc, caplog):
    repo = gh_repo(fake)
    run = repo.add_run()
    run.add_artifact("report", {"dir/a.txt": b"a"})
    gh_repo(fake, "acme", "secret", private=True).add_run().add_artifact("x", {"x": b"x"})
    fs = await gh_fs(inproc, fake)
    for path in ("actions/nobody/repo", "actions/acme/nope", f"{REPO}/999999", f"{REPO}/not-a-run",
                 f"{REPO}/{run.id}/nothing", f"{REPO}/{run.id}/report/dir/b.txt", f"{REPO}/branch/none/latest",
                 f"{REPO}/workflow/none.yml"):
        assert await errno_of(fs.stat(path)) == errno.ENOENT, path
    assert await fs.listdir("actions/acme/secret/latest") == ["x"]  # private: visible with the token
    anonymous = await gh_fs(inproc, fake, token=None)
    assert await errno_of(anonymous.stat("actions/acme/secret")) == errno.ENOENT
    assert "GitHub answers 404 for private repositories" in caplog.text


async def test_members_are_files_with_exact_bytes_and_sizes_from_the_index(fake, inproc):
    members = {"index.html": b"<link rel=stylesheet href=style.css>\n" * 50, "style.css": b"body{}\n",
               "deep/dir/data.bin": blob(1, 3 << 20), "empty.txt": b"", "unicod\u00e9/na\u00efve.txt": b"\xe2\x9c\x93\n"}
    run = gh_repo(fake).add_run()
    run.add_artifact("deflated", members)
    run.add_artifact("stored", members, compression=zipfile.ZIP_STORED)
    run.add_artifact("bz", {"x.txt": b"bz2 " * 1000}, compression=zipfile.ZIP_BZIP2)
    run.add_artifact("notes.txt", data=b"one file, not zipped\n", archive=False)
    fs = await gh_fs(inproc, fake)
    base = f"{REPO}/{run.id}"
    assert await fs.listdir(base) == ["bz", "deflated", "notes.txt", "stored"]
    listed_blob_requests = len(blob_requests(fake))
    for name in ("deflated", "stored"):
        assert await fs.listdir(f"{base}/{name}") == ["deep", "empty.txt", "index.html", "style.css", "unicod\u00e9"]
        for path, data in members.items():
            assert (await fs.stat(f"{base}/{name}/{path}")).size == len(data)
    assert len(blob_requests(fake)) == listed_blob_requests, "sizes come from the central directory"
    for name in ("deflated", "stored"):
        for path, data in members.items():
            got = await fs.read_file(f"{base}/{name}/{path}")
            assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest(), (name, path)
    assert await fs.read_file(f"{base}/bz/x.txt") == b"bz2 " * 1000
    assert await fs.read_file(f"{base}/notes.txt") == b"one file, not zipped\n"
    fh = await fs.open(f"{base}/deflated/deep/dir/data.bin")
    assert await fs.read(fh, 2_000_000, 4096) == members["deep/dir/data.bin"][2_000_000:2_004_096]
    source = json.loads(await fs.getxattr(f"{base}/stored/index.html", "user.ciartfs.source"))
    assert source["run"] == run.id and source["name"] == "stored" and source["digest"].startswith("sha256:")
    assert json.loads(await fs.getxattr(f"{base}/stored/index.html", "user.ciartfs.zip"))["member"] == "index.html"
    names = await fs.listxattr(f"{base}/stored/index.html")
    assert len(names) == len(set(names)), names


async def test_the_token_goes_to_the_api_only_and_one_resolution_serves_every_member(fake, inproc):
    run = gh_repo(fake).add_run()
    members = {f"f{i:02d}.txt": f"member {i}\n".encode() * 100 for i in range(40)}
    art = run.add_artifact("many", members)
    fs = await gh_fs(inproc, fake)
    for name, data in members.items():
        assert await fs.read_file(f"{REPO}/{run.id}/many/{name}") == data
    assert blob_requests(fake) and all("authorization" not in {k.lower() for k in r.headers} for r in blob_requests(fake))
    assert all(r.status in (200, 206) for r in blob_requests(fake))
    api = [r for r in fake.requests if r.server == "api"]
    assert api and all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in api)
    assert all(r.headers.get("x-github-api-version") == "2022-11-28" for r in api)
    assert len([r for r in zip_resolutions(fake) if f"/artifacts/{art.id}/" in r.path]) == 1


async def test_an_expired_signed_url_is_resolved_again(fake, inproc):
    fake.github.url_ttl = 1.0
    run = gh_repo(fake).add_run()
    members = {"a.bin": blob(2, 24 << 20), "b.bin": blob(3, 24 << 20)}
    run.add_artifact("pair", members, compression=zipfile.ZIP_STORED)
    fs = await gh_fs(inproc, fake)
    fh = await fs.open(f"{REPO}/{run.id}/pair/a.bin")
    assert await fs.read(fh, 4096, 4096) == members["a.bin"][4096:8192]
    await trio.sleep(2.5)  # the fake signs with the wall clock, its expiry rounded up to a second
    fh = await fs.open(f"{REPO}/{run.id}/pair/b.bin")
    assert await fs.read(fh, 20 << 20, 4096) == members["b.bin"][20 << 20:(20 << 20) + 4096]
    assert len(zip_resolutions(fake)) == 2
    assert any(r.status == 403 for r in blob_requests(fake)), "the stale URL was refused, then replaced"
    # The blob host ignores suffix ranges (as Azure does): its whole-blob answer to the tail
    # probe was closed unread (what the sockets' buffers took is counted sent), and the tail
    # asked for by offset.
    assert sum(r.bytes_sent for r in blob_requests(fake)) < 16 << 20


async def test_without_a_token_runs_list_and_artifacts_say_a_token_is_needed(fake, inproc, caplog):
    run = gh_repo(fake).add_run()
    run.add_artifact("report", {"a.txt": b"a"})
    fs = await gh_fs(inproc, fake, token=None)
    assert str(run.id) in await fs.listdir(REPO)
    assert await fs.listdir(f"{REPO}/{run.id}") == ["report"]
    assert await errno_of(fs.listdir(f"{REPO}/{run.id}/report")) == errno.EACCES
    assert "GH_TOKEN" in caplog.text
    assert not blob_requests(fake)
    assert all("authorization" not in {k.lower() for k in r.headers} for r in fake.requests)


async def test_expired_artifacts_are_hidden_and_their_lookup_says_so(fake, inproc, caplog):
    run = gh_repo(fake).add_run()
    run.add_artifact("logs", {"a.txt": b"a"}, expired=True)
    run.add_artifact("report", {"b.txt": b"b"})
    fs = await gh_fs(inproc, fake)
    assert await fs.listdir(f"{REPO}/{run.id}") == ["report"]
    with caplog.at_level(logging.WARNING, logger="ciartfs"):
        assert await errno_of(fs.stat(f"{REPO}/{run.id}/logs")) == errno.ENOENT
    assert "logs: the artifact has expired" in caplog.text


async def test_one_bad_artifact_does_not_take_its_run_down(fake, inproc, caplog):
    run = gh_repo(fake).add_run()
    good = {"ok.txt": b"fine\n"}
    run.add_artifact("good", good)
    bad = bytearray(zipfile_bytes({"x.txt": b"x" * 1000}))
    bad[-22:-18] = b"XXXX"  # the end record's signature: not a zip any more, then a truncated one
    run.add_artifact("broken", data=bytes(bad[:-10]))
    fs = await gh_fs(inproc, fake)
    fs.expect_errors = True
    names = await fs.listdir(f"{REPO}/{run.id}")
    assert "good" in names and "broken" in names
    assert await fs.read_file(f"{REPO}/{run.id}/good/ok.txt") == good["ok.txt"]


def zipfile_bytes(members):
    from ciartfs.fakeserver.github import zip_bytes

    return zip_bytes(members)


async def test_rate_limits_wait_within_the_timeout_or_fail_with_eio_saying_when(fake, inproc, caplog):
    repo = gh_repo(fake)
    run = repo.add_run()
    run.add_artifact("r", {"a.txt": b"a"})
    fake.github.retry_after = 1
    fake.faults.github_rate_limits.append("secondary-429")
    fs = await gh_fs(inproc, fake)
    assert str(run.id) in await fs.listdir(REPO)  # waited Retry-After, then answered
    fake.github.retry_after = 3600
    fake.faults.github_rate_limits.append("primary")
    fs2 = await gh_fs(inproc, fake, cache_dir=fs.mount.settings.cache_dir.parent / "other")
    fs2.expect_errors = True
    with trio.fail_after(10):
        assert await errno_of(fs2.listdir(REPO)) == errno.EIO
    assert "rate limit" in caplog.text and "resets at" in caplog.text
    status = fs2.mount.status(0)["settings"]
    assert status["github_rate_remaining"] == 0


async def test_listings_that_can_change_are_asked_again_conditionally(fake, inproc, clock):
    repo = gh_repo(fake)
    run = repo.add_run(conclusion=None)
    run.add_artifact("r", {"a.txt": b"a"})
    fs = await gh_fs(inproc, fake, latest_ttl=10)
    await fs.listdir(REPO)
    await fs.listdir(f"{REPO}/{run.id}")
    fake.clear_requests()
    fs.advance(11)
    await fs.listdir(REPO)
    await fs.listdir(f"{REPO}/{run.id}")
    api = [r for r in fake.requests if r.server == "api"]
    assert api and all(r.headers.get("if-none-match") for r in api)
    assert {r.status for r in api} == {304}
    assert fs.mount.docs.not_modified == len(api)


async def test_a_completed_runs_artifacts_are_kept(fake, inproc, clock):
    run = gh_repo(fake).add_run()
    run.add_artifact("r", {"a.txt": b"a"})
    fs = await gh_fs(inproc, fake, latest_ttl=10)
    assert await fs.read_file(f"{REPO}/{run.id}/r/a.txt") == b"a"
    fake.clear_requests()
    fs.advance(3600)
    await fs.forget_everything()
    assert await fs.read_file(f"{REPO}/{run.id}/r/a.txt") == b"a"
    assert not [r for r in fake.requests if f"/runs/{run.id}/artifacts" in r.path or r.server == "blob"]


async def test_a_zip_whose_bytes_do_not_match_its_digest_is_eio(fake, inproc, caplog):
    run = gh_repo(fake).add_run()
    members = {"a.txt": b"a" * 5000, "b.txt": b"b" * 5000}
    art = run.add_artifact("small", members)
    big = {f"m{i}.bin": blob(10 + i, 200_000) for i in range(4)}
    large = run.add_artifact("large", big, compression=zipfile.ZIP_STORED)
    art._digest = large._digest = "sha256:" + "0" * 64  # what storage holds is not what was uploaded
    fs = await gh_fs(inproc, fake)
    fs.expect_errors = True
    base = f"{REPO}/{run.id}"
    # one block: checked before any byte is served
    assert await errno_of(fs.read_file(f"{base}/small/a.txt")) == errno.EIO
    # larger: the read that completes the blob fails; the members read before it were served
    results = []
    for name in sorted(big):
        try:
            results.append(await fs.read_file(f"{base}/large/{name}") == big[name])
        except pyfuse3.FUSEError as e:  # the read that completed the blob
            results.append(errno.errorcode[e.errno])
    assert "EIO" in results and False not in results, results
    assert "content hash mismatch" in caplog.text


async def test_zip64_artifacts_at_real_scale(fake, inproc):
    """70,000 members (zip64 by count) and a member over 4 GiB (zip64 by size), made on the fly:
    listed from the central directory alone, read by range."""
    from ciartfs.fakeserver.generated_zip import GeneratedZip

    run = gh_repo(fake).add_run()
    many, huge = GeneratedZip.many_members(), GeneratedZip.huge_member()
    run.add_artifact("many", content=many, digest_known=False)
    run.add_artifact("huge", content=huge, digest_known=False)
    fs = await gh_fs(inproc, fake)
    base = f"{REPO}/{run.id}"
    assert await fs.listdir(base) == ["huge", "many"]
    listed = len(blob_requests(fake))
    dirs = await fs.listdir(f"{base}/many")
    assert len(dirs) == 70 and dirs[0] == "d000" and dirs[-1] == "d069"
    names = await fs.listdir(f"{base}/many/d069")
    assert len(names) == 1000 and names[-1] == "f069999.bin"
    assert (await fs.stat(f"{base}/many/d069/f069999.bin")).size == 64
    assert len(blob_requests(fake)) == listed, "listing 70,000 members costs no request beyond the index"
    assert await fs.read_file(f"{base}/many/d012/f012345.bin") == b"".join(many.member_read(12345))

    size = huge.members[1].size
    assert (await fs.stat(f"{base}/huge/huge/zeros.bin")).size == size > 4 << 30
    fh = await fs.open(f"{base}/huge/huge/zeros.bin")
    assert await fs.read(fh, size - 5000, 8192) == bytes(5000)
    assert await fs.read_file(f"{base}/huge/after.txt") == b"".join(huge.member_read(2))
    assert sum(r.bytes_sent for r in blob_requests(fake)) < 32 << 20, "read by range, never whole"


async def test_every_listing_follows_link_pages_and_older_runs_look_up(fake, inproc, monkeypatch):
    from ciartfs.providers.github import api

    monkeypatch.setattr(api, "PER_PAGE", 2)  # (GitHub's 100 needs 101 artifacts to page)
    repo = gh_repo(fake)
    first = repo.add_run(branch="main")
    first.add_artifact("old", {"o.txt": b"o"})
    for _ in range(12):  # newer, all failed: `latest` asks GitHub for successful runs only
        repo.add_run(branch="main", conclusion="failure")
    run = repo.add_run(conclusion="failure")
    for i in range(5):
        run.add_artifact(f"a{i}", {"x.txt": b"%d" % i})
    fs = await gh_fs(inproc, fake, recent_builds=3)
    assert await fs.listdir(f"{REPO}/{run.id}") == [f"a{i}" for i in range(5)]
    pages = [r.path for r in fake.requests if r.server == "api" and f"/runs/{run.id}/artifacts" in r.path]
    assert len(pages) == 3 and all(f"/repositories/{repo.id}/" in p for p in pages[1:]), pages
    assert await fs.read_file(f"{REPO}/{run.id}/a4/x.txt") == b"4"
    listed = await fs.listdir(REPO)
    assert len([n for n in listed if n.isdigit()]) == 3 and str(first.id) not in listed
    assert await fs.readlink(f"{REPO}/latest") == str(first.id)  # past 12 failed runs
    assert await fs.read_file(f"{REPO}/{first.id}/old/o.txt") == b"o"  # an older run: looked up by id


async def test_artifacts_and_members_carry_their_xattrs(fake, inproc):
    run = gh_repo(fake).add_run(branch="main")
    art = run.add_artifact("report", {"d/a.txt": b"a"})
    plain = run.add_artifact("notes.txt", data=b"plain\n", archive=False)
    fs = await gh_fs(inproc, fake)
    base = f"{REPO}/{run.id}"
    for path, artifact in ((f"{base}/report", art), (f"{base}/report/d/a.txt", art), (f"{base}/notes.txt", plain)):
        source = json.loads(await fs.getxattr(path, "user.ciartfs.source"))
        assert (source["run"], source["artifact_id"], source["name"], source["size"], source["digest"]) == (
            run.id, artifact.id, artifact.name, artifact.size, artifact.digest), path
        assert (await fs.getxattr(path, "user.ciartfs.url")).decode() == (
            f"{fake.api_url}/repos/acme/api/actions/artifacts/{artifact.id}/zip"), path
        run_info = json.loads(await fs.getxattr(path, "user.ciartfs.run"))
        assert (run_info["id"], run_info["branch"], run_info["sha"], run_info["conclusion"]) == (
            run.id, "main", run.head_sha, "success"), path
        assert run_info["workflow"] == ".github/workflows/ci.yml" and run_info["event"] and run_info["created_at"]


async def test_branch_names_with_a_slash_or_a_percent_sign(fake, inproc):
    repo = gh_repo(fake)
    run = repo.add_run(branch="fix/100%")
    run.add_artifact("r", {"a.txt": b"pct"})
    repo.add_run(branch="fix").add_artifact("r", {"a.txt": b"plain"})
    fs = await gh_fs(inproc, fake)
    assert await fs.listdir(f"{REPO}/branch") == ["fix", "fix%2F100%25"]
    assert await fs.readlink(f"{REPO}/branch/fix%2F100%25/latest") == f"../../{run.id}"
    assert await fs.read_file(f"{REPO}/branch/fix%2F100%25/latest/r/a.txt") == b"pct"
    for wrong in ("fix%2F100%", "fix/100%25", "fix%2f100%25"):  # not the encoding of any branch
        assert await errno_of(fs.stat(f"{REPO}/branch/{wrong}")) == errno.ENOENT, wrong
