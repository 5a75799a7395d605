"""The fake CircleCI API v1.1 on the API host, and circle-artifacts.com's stand-in (the "html" host):

    GET /api/v1.1/project/<vcs>/<user>/<project>[?limit=&offset=&filter=&shallow=]
    GET /api/v1.1/project/<vcs>/<user>/<project>/tree/<branch>[?...]
    GET /api/v1.1/project/<vcs>/<user>/<project>/<build_num>
    GET /api/v1.1/project/<vcs>/<user>/<project>/<build_num>/artifacts
    GET /api/v1.1/project/<vcs>/<user>/<project>/latest/artifacts[?branch=&filter=]
    GET /api/v1.1/me   the token's own user (which a token must never be sent to from a listing)
    GET /artifacts/<vcs>/<user>/<project>/<build>/<node>/<path>   302 to a presigned storage URL

Without `Accept: application/json` the API answers EDN, as circleci.com does. A token comes
as a Circle-Token header, HTTP Basic user or `circle-token` query parameter; an unknown one is
401 everywhere, a private project without one is 404. HTML artifacts are served directly,
without the 302, as CircleCI serves them from `*.circle-artifacts.com`: a public project's
from the "html" host (which gets no token), a private project's at its API-host artifact
route (which does); `Faults.direct_ignore_range` makes both answer Range with the whole body.
The API host's own faults (hang, latency, statuses) are applied by the dispatch before any
route; `Faults.malformed_json` and `Faults.hostile_json` by `path_faults` here (v2 too).
"""

from __future__ import annotations

import base64
import datetime
import functools
import itertools
import re
import urllib.parse
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ciartfs.fakeserver.routing import Reply, Request, Route, Served
from ciartfs.fakeserver.storage import CHUNK, serve_bytes

if TYPE_CHECKING:
    from ciartfs.fakeserver.model import FakeArtifact, FakeBuild, FakeProject
    from ciartfs.fakeserver.server import FakeCI

HOSTILE_EXPANSION_BYTES = 12 << 20
MAX_LIMIT = 100
_NUM_RE = re.compile(r"[0-9]+")
_VCS_SLUG = {"github": "gh", "bitbucket": "bb"}
_FILTERS: dict[str, Callable[[FakeBuild], bool]] = {
    "completed": lambda b: b.lifecycle == "finished",
    "successful": lambda b: b.status in ("success", "fixed"),
    "failed": lambda b: b.status in ("failed", "timedout", "infrastructure_fail"),
    "running": lambda b: b.lifecycle == "running",
}


def routes(fake: FakeCI) -> list[Route]:
    return [Route("api", "/artifacts/", lambda request: _artifact_route(fake, request)),
            Route("api", "", lambda request: _api(fake, request)),  # the API host's fallback
            Route("html", "", lambda request: _html(fake, request))]


# -- shared with v2 --------------------------------------------------------------------------------


def checked_token(fake: FakeCI, request: Request) -> str | None:
    """The request's token (None without one); 401 for a token the fake does not know."""
    token = _token(request)
    if token is not None and token not in fake.tokens:
        raise Reply(401, {"message": "Invalid token provided."})
    return token


def path_faults(fake: FakeCI, request: Request) -> None:
    """Faults.malformed_json and Faults.hostile_json, for the exact raw path."""
    if request.raw_path in fake.faults.malformed_json:
        raise Reply(200, b'[{"path": "truncated')
    kind = fake.faults.hostile_json.get(request.raw_path)
    if kind is not None:
        _hostile_json(fake, request, kind)


def project_of(fake: FakeCI, vcs: str, user: str, name: str, token: str | None) -> FakeProject:
    project = fake.projects.get((vcs, user, name))
    if project is None or (project.private and token is None):
        raise Reply(404, {"message": "Project not found"})
    return project


def is_direct(artifact: FakeArtifact) -> bool:
    """Whether CircleCI serves this artifact straight from circle-artifacts.com (no 302)."""
    if artifact.direct is not None:
        return artifact.direct
    return artifact.path.lower().endswith((".html", ".htm"))


def artifact_url(fake: FakeCI, project: FakeProject, build: FakeBuild, artifact: FakeArtifact) -> str:
    """The URL the listing reports: on the API host, each path segment percent-encoded
    (a leading "/" stays, giving "0//tmp/..." as in the docs); a public project's HTML on
    the circle-artifacts stand-in, same path after the host."""
    if artifact.url is not None:
        return artifact.url
    encoded = "/".join(urllib.parse.quote(part, safe="") for part in artifact.path.split("/"))
    parts = (project.vcs_type, project.username, project.reponame, str(build.build_num), str(artifact.node_index))
    route = "/".join(urllib.parse.quote(p, safe="") for p in parts) + "/" + encoded
    if is_direct(artifact) and not project.private:
        return f"{fake.html_url}/{route}"
    return f"{fake.api_url}/artifacts/{route}"


# -- API host --------------------------------------------------------------------------------------


def _api(fake: FakeCI, request: Request) -> None:
    """/api/v1.1/, and every API-host path no other route answered."""
    if request.method != "GET":
        raise Reply(405, {"message": "method not allowed"})
    token = checked_token(fake, request)
    path_faults(fake, request)
    segments = [urllib.parse.unquote(s) for s in request.raw_path.split("/")]
    if segments == ["", "api", "v1.1", "me"]:
        _me(token)
    if "application/json" not in request.headers.get("Accept", ""):
        raise Reply(200, b'({:build_num 1 :status "success"})', content_type="application/edn")
    if segments[:4] != ["", "api", "v1.1", "project"] or len(segments) < 7:
        raise Reply(404, {"message": "Not found"})
    query = request.query
    project = project_of(fake, segments[4], segments[5], segments[6], token)
    rest = segments[7:]
    if rest in ([], [""]):
        raise Reply(200, _build_page(fake, project, None, query))
    if len(rest) == 2 and rest[0] == "tree":
        raise Reply(200, _build_page(fake, project, rest[1], query))
    if rest == ["latest", "artifacts"]:
        builds = _filtered(project, query.get("branch") or None, query.get("filter"))
        if not builds:
            raise Reply(404, {"message": "Build not found"})
        raise Reply(200, _artifacts(fake, project, builds[0]))
    if rest and _NUM_RE.fullmatch(rest[0]):
        build = project.builds.get(int(rest[0]))
        if build is None:
            raise Reply(404, {"message": "Build not found"})
        if len(rest) == 1:
            raise Reply(200, _summary(fake, project, build))
        if rest[1:] == ["artifacts"]:
            raise Reply(200, _artifacts(fake, project, build))
    raise Reply(404, {"message": "Not found"})


def _token(request: Request) -> str | None:
    if request.headers.get("Circle-Token"):
        return str(request.headers["Circle-Token"])
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("basic "):
        try:
            user = base64.b64decode(auth[6:]).decode().split(":", 1)[0]
        except (ValueError, UnicodeDecodeError):
            return "<malformed basic auth>"
        return user
    return request.query.get("circle-token")


def _me(token: str | None) -> None:
    """GET /api/v1.1/me: the token's own user, secrets included; 401 without a token."""
    if token is None:
        raise Reply(401, {"message": "You must log in first."})
    raise Reply(200, {"login": "token-owner", "name": "Token Owner",
                      "all_emails": ["owner@example.com"], "SecretAccessKey": "fake-me-secret"})


def _filtered(project: FakeProject, branch: str | None, filter_name: str | None) -> list[FakeBuild]:
    builds = sorted(project.builds.values(), key=lambda b: b.build_num, reverse=True)
    if branch is not None:
        builds = [b for b in builds if b.branch == branch]
    if filter_name in _FILTERS:
        builds = [b for b in builds if _FILTERS[filter_name](b)]
    return builds


def _build_page(fake: FakeCI, project: FakeProject, branch: str | None, query: dict[str, str]) -> list[dict[str, Any]]:
    try:
        limit = int(query.get("limit", "30"))
        offset = int(query.get("offset", "0"))
    except ValueError:
        raise Reply(400, {"message": "limit and offset must be integers"}) from None
    if limit > MAX_LIMIT:
        raise Reply(400, {"message": "limit must be <= 100"})
    if limit < 0 or offset < 0:
        raise Reply(400, {"message": "limit and offset must not be negative"})
    builds = _filtered(project, branch, query.get("filter"))
    return [_summary(fake, project, b) for b in builds[offset:offset + limit]]


def _summary(fake: FakeCI, project: FakeProject, build: FakeBuild) -> dict[str, Any]:
    return {
        "build_num": build.build_num, "branch": build.branch, "vcs_revision": build.vcs_revision,
        "status": build.status, "lifecycle": build.lifecycle, "outcome": build.outcome,
        "start_time": _iso(build.start_time), "stop_time": _iso(build.stop_time), "queued_at": _iso(build.queued_at),
        "subject": build.subject, "username": project.username, "reponame": project.reponame,
        "vcs_type": project.vcs_type,
        "build_url": f"{fake.api_url}/{_VCS_SLUG.get(project.vcs_type, project.vcs_type)}/"
                     f"{project.username}/{project.reponame}/{build.build_num}",
    }


def _artifacts(fake: FakeCI, project: FakeProject, build: FakeBuild) -> Any:
    if build.raw_artifacts is not None:
        return build.raw_artifacts
    return [{"path": a.path, "pretty_path": a.path, "node_index": a.node_index,
             "url": artifact_url(fake, project, build, a)} for a in build.artifacts]


def _artifact_route(fake: FakeCI, request: Request) -> None:
    """An artifact's URL on the API host: 302 to storage, or an HTML artifact's bytes."""
    if request.method != "GET":
        raise Reply(405, {"message": "method not allowed"})
    token = checked_token(fake, request)
    artifact = _routed_artifact(fake, request.raw_path[len("/artifacts/"):], token)
    if is_direct(artifact):
        serve_bytes(fake, request, artifact, honour_range=not fake.faults.direct_ignore_range)
    raise Reply(302, b"", content_type="text/plain", headers={"Location": fake.presigned_url(artifact.blob_id)})


def _routed_artifact(fake: FakeCI, route: str, token: str | None) -> FakeArtifact:
    """The artifact at "<vcs>/<user>/<project>/<build>/<node>/<path>" (percent-encoded), or a
    404 Reply (also for a private project without a token)."""
    parts = route.split("/", 5)
    if len(parts) < 6 or not _NUM_RE.fullmatch(parts[3]) or not _NUM_RE.fullmatch(parts[4]):
        raise Reply(404, {"message": "Not found"})
    vcs, user, name = (urllib.parse.unquote(p) for p in parts[:3])
    project = project_of(fake, vcs, user, name, token)
    build = project.builds.get(int(parts[3]))
    path = "/".join(urllib.parse.unquote(p) for p in parts[5].split("/"))
    artifact = build.artifact_at(int(parts[4]), path) if build else None
    if artifact is None or artifact.expired:
        raise Reply(404, {"message": "Artifact not found"})
    return artifact


def _hostile_json(fake: FakeCI, request: Request, kind: str) -> None:
    """Stream a hostile answer (see Faults.hostile_json) until it ends or the client hangs up."""
    handler = request.handler
    headers = {"Content-Type": "application/json"}
    if kind == "expansion":
        record = b"{},"
        count = HOSTILE_EXPANSION_BYTES // len(record)
        headers["Content-Length"] = str(1 + count * len(record) + 3)
        pieces: Any = itertools.chain([b"["], itertools.repeat(record * (CHUNK // len(record)), count // (CHUNK // len(record))),
                                      [record * (count % (CHUNK // len(record))), b"{}]"])
    elif kind == "endless":
        headers["Transfer-Encoding"] = "chunked"
        record = b'{"path":"a/b.txt","pretty_path":"a/b.txt","node_index":0,"url":"http://127.0.0.1:1/a"},'
        pieces = itertools.chain([b"["], itertools.repeat(record * (CHUNK // len(record))))
    elif kind == "gzip-bomb":
        headers["Transfer-Encoding"] = "chunked"
        headers["Content-Encoding"] = "gzip"
        gzip_header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
        opening = zlib.compressobj(9, zlib.DEFLATED, -15)
        pieces = itertools.chain([gzip_header + opening.compress(b"[") + opening.flush(zlib.Z_SYNC_FLUSH)],
                                 itertools.repeat(_bomb_unit()))
    else:
        raise Reply(500, {"message": f"unknown hostile JSON kind {kind!r}"})
    chunked = headers.get("Transfer-Encoding") == "chunked"
    try:
        handler.send_response(200)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        for piece in pieces:
            if fake.stopping.is_set():
                break
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        else:
            if chunked:
                handler.wfile.write(b"0\r\n\r\n")
            raise Served(200)
    except OSError:
        pass
    handler.close_connection = True
    raise Served(-1)


@functools.cache
def _bomb_unit() -> bytes:
    """One deflate block of 8 MiB of spaces, ended by a sync flush: it references nothing
    before it, so repeating it is a valid (endless) deflate stream. Made on first use."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return packer.compress(b" " * (8 << 20)) + packer.flush(zlib.Z_SYNC_FLUSH)


# -- circle-artifacts host -------------------------------------------------------------------------


def _html(fake: FakeCI, request: Request) -> None:
    """The circle-artifacts stand-in: an HTML artifact's bytes at once, no redirect."""
    if request.method != "GET":
        raise Reply(405, b"method not allowed", content_type="text/plain")
    token = checked_token(fake, request)
    artifact = _routed_artifact(fake, request.raw_path.lstrip("/"), token)
    if not is_direct(artifact):
        raise Reply(404, {"message": "Artifact not found"})
    serve_bytes(fake, request, artifact, honour_range=not fake.faults.direct_ignore_range)


def _iso(stamp: str | None) -> str | None:
    """v1.1's time format, "2026-11-01T10:00:00.000Z" (UTC, milliseconds), or None."""
    if stamp is None:
        return None
    try:
        t = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp  # odd values are the test's business
    if t.tzinfo is not None:
        t = t.astimezone(datetime.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
