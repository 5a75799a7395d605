"""The fake's storage owns the blobs: every API finds an artifact's bytes by blob id in a dict,
never by walking the artifact lists (a 100k-artifact build costs a lookup what a small one
does), and API modules plug into the hosts through `routes(fake) -> list[Route]`."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ciartfs.fakeserver import FakeCI, Reply, Request, Route
from ciartfs.fakeserver.generated import GeneratedGzip
from ciartfs.fakeserver.server import API_MODULES
from ciartfs.fakeserver.storage import serve_bytes

MANY = 100_000
HTTP = httpx.Client(timeout=10)


class WalkCountingList(list):
    """An artifact list that counts how often it is walked (iterated or searched)."""

    walks = 0

    def __iter__(self) -> Iterator[Any]:
        self.walks += 1
        return super().__iter__()

    def __contains__(self, item: object) -> bool:
        self.walks += 1
        return super().__contains__(item)

    def index(self, *args: Any) -> int:
        self.walks += 1
        return super().index(*args)


def _spy_on(owner: Any) -> WalkCountingList:
    owner.artifacts = WalkCountingList(owner.artifacts)
    return owner.artifacts


def test_circleci_lookups_in_a_100k_artifact_build_walk_no_list(fake: FakeCI):
    project = fake.add_project("github", "acme", "huge")
    small = project.add_build(1)
    small.add_artifact("only.txt", b"small build")
    huge = project.add_build(2)
    for n in range(MANY):
        huge.add_artifact(f"out/{n:06d}.txt", b"%d\n" % n)
    walks = [_spy_on(small), _spy_on(huge)]
    for build, artifact in ((huge, huge.artifacts[-1]), (huge, huge.artifacts[MANY // 2]), (small, small.artifacts[0])):
        redirect = HTTP.get(fake.artifact_url(project, build, artifact))
        assert redirect.status_code == 302, redirect.text
        assert HTTP.get(redirect.headers["location"]).content == artifact.data
    assert [w.walks for w in walks] == [0, 0], "a lookup walked an artifact list"
    assert fake.blobs.get(huge.artifacts[-1].blob_id) is huge.artifacts[-1]
    assert sum(1 for _ in huge.artifacts) == MANY and walks[1].walks == 1  # the counter does count walks


def test_taskcluster_lookups_in_a_100k_artifact_run_walk_no_list(fake: FakeCI):
    run = fake.queue.add_task("hUgEtAsKQaC0000000001A").add_run("completed")
    for n in range(MANY):
        run.add_artifact(f"public/out/{n:06d}.txt", b"%d\n" % n)
    live = run.add_live_log(b"live so far\n")
    walks = _spy_on(run)

    def get_artifact(name: str) -> str:
        queue = f"{fake.api_url}/api/queue/v1/task/hUgEtAsKQaC0000000001A/runs/0/artifacts/"
        redirect = HTTP.get(queue + urllib.parse.quote(name, safe=""))
        assert redirect.status_code == 303, redirect.text
        return redirect.headers["location"]

    for artifact in (run.artifacts[MANY - 1], run.artifacts[0]):
        assert HTTP.get(get_artifact(artifact.name)).content == artifact.data
    with HTTP.stream("GET", get_artifact("public/logs/live.log")) as streaming:  # found by its token
        assert streaming.status_code == 200
        received = b""
        for piece in streaming.iter_raw():
            received += piece
            if len(received) >= len(b"live so far\n"):
                break
        assert received == b"live so far\n"
        live.finish()
    assert walks.walks == 0, "a lookup walked the run's artifact list"
    assert fake.blobs.live_log(live.token) is live


def test_storage_is_a_dict_keyed_by_blob_id_of_every_api(fake: FakeCI):
    build = fake.add_project("github", "acme", "api").add_build(1)
    circle = build.add_artifact("a.txt", b"a")
    run = fake.queue.add_task("sToReTaSkQaC0000000001A").add_run("completed")
    tc = run.add_artifact("public/b.txt", b"b")
    bomb = run.add_artifact("public/bomb.log", generated=GeneratedGzip.zeros(10 << 30))
    assert isinstance(fake.blobs.by_id, dict)
    assert {a.blob_id: a for a in (circle, tc, bomb)} == fake.blobs.by_id  # one id space, no collisions
    # a generated blob is stored as its generator and read on the fly: any range, never held whole
    with pytest.raises(ValueError):
        bomb.stored  # noqa: B018
    middle = bomb.generated.size // 2
    with HTTP.stream("GET", fake.presigned_url(bomb.blob_id), headers={"Range": f"bytes={middle}-{middle + 99}"}) as part:
        raw = b"".join(part.iter_raw())  # still gzip-encoded: a slice of the stream
    assert part.status_code == 206 and raw == b"".join(bomb.generated.read(middle, middle + 100))
    assert part.headers["content-range"] == f"bytes {middle}-{middle + 99}/{bomb.generated.size}"


def test_a_replaced_build_or_task_takes_its_blobs_out_of_storage(fake: FakeCI):
    project = fake.add_project("github", "acme", "api")
    old = project.add_build(1).add_artifact("a.txt", b"old")
    old_url = fake.presigned_url(old.blob_id)
    task = fake.queue.add_task("rEpLaCeDqAc0000000001A")
    old_tc = task.add_run("completed").add_artifact("public/a.txt", b"old tc")
    old_tc_url = fake.presigned_url(old_tc.blob_id)
    assert HTTP.get(old_url).content == b"old" and HTTP.get(old_tc_url).content == b"old tc"
    new = project.add_build(1).add_artifact("a.txt", b"new")
    fake.queue.add_task("rEpLaCeDqAc0000000001A")
    for url in (old_url, old_tc_url):
        gone = HTTP.get(url)
        assert gone.status_code == 404 and b"NoSuchKey" in gone.content
    assert HTTP.get(fake.presigned_url(new.blob_id)).content == b"new"
    assert len(fake.blobs) == 1


# -- the route shape: an API module of this test file, served next to the built-in ones ------------


def routes(fake: FakeCI) -> list[Route]:
    def blob(request: Request) -> None:
        artifact = fake.blobs.get(int(request.raw_path.rsplit("/", 1)[1]))
        if artifact is None:
            raise Reply(404, {"message": "no such blob"})
        serve_bytes(fake, request, artifact, honour_range=True)

    def declining(request: Request) -> None:
        if request.raw_path == "/hello/mine":
            raise Reply(200, {"hello": request.query.get("who", "?")})

    return [Route("api", "/hello/blob/", blob), Route("api", "/hello/", declining)]


def test_an_api_module_plugs_in_through_routes():
    with FakeCI(tokens=set(), api_modules=[*API_MODULES, __name__]) as fake:
        artifact = fake.add_project("github", "acme", "api").add_build(1).add_artifact("a.txt", b"0123456789")
        assert HTTP.get(f"{fake.api_url}/hello/mine", params={"who": "x"}).json() == {"hello": "x"}
        ranged = HTTP.get(f"{fake.api_url}/hello/blob/{artifact.blob_id}", headers={"Range": "bytes=2-4"})
        assert ranged.status_code == 206 and ranged.content == b"234"  # the longer prefix answered first
        assert HTTP.get(f"{fake.api_url}/hello/blob/999999999").status_code == 404
        # declined: on to the host's fallback (CircleCI v1.1's 404), and the built-in routes still answer
        passed = HTTP.get(f"{fake.api_url}/hello/other", headers={"Accept": "application/json"})
        assert passed.status_code == 404 and passed.json() == {"message": "Not found"}
        assert HTTP.get(f"{fake.api_url}/api/v1.1/project/github/acme/api/1",
                        headers={"Accept": "application/json"}).json()["build_num"] == 1
        assert [(r.path, r.status) for r in fake.requests][:2] == [("/hello/mine", 200), (f"/hello/blob/{artifact.blob_id}", 206)]
