"""A fake CI for the demo and the tests: CircleCI (v1.1 and v2), Taskcluster (queue, object
service, worker livelogs) and GitHub Actions (runs, artifacts) over real HTTP on 127.0.0.1,
with an S3-like presigned storage host and an Azure-Blob-like one for GitHub's artifacts.

Layout:
    server.py       FakeCI: the hosts (routing.HOSTS), the request log, the dispatch
    routing.py      Request, Reply, Served, Route: the shape every API module has
    storage.py      BlobStore (every artifact by blob id, O(1)) and the storage host
    model.py        CircleCI projects, builds, artifacts; Faults (every fault switch); Recorded
    circleci_v1.py  CircleCI v1.1 and the circle-artifacts (direct HTML) host
    v2.py           CircleCI v2 (pipelines, workflows, jobs)
    taskcluster.py  the Taskcluster queue and object service, and their model
    livelog.py      a worker's livelog server
    github.py       GitHub Actions' API (runs, artifacts) and its model (FakeCI.github)
    azureblob.py    the "blob" host: Azure Blob storage behind SAS URLs (GitHub's artifacts)
    generated_zip.py  large zip artifacts made on the fly (zip64, > 4 GiB members)
    generated.py    large gzip artifacts made on the fly (never stored)
    dataset.py      the demo data; internal.py: a service the mount must never reach

Routes. An API module exposes

    def routes(fake: FakeCI) -> list[Route]

Each `Route(host, prefix, handle)` answers on one of the fake's hosts ("api", "storage",
"livelog", "html", "blob") for raw paths starting with `prefix` ("" = the host's fallback).
`handle(request: Request) -> None` answers by raising `Reply(status, body)` (a JSON-able
body or bytes, a content type, headers), or `Served(status)` once it has streamed its own
answer through `request.handler`; it returns None to pass the request on. The dispatch tries
a host's matching routes longest prefix first; a request none answers is 404. A route finds
an artifact's bytes through `fake.blobs` (storage.BlobStore) and serves them with
`storage.serve_bytes`, presigns with `fake.presigned_url`, reads faults from `fake.faults`
and waits with `fake.hold`/`fake.wait` (both end when the fake stops). FakeCI serves the
modules named in its `api_modules`: by default the built-in providers' (each provider names
its modules in `fake_modules`, see providers/base.py) and storage, server.API_MODULES.
"""

from ciartfs.fakeserver.dataset import demo_dataset
from ciartfs.fakeserver.generated_zip import GeneratedZip
from ciartfs.fakeserver.github import FakeGhArtifact, FakeGitHub, FakeRepo, FakeWorkflow, FakeWorkflowRun
from ciartfs.fakeserver.internal import InternalService
from ciartfs.fakeserver.model import FakeArtifact, FakeBuild, FakeProject, Faults, Recorded
from ciartfs.fakeserver.routing import Reply, Request, Route, Served
from ciartfs.fakeserver.server import FakeCI
from ciartfs.fakeserver.storage import BlobStore
from ciartfs.fakeserver.taskcluster import FakeQueue, FakeRun, FakeTask, FakeTcArtifact

__all__ = [
    "BlobStore",
    "FakeArtifact",
    "FakeBuild",
    "FakeCI",
    "FakeGhArtifact",
    "FakeGitHub",
    "FakeProject",
    "FakeQueue",
    "FakeRepo",
    "FakeRun",
    "FakeTask",
    "FakeTcArtifact",
    "FakeWorkflow",
    "FakeWorkflowRun",
    "Faults",
    "GeneratedZip",
    "InternalService",
    "Recorded",
    "Reply",
    "Request",
    "Route",
    "Served",
    "demo_dataset",
]
