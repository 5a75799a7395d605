"""Tier 2: the filesystem in-process over the fake CircleCI: listings, TTLs, errors, xattrs,
forget. The handlers are called as the kernel calls them (tests/inproc.py), with trio's
MockClock where a TTL is crossed."""

from __future__ import annotations

import errno
import gc
import logging
import os
import stat
import sys

from conftest import TOKEN
from datasets import STOP, STOP_EPOCH, files_of, sample, storage_gets
from inproc import CTX, ReaddirBuffer, errno_of


async def test_listing_modes_sizes_and_times(fake, inproc):
    project = sample(fake)
    fs = await inproc()
    assert await fs.listdir("") == ["actions", "bitbucket", "circleci", "github"]
    assert await fs.listdir("github/acme/api") == ["1", "2", "3", "4", "branch", "latest", "pipeline"]
    assert await fs.readlink("github/acme/api/latest") == "3"  # newest completed, any branch (4 is running)
    assert await fs.listdir("github/acme/api/2") == ["0", "1"]
    assert (await fs.stat("github/acme/api/2")).mtime == STOP_EPOCH
    fake.clear_requests()
    listed = await fs.walk_files("github/acme/api/2")  # readdirplus: attributes with the names
    assert storage_gets(fake) == [], "names cost no storage request"
    expected = files_of(project, 2)
    assert sorted(listed) == sorted(expected)
    for rel, attr in listed.items():  # sizes not known yet: shown as 0, asked for again at each stat
        assert attr.is_file and attr.size == 0 and attr.attr_timeout == 0, rel
    files = await fs.walk_files("github/acme/api/2", long=True)  # `ls -lR`: a getattr of each
    for rel, data in expected.items():
        for attr in (files[rel], await fs.stat(f"github/acme/api/2/{rel}")):
            assert attr.is_file and attr.perms == 0o444, rel
            assert attr.size == len(data), rel
            assert attr.mtime == STOP_EPOCH and attr.uid == os.getuid()
    for d in ("", "github", "github/acme/api", "github/acme/api/2", "github/acme/api/2/0/coverage"):
        attr = await fs.stat(d)
        assert attr.is_dir and attr.perms == 0o555, d
    assert storage_gets(fake), "sizes come from ranged GETs"
    assert not [r for r in fake.requests if r.method == "HEAD"], "never HEAD: presigned URLs refuse it"


# -- TTLs (trio's MockClock: no sleeping) --------------------------------------------------------

async def test_latest_and_branch_links_follow_new_builds_after_the_ttl(fake, inproc, clock):
    project = sample(fake)
    fs = await inproc(latest_ttl=60)
    proj = "github/acme/api"
    assert "5" not in await fs.listdir(proj)
    assert await fs.readlink(f"{proj}/branch/feature%2Fx/latest") == "../../3"
    assert (await fs.read_file(f"{proj}/branch/feature%2Fx/latest/0/logs/build.log")).startswith(b"feature build log")
    assert await fs.readlink(f"{proj}/branch/main/latest") == "../../2"
    assert "feature%2Fx" in await fs.listdir(f"{proj}/branch")
    assert await errno_of(fs.stat(f"{proj}/branch/no-such-branch")) == errno.ENOENT
    # an open file keeps reading the build it opened while `latest` moves on
    held = await fs.open(f"{proj}/latest/0/logs/build.log")
    b5 = project.add_build(build_num=5, branch="main", status="success", lifecycle="finished",
                           stop_time="2026-11-03T10:00:00Z")
    b5.add_artifact("report.txt", b"build five\n")
    fs.advance(59)
    assert await fs.readlink(f"{proj}/latest") == "3", "re-resolved before its TTL"
    assert "5" not in await fs.listdir(proj)
    fs.advance(2)
    assert await fs.readlink(f"{proj}/latest") == "5"
    assert "5" in await fs.listdir(proj)
    assert await fs.read(held, 0, 1000) == b"feature build log\nall tests passed\n"
    await fs.release(held)
    assert await fs.read_file(f"{proj}/latest/0/report.txt") == b"build five\n"
    fs.advance(61)
    assert await fs.readlink(f"{proj}/branch/main/latest") == "../../5"


async def test_latest_reached_by_lookup_alone_is_checked_again_after_the_ttl(fake, inproc, clock):
    """No listing of the project: `latest` was only looked up, and still goes stale."""
    project = sample(fake)
    fs = await inproc(latest_ttl=60)
    assert await fs.readlink("github/acme/api/latest") == "3"
    project.add_build(build_num=5, branch="main", status="success", lifecycle="finished",
                      stop_time="2026-11-03T10:00:00Z")
    fs.advance(61)
    assert await fs.readlink("github/acme/api/latest") == "5"


async def test_running_build_is_refreshed_completed_build_is_not(fake, inproc, clock):
    project = sample(fake)
    fs = await inproc(latest_ttl=60)
    running, done = "github/acme/api/4/0", "github/acme/api/2/0"
    assert await fs.listdir(running) == ["partial.log"]
    await fs.walk_files(done)
    project.builds[4].add_artifact("more.log", b"more\n")
    assert await fs.listdir(running) == ["partial.log"], "listed again within its TTL"
    fs.advance(61)
    assert await fs.listdir(running) == ["more.log", "partial.log"]
    assert await fs.read_file(f"{running}/more.log") == b"more\n"
    for _ in range(3):
        fs.advance(3600)
        await fs.walk_files(done)
        assert await fs.listdir(done) == ["coverage", "dist", "empty.txt", "test-results", "tmp"]
    asked = [r for r in fake.requests if r.path.endswith("/2/artifacts")]
    assert len(asked) == 1, "a completed build's listing is fetched once"


# -- errors ----------------------------------------------------------------------------------------

async def test_unknown_names_are_enoent(fake, inproc):
    sample(fake)
    fs = await inproc()
    for rel in ("github/nobody/nothing", "github/acme/nothing", "github/acme/api/99",
                "github/acme/api/007", "github/acme/api/2/7", "github/acme/api/2/0/nope.txt",
                "gitlab", "github/acme/api/branch/a%2", "github/acme/api/latest/0/nope"):
        assert await errno_of(fs.stat(rel)) == errno.ENOENT, rel


async def test_every_write_path_is_erofs(fake, inproc):
    """The kernel answers most of these itself on an 'ro' mount; the handlers refuse too."""
    sample(fake)
    fs = await inproc()
    attr = await fs.resolve("github/acme/api/2/0/empty.txt")
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_RDONLY | os.O_APPEND):
        assert await errno_of(fs.ops.open(attr.inode, flags, CTX)) == errno.EROFS, flags
    for name in ("setattr", "mknod", "mkdir", "unlink", "rmdir", "symlink", "rename", "link", "create",
                 "write", "setxattr", "removexattr"):
        assert await errno_of(getattr(fs.ops, name)(attr.inode)) == errno.EROFS, name


async def test_flush_is_enosys_so_the_kernel_stops_sending_it(fake, inproc):
    """A read-only mount has nothing to flush: ENOSYS makes the kernel treat FLUSH as done from
    then on, so `close` does not wait for a round trip to the daemon."""
    sample(fake)
    fs = await inproc()
    attr = await fs.resolve("github/acme/api/2/0/empty.txt")
    info = await fs.ops.open(attr.inode, os.O_RDONLY, CTX)
    assert await errno_of(fs.ops.flush(info.fh)) == errno.ENOSYS
    await fs.ops.release(info.fh)


async def test_private_project_token_rules(fake, inproc, caplog, tmp_path):
    """No token: ENOENT (404, as circleci.com hides it); a wrong one: EACCES; the right one
    reads, and goes to the API only: never to storage, the log or a cache file's name."""
    caplog.set_level(logging.DEBUG, logger="ciartfs")
    p = fake.add_project("github", "acme", "secret", private=True)
    b = p.add_build(build_num=1, branch="main", status="success", lifecycle="finished", stop_time="2026-11-01T10:00:00Z")
    b.add_artifact("secret.txt", b"top secret\n")
    anon = await inproc()
    assert await errno_of(anon.readdir("github/acme/secret")) == errno.ENOENT
    bad = await inproc(token="wrong-token")
    bad.expect_errors = True
    assert await errno_of(bad.readdir("github/acme/secret")) == errno.EACCES
    good = await inproc(token=TOKEN, cache_dir=tmp_path / "good-cache")
    fake.clear_requests()
    assert await good.read_file("github/acme/secret/1/0/secret.txt") == b"top secret\n"
    await good.settle()
    api = [r for r in fake.requests if r.server == "api"]
    storage = [r for r in fake.requests if r.server == "storage"]
    assert api and storage
    assert all(r.headers.get("circle-token") == TOKEN for r in api)
    for r in storage:
        assert TOKEN not in repr(r.headers) and TOKEN not in repr(r.query), "token leaked to the storage host"
    assert caplog.text and TOKEN not in caplog.text and "wrong-token" not in caplog.text
    cache_names = [n for _, dirs, files in os.walk(tmp_path / "good-cache") for n in dirs + files]
    assert cache_names and not any(TOKEN in n for n in cache_names)


async def test_malformed_listing_is_eio_and_the_rest_works_on(fake, inproc, caplog):
    project = sample(fake)
    project.builds[1].raw_artifacts = [{"path": "x.txt", "node_index": "zero", "url": "http://x"}]
    fake.faults.malformed_json.add("/api/v1.1/project/github/acme/api/3/artifacts")
    fs = await inproc()
    fs.expect_errors = True
    assert await errno_of(fs.readdir("github/acme/api/1")) == errno.EIO
    assert await errno_of(fs.readdir("github/acme/api/3")) == errno.EIO
    assert await fs.exists("github/acme/api/2/0/empty.txt")
    assert "node_index" in caplog.text and "malformed JSON" in caplog.text
    assert fs.ops.errors["EIO"] >= 2 and not fs.ops.errors["internal"]


async def test_expired_artifact_is_enoent_with_a_clear_log_line(fake, inproc, caplog):
    project = sample(fake)
    project.builds[1].artifacts[0].expired = True
    fs = await inproc()
    fs.expect_errors = True
    assert await errno_of(fs.open("github/acme/api/1/0/report.txt")) == errno.ENOENT
    assert "expired" in caplog.text
    assert "expired" in (await fs.getxattr("github/acme/api/1/0/report.txt", "user.ciartfs.error")).decode()


# -- extended attributes ---------------------------------------------------------------------------

async def test_extended_attributes_say_where_a_file_comes_from(fake, inproc):
    import json

    project = sample(fake)
    fs = await inproc(token=TOKEN)
    build = "github/acme/api/2"
    f = f"{build}/0/coverage/index.html"
    size = (await fs.stat(f)).size
    url = (await fs.getxattr(f, "user.ciartfs.url")).decode()
    assert url == fake.artifact_url(project, project.builds[2], project.builds[2].artifacts[1])
    source = json.loads(await fs.getxattr(f, "user.ciartfs.source"))
    assert source == {"provider": "circleci", "host": fake.api_url, "vcs": "github", "user": "acme",
                      "project": "api", "build": 2, "node": 0}
    await fs.read_file(f)
    await fs.settle()  # the disk write happens behind the read
    assert int(await fs.getxattr(f, "user.ciartfs.cached")) == size
    assert json.loads(await fs.getxattr("github/acme/api", "user.ciartfs.source"))["project"] == "api"
    info = json.loads(await fs.getxattr(build, "user.ciartfs.build"))
    assert info["build_num"] == 2 and info["branch"] == "main" and info["status"] == "failed"
    assert info["stop_time"] == STOP_EPOCH and info["lifecycle"] == "finished"
    names = await fs.listxattr(f)
    assert set(names) == {"user.ciartfs.url", "user.ciartfs.source", "user.ciartfs.cached"}
    for name in names:
        assert TOKEN not in (await fs.getxattr(f, name)).decode()
    # absent in our namespace (pyfuse3's ENOATTR is ENODATA); other namespaces (labels, ACLs)
    # unsupported, which `ls -l` remembers for the whole device instead of asking twice per file
    for name, expected in [("user.ciartfs.nope", errno.ENODATA), ("user.other", errno.ENODATA),
                           ("security.selinux", errno.EOPNOTSUPP), ("system.posix_acl_access", errno.EOPNOTSUPP)]:
        assert await errno_of(fs.getxattr(f, name)) == expected, name


# -- forget and list again -------------------------------------------------------------------------

async def test_what_the_kernel_forgot_is_let_go_and_listed_again_from_the_kept_documents(fake, inproc):
    from conftest import blob

    project = fake.add_project("github", "acme", "big")
    build = project.add_build(build_num=1, branch="main", status="success", lifecycle="finished",
                              stop_time="2026-11-01T10:00:00Z")
    files = {f"reports/r{i:03}.txt": blob(i, 100 + i) for i in range(60)}
    for path, data in files.items():
        build.add_artifact(path, data)
    fs = await inproc()
    reports = "github/acme/big/1/0/reports"
    sizes = {name: a.size for name, a in (await fs.ls_l(reports)).items()}
    assert sizes == {p.rsplit("/", 1)[1]: len(d) for p, d in files.items()}
    inodes = {name: a.inode for name, a in (await fs.readdir(reports)).items()}
    assert len(fs.tree.nodes) > 60
    await fs.forget_everything()
    assert len(fs.tree.nodes) < 10, "the forgotten build's nodes are still held"
    assert all(i not in fs.tree.nodes for i in inodes.values())
    fake.clear_requests()
    again = await fs.ls_l(reports)
    assert {name: a.size for name, a in again.items()} == sizes  # listed again
    assert await fs.read_file(f"{reports}/r042.txt") == files["reports/r042.txt"]
    assert [r for r in fake.requests if r.server == "api"] == [], "listed again from the cached API documents"
    assert storage_gets(fake) == [], "sizes and bytes from the caches"



async def test_a_build_the_kernel_forgot_is_listed_again_from_its_kept_placed_listing(fake, inproc, monkeypatch):
    """Re-listing a completed build the kernel forgot starts from its listing as placed (kept
    packed), not from its JSON: nothing parsed or placed again, and the same files, sizes,
    bytes and URLs. Its files' artifacts are made only when asked for. A build the kept
    listings' bound let go is listed from the documents again."""
    import ciartfs.providers.circleci.v1 as v1
    from conftest import blob

    parsed = []
    real_parse = v1.parse_artifacts
    monkeypatch.setattr(v1, "parse_artifacts", lambda doc, where: parsed.append(where) or real_parse(doc, where))
    project = fake.add_project("github", "acme", "kept")
    files = {}
    for num in (1, 2):
        build = project.add_build(build_num=num, branch="main", status="success", lifecycle="finished", stop_time=STOP)
        for i in range(40):
            path = f"out/sub{i % 3}/r{i:03}.txt" if i % 2 else f"out/r{i:03}.txt"
            files[f"{num}/0/{path}"] = blob(num * 100 + i, 50 + i)
            build.add_artifact(path, files[f"{num}/0/{path}"])
        build.add_artifact("other.txt", b"node 1", node_index=1)
        files[f"{num}/1/other.txt"] = b"node 1"
    fs = await inproc()

    async def everything(num: int) -> dict[str, tuple[int, str]]:
        found = await fs.walk_files(f"github/acme/kept/{num}", long=True)
        return {rel: (a.size, (await fs.getxattr(f"github/acme/kept/{num}/{rel}", "user.ciartfs.url")).decode())
                for rel, a in found.items()}

    before = await everything(1)
    assert {rel: size for rel, (size, _) in before.items()} == {
        k.split("/", 1)[1]: len(d) for k, d in files.items() if k.startswith("1/")}
    assert len(parsed) == 1
    await fs.forget_everything()
    fake.clear_requests()
    listed = await fs.readdir("github/acme/kept/1/0/out")
    assert parsed == [parsed[0]], "listed again without parsing the artifacts document"
    nodes = [fs.node(a.inode) for a in listed.values() if a.is_file]
    assert nodes and all(n.made_artifact is None for n in nodes), "no artifact made by a listing"
    assert await everything(1) == before
    assert await fs.read_file("github/acme/kept/1/0/out/sub1/r001.txt") == files["1/0/out/sub1/r001.txt"]
    assert [r for r in fake.requests if r.path.endswith("/artifacts")] == []
    # the least recently used kept listing is let go beyond the bound: listed from the documents again
    kept = next(n for n in fs.tree.nodes.values() if n.name == "1" and n.source is not None).source.p.api.kept
    assert "github/acme/kept/1" in kept
    kept.limit = kept.size  # room for one build's
    await everything(2)
    assert "github/acme/kept/2" in kept and "github/acme/kept/1" not in kept
    await fs.forget_everything()
    parsed.clear()
    assert await everything(1) == before
    assert len(parsed) == 1

async def test_listings_held_are_bounded_by_asking_the_kernel_to_forget_the_least_recently_used(fake, inproc):
    """Beyond max_held_entries, the directories listed longest ago are asked to be forgotten
    (not the one being listed, nor its ancestors); once the kernel forgets them, their nodes go."""
    project = fake.add_project("github", "acme", "many")
    for num in range(1, 7):
        build = project.add_build(build_num=num, branch="main", status="success", lifecycle="finished", stop_time=STOP)
        for i in range(30):
            build.add_artifact(f"out/f{i:02}.txt", b"x")
    fs = await inproc()
    asked: list[tuple[int, str]] = []
    fs.tree.ask_kernel_to_forget = lambda parent, name: asked.append((parent, name))
    fs.tree.max_held_entries = 100

    async def kernel_forgets(parent: int, name: str) -> None:  # the subtree's references given back
        top = fs.tree.nodes[parent].children.get(name) if parent in fs.tree.nodes else None
        if top is None:
            return  # forgotten with an ancestor asked for before it (the kernel: ENOENT, ignored)
        below, todo = [], [top]
        while todo:
            node = todo.pop()
            below.append(node)
            todo.extend(node.children.values())
        await fs.ops.forget([(n.inode, n.lookups) for n in below if n.lookups])

    nodes_at = {}
    for num in range(1, 7):
        assert len(await fs.readdir(f"github/acme/many/{num}/0/out")) == 30
        for parent, name in asked:
            await kernel_forgets(parent, name)
        nodes_at[num] = len(fs.tree.nodes)
        asked.clear()
        current = fs.tree.nodes[(await fs.resolve(f"github/acme/many/{num}/0/out")).inode]
        assert current.listing is not None and len(current.children) == 30
    assert nodes_at[6] == nodes_at[4], "the nodes held stopped growing"
    assert nodes_at[6] < 4 * 30, nodes_at
    assert len(await fs.readdir("github/acme/many/1/0/out")) == 30  # one let go is listed again


async def test_a_large_release_compacts_the_inode_table_and_gives_the_memory_back(fake, inproc, monkeypatch):
    import ciartfs.fs
    import ciartfs.namespace.tree

    trims = []
    monkeypatch.setattr(ciartfs.namespace.tree, "TRIM_AFTER_NODES", 200)
    monkeypatch.setattr(ciartfs.fs, "return_freed_memory", lambda: trims.append(1))
    build = fake.add_project("github", "acme", "big").add_build(
        build_num=1, branch="main", status="success", lifecycle="finished", stop_time=STOP)
    for i in range(1000):
        build.add_artifact(f"many/f{i:04}.bin", b"x")
    fs = await inproc()
    empty = sys.getsizeof(fs.tree.nodes)
    assert len(await fs.readdir("github/acme/big/1/0/many")) == 1000
    full = sys.getsizeof(fs.tree.nodes)
    full_collections = gc.get_stats()[2]["collections"]
    await fs.forget_everything()
    assert len(fs.tree.nodes) < 10
    assert trims == [1]
    # and a full collection before it, which also empties the interpreter's free lists (their
    # objects would keep allocator arenas mapped that the trim cannot give back)
    assert gc.get_stats()[2]["collections"] == full_collections + 1
    assert sys.getsizeof(fs.tree.nodes) <= empty < full  # a dict that held 1000 keys would not shrink
    fake.clear_requests()
    assert len(await fs.readdir("github/acme/big/1/0/many")) == 1000
    assert fake.requests == [], "listed again from the kept API documents"


async def test_a_node_the_kernel_still_holds_keeps_its_inode_and_its_listing(fake, inproc):
    sample(fake)
    fs = await inproc()
    held = await fs.resolve("github/acme/api/2/0/coverage/index.html")
    await fs.listdir("github/acme/api/2/0")
    # the kernel lets go of everything but the one file it has open
    drop = [(n.inode, n.lookups - (1 if n.inode == held.inode else 0)) for n in fs.tree.nodes.values()
            if n.inode != 1 and n.lookups > 0]
    await fs.ops.forget(drop)
    assert fs.node(held.inode).lookups == 1
    assert fs.node(held.inode).parent.listing is not None
    assert (await fs.ops.getattr(held.inode, CTX)).st_size == len(b"<html><a href='src/app.py.html'>app</a></html>\n")
    again = await fs.resolve("github/acme/api/2/0/coverage/index.html")
    assert again.inode == held.inode


# -- names, paging ---------------------------------------------------------------------------------

async def test_hostile_artifact_paths(fake, inproc, caplog):
    p = fake.add_project("github", "evil", "paths")
    b = p.add_build(build_num=1, branch="main", status="success", lifecycle="finished", stop_time=STOP)
    for path, data in [("../../escape.txt", b"x"), ("a/../../b", b"x"), ("./dot", b"x"), ("nul\x00byte", b"x"),
                       ("long/" + "n" * 300, b"x"), ("double//slash.txt", b"double\n"),
                       ("a", b"file a"), ("a/b.txt", b"in dir a\n"), ("dup.txt", b"first\n"),
                       ("dup.txt", b"second\n"), ("ok/é ü.txt", b"unicode\n")]:
        b.add_artifact(path, data)
    fs = await inproc()
    node = "github/evil/paths/1/0"
    assert sorted(await fs.walk_files(node)) == ["a/b.txt", "double/slash.txt", "dup.txt", "ok/é ü.txt"]
    assert await fs.read_file(f"{node}/a/b.txt") == b"in dir a\n"
    assert await fs.read_file(f"{node}/double/slash.txt") == b"double\n"
    assert await fs.read_file(f"{node}/dup.txt") in (b"first\n", b"second\n")
    assert not await fs.exists("github/evil/escape.txt")
    assert caplog.text.count("skipped") >= 7
    assert await fs.listdir("") == ["actions", "bitbucket", "circleci", "github"]  # still answering


async def test_recent_builds_paging_and_lookup_of_older_builds(fake, inproc):
    p = fake.add_project("github", "big", "proj")
    for n in range(1, 161):
        b = p.add_build(build_num=n, branch="main", status="success", lifecycle="finished", stop_time=STOP)
        b.add_artifact("n.txt", f"{n}\n".encode())
    fs = await inproc(recent_builds=120)
    builds = sorted(int(n) for n in await fs.listdir("github/big/proj") if n.isdigit())
    assert builds == list(range(41, 161))
    pages = [r.query for r in fake.requests if r.path == "/api/v1.1/project/github/big/proj"]
    assert pages and all(int(q["limit"]) <= 100 for q in pages)
    assert {q.get("offset") for q in pages} >= {"0", "100"}
    assert await fs.read_file("github/big/proj/7/0/n.txt") == b"7\n"  # not listed, still there


# -- what is kept: a second mount, offline -----------------------------------------------------------

async def test_a_build_and_its_artifact_list_are_asked_for_at_once(fake, inproc, tmp_path):
    """Opening a file of a build not seen yet costs one API round trip for the build, not
    two in series (the build's document, then its artifact list); the list is still kept
    because the build turns out to be completed."""
    project = sample(fake)
    expected = project.builds[2].artifacts[0].data
    fs = await inproc(cache_dir=tmp_path / "shared")
    await fs.stat("github/acme/api")
    fake.faults.api_latency = 0.5
    fake.clear_requests()
    assert await fs.read_file("github/acme/api/2/0/test-results/junit.xml") == expected
    arrived = {r.path.rsplit("/", 1)[-1]: r.time for r in fake.requests if r.server == "api"}
    assert arrived["artifacts"] - arrived["2"] < 0.25, arrived  # asked before the build's answer came
    fake.faults.api_latency = 0
    await fs.close()
    second = await inproc(cache_dir=tmp_path / "shared")
    fake.clear_requests()
    assert await second.read_file("github/acme/api/2/0/test-results/junit.xml") == expected
    assert not [r for r in fake.requests if r.path.endswith("/artifacts")]


async def test_disk_cache_serves_a_second_mount_without_storage_requests(fake, inproc, tmp_path):
    project = sample(fake)
    cache = tmp_path / "shared-cache"
    first = await inproc(cache_dir=cache)
    expected = files_of(project, 2)
    for rel, data in expected.items():
        assert await first.read_file(f"github/acme/api/2/{rel}") == data
    await first.close()
    fake.clear_requests()
    second = await inproc(cache_dir=cache)
    for rel, data in expected.items():
        assert await second.read_file(f"github/acme/api/2/{rel}") == data
    assert storage_gets(fake) == [], "everything came from the disk cache"
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700


async def test_second_mount_and_offline_use_kept_listings(fake, inproc, tmp_path, caplog):
    project = sample(fake)
    cache = tmp_path / "kept"
    first = await inproc(cache_dir=cache)
    build = "github/acme/api/2"
    expected = files_of(project, 2)
    for rel, data in expected.items():
        assert await first.read_file(f"{build}/{rel}") == data
    assert "2" in await first.listdir("github/acme/api")
    await first.close()

    fake.clear_requests()
    again = await inproc(cache_dir=cache)  # online: a completed build it has seen needs no request at all
    assert await again.listdir(build) == ["0", "1"]
    for rel, data in expected.items():
        assert await again.read_file(f"{build}/{rel}") == data
    assert fake.requests == [], [r.path for r in fake.requests]
    await again.close()

    caplog.set_level(logging.INFO, logger="ciartfs")
    offline = await inproc(cache_dir=cache, offline=True)
    offline.expect_errors = True
    assert "2" in await offline.listdir("github/acme/api")  # the last recent-builds list seen
    for rel, data in expected.items():
        assert await offline.read_file(f"{build}/{rel}") == data
    assert await errno_of(offline.readdir("github/acme/api/1")) in (errno.EIO, errno.ENOENT)  # never listed
    assert await errno_of(offline.readdir("github/acme/other")) in (errno.EIO, errno.ENOENT)
    assert fake.requests == [], "offline: nothing reached the network"
    assert "offline:" in caplog.text and "not in the cache" in caplog.text


# -- the handlers' contract with the kernel ----------------------------------------------------------

async def test_readdir_offsets_hold_across_calls_and_a_refresh(fake, inproc, clock):
    """A listing is taken once per opendir: the offsets the kernel got stay valid across
    readdir calls even when the directory is refreshed meanwhile, and a readdir resumed at any
    offset gives the rest."""
    project = sample(fake)
    for n in range(5, 25):
        project.add_build(build_num=n, branch="main", status="running", lifecycle="running", stop_time=None)
    fs = await inproc(latest_ttl=60)
    proj = await fs.resolve("github/acme/api")
    whole = list(await fs.readdir("github/acme/api"))
    fh = await fs.ops.opendir(proj.inode, CTX)
    first = ReaddirBuffer(3)
    await fs.ops.readdir(fh, 0, first)
    assert [name for name, _, _ in first.entries] == whole[:3]
    project.add_build(build_num=99, branch="main", status="running", lifecycle="running", stop_time=None)
    fs.advance(61)
    assert "99" in await fs.listdir("github/acme/api")  # another open sees the new build
    for start in (first.entries[-1][2], 7, len(whole) - 1):  # resumed where the kernel left off, or anywhere
        rest = ReaddirBuffer(1000)
        await fs.ops.readdir(fh, start, rest)
        assert [name for name, _, _ in rest.entries] == whole[start:]
        assert [next_id for _, _, next_id in rest.entries] == list(range(start + 1, len(whole) + 1))
    done = ReaddirBuffer(10)
    await fs.ops.readdir(fh, len(whole), done)
    assert done.entries == []
    await fs.ops.releasedir(fh)
    assert await errno_of(fs.ops.readdir(fh, 0, ReaddirBuffer(10))) == errno.EBADF


async def test_wrong_kinds_stale_inodes_and_handles_are_clean_errnos(fake, inproc):
    sample(fake)
    fs = await inproc()
    build = await fs.resolve("github/acme/api/2/0")
    f = await fs.resolve("github/acme/api/2/0/empty.txt")
    assert await errno_of(fs.ops.open(build.inode, os.O_RDONLY, CTX)) == errno.EISDIR
    assert await errno_of(fs.ops.readlink(f.inode, CTX)) == errno.EINVAL
    assert await errno_of(fs.ops.lookup(f.inode, b"x", CTX)) == errno.ENOENT  # a file has no children
    assert await errno_of(fs.ops.opendir(f.inode, CTX)) == errno.ENOENT
    never = max(fs.tree.nodes) + 1000
    assert await errno_of(fs.ops.getattr(never, CTX)) == errno.ENOENT
    assert await errno_of(fs.ops.read(12345, 0, 10)) == errno.EBADF
    await fs.ops.release(12345)  # unknown handles are ignored, not fatal
    await fs.ops.forget([(never, 1)])
    assert not fs.ops.errors["internal"]


async def test_reads_across_blocks_and_past_the_end_are_byte_exact(fake, inproc):
    project = sample(fake)
    data = project.builds[2].artifacts[4].data  # dist/app.bin, 3 MiB + 123
    fs = await inproc(block_size=64 << 10)
    fh = await fs.open("github/acme/api/2/0/dist/app.bin")
    bs = 64 << 10
    for off, size in [(0, 1), (bs - 1, 2), (bs - 10, bs + 20), (5 * bs, 3 * bs), (len(data) - 5, 100),
                      (len(data), 10), (len(data) + 1000, 10)]:
        assert await fs.read(fh, off, size) == data[off:off + size], (off, size)
    await fs.release(fh)
    assert await fs.read_file("github/acme/api/2/0/empty.txt") == b""
