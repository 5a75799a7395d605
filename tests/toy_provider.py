"""A test-only CI system, "Toy CI", plugged in the way a real one is: one Provider object
(named by $CIARTFS_EXTRA_PROVIDERS=toy_provider:PROVIDER, the registry's extra line) and its
API on the bundled fake server (`routes(fake)`, named by the provider's `fake_modules`).

    toy/<build>/<path>      the build's files; builds are listed by the API

Settings: `toy_url` ($TOY_URL, --toy-url) turns it on; the token comes from $TOY_TOKEN or the
file `toy_token_file` names, and goes in a `Toy-Token` header to the toy's own host only.
The fake answers a file's URL with a 302 to the storage host, which must never see the token.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ciartfs.options import Option, OptionValues, parse_path, parse_url
from ciartfs.providers.base import MountContext, Provider, ProviderMount, load_token

if TYPE_CHECKING:
    from ciartfs.fakeserver import FakeCI
    from ciartfs.namespace.model import Entry
    from ciartfs.net.credentials import Credential

TOKEN_HEADER = "Toy-Token"
FAKE_TOKEN = "toy-secret-7f3a"
# The fake's builds: build number -> {path: bytes}.
FAKE_BUILDS: dict[int, dict[str, bytes]] = {
    1: {"hello.txt": b"hello from the toy CI\n",
        "logs/build.log": b"".join(b"step %d: ok\n" % i for i in range(5000))},
    2: {"report.json": json.dumps({"passed": 41, "failed": 1}).encode()},
}


@dataclasses.dataclass(frozen=True)
class ToySettings:
    url: str
    token: str | None = dataclasses.field(default=None, repr=False)


class ToyCI(Provider[ToySettings]):
    name = "toy"
    title = "Toy CI"
    options = (
        Option("toy_url", "TOY_URL", parse_url, None, "Toy CI's API; adds toy/"),
        Option("toy_token_file", "CIARTFS_TOY_TOKEN_FILE", parse_path, None, "file holding the Toy CI token"),
    )
    credential_help = "$TOY_TOKEN or --toy-token-file"
    example_path = "toy/1/"
    fake_modules = ("toy_provider",)

    def load(self, given: OptionValues) -> ToySettings | None:
        token = load_token(given, env_vars=("TOY_TOKEN",), file_key="toy_token_file")
        return ToySettings(given["toy_url"], token) if given["toy_url"] else None

    def demo(self, api_url: str, token: str) -> ToySettings:
        return ToySettings(api_url, FAKE_TOKEN)

    def api_urls(self, settings: ToySettings) -> list[str]:
        return [settings.url]

    def credentials(self, settings: ToySettings) -> list[Credential]:
        from ciartfs.net.credentials import HeaderCredential, origin_of

        if not settings.token:
            return []
        return [HeaderCredential(headers={TOKEN_HEADER: settings.token}, origins=frozenset({origin_of(settings.url)}))]

    def secrets(self, settings: ToySettings) -> list[str]:
        return [settings.token] if settings.token else []

    def mount(self, settings: ToySettings, context: MountContext) -> ProviderMount:
        from ciartfs.namespace.model import Entry, Kind

        builds = _Builds(context, settings.url)
        return ProviderMount([Entry("toy", Kind.DIR, mtime=context.mtime, immutable=True, source=builds)],
                             live_status=lambda: {"toy_listings": builds.listings})

    def status(self, settings: ToySettings) -> dict[str, Any]:
        return {"toy_url": settings.url, "toy_token": bool(settings.token)}

    def describe(self, status: Mapping[str, Any]) -> str | None:
        if "toy_url" not in status:
            return None
        return str(status["toy_url"]) + ("  (token set)" if status.get("toy_token") else "")


PROVIDER = ToyCI()


class _Builds:
    """toy/: the builds the API lists (they never change here: no TTL)."""

    ttl = None
    complete = True

    def __init__(self, mount: MountContext, url: str) -> None:
        self.mount, self.url = mount, url
        self.listings = 0  # build lists asked for (shown by `ciartfs status`)

    async def list(self) -> list[Entry]:
        from ciartfs.errors import BadListing
        from ciartfs.namespace.model import Entry, Kind

        self.listings += 1
        doc = await self.mount.docs.get_json(f"{self.url}/toy/v1/builds")
        builds = doc.get("builds") if isinstance(doc, dict) else None
        if not isinstance(builds, list) or not all(type(n) is int and n > 0 for n in builds):
            raise BadListing(f"{self.url}/toy/v1/builds: no list of build numbers")
        return [Entry(str(n), Kind.DIR, mtime=self.mount.mtime, immutable=True, source=_Build(self, n))
                for n in builds]

    async def lookup(self, name: str) -> Entry | None:
        return next((e for e in await self.list() if e.name == name), None)


class _Build:
    ttl = None
    complete = True

    def __init__(self, builds: _Builds, number: int) -> None:
        self.builds, self.number = builds, number

    async def list(self) -> list[Entry]:
        from ciartfs.errors import BadListing
        from ciartfs.namespace.model import Artifact, Entry, Kind
        from ciartfs.namespace.names import place_artifacts, tree_entries

        base, mtime = self.builds.url, self.builds.mount.mtime
        url = f"{base}/toy/v1/builds/{self.number}"
        doc = await self.builds.mount.docs.get_json(url)
        files = doc.get("files") if isinstance(doc, dict) else None
        if not isinstance(files, list) or not all(isinstance(f, dict) and isinstance(f.get("path"), str)
                                                  and type(f.get("size")) is int for f in files):
            raise BadListing(f"{url}: no list of files with a path and a size")
        tree = place_artifacts(((f["path"], f) for f in files), where=url, tiebreak=lambda f: str(f["size"]))
        host = urllib.parse.urlsplit(base).netloc

        def make_file(name: str, path: str, f: dict[str, Any]) -> Entry:
            artifact = Artifact(key=f"toy/{host}/{self.number}/{path}",
                                url=f"{url}/files/{urllib.parse.quote(path)}",
                                immutable=True, size=f["size"], credentialed=True)
            return Entry(name, Kind.FILE, mtime=mtime, immutable=True, artifact=artifact)

        return tree_entries(tree, make_file, mtime=mtime, immutable=True, ttl=None)

    async def lookup(self, name: str) -> Entry | None:
        return next((e for e in await self.list() if e.name == name), None)


# -- its API on the bundled fake server ---------------------------------------------------------

@dataclasses.dataclass
class _ToyBlob:
    """One file's bytes in the fake's blob store (see fakeserver.storage.Blob)."""

    blob_id: int
    stored: bytes
    storage_redirect: str | None = None
    expired: bool = False
    generated: None = None
    content_encoding: str | None = None


def fake_digest(build: int, path: str) -> str:
    return hashlib.sha256(FAKE_BUILDS[build][path]).hexdigest()


def routes(fake: FakeCI) -> list[Any]:
    """GET /toy/v1/builds, /toy/v1/builds/<n>, and /toy/v1/builds/<n>/files/<path> (a 302 to
    a presigned storage URL; only with the token)."""
    from ciartfs.fakeserver.routing import Reply, Request, Route
    from ciartfs.fakeserver.storage import next_blob_id

    blobs: dict[tuple[int, str], _ToyBlob] = {}
    for number, files in FAKE_BUILDS.items():
        for path, data in files.items():
            blobs[(number, path)] = blob = _ToyBlob(next_blob_id(), data)
            fake.blobs.add(blob)

    def handle(request: Request) -> None:
        if request.method != "GET":
            raise Reply(405, {"message": "method not allowed"})
        parts = [urllib.parse.unquote(p) for p in request.raw_path.split("/")][3:]  # after /toy/v1/
        if parts == ["builds"]:
            raise Reply(200, {"builds": sorted(FAKE_BUILDS)})
        if len(parts) < 2 or parts[0] != "builds" or not parts[1].isdigit() or int(parts[1]) not in FAKE_BUILDS:
            raise Reply(404, {"message": "no such build"})
        number = int(parts[1])
        if len(parts) == 2:
            raise Reply(200, {"files": [{"path": p, "size": len(d)} for p, d in FAKE_BUILDS[number].items()]})
        blob = blobs.get((number, "/".join(parts[3:]))) if parts[2] == "files" else None
        if blob is None:
            raise Reply(404, {"message": "no such file"})
        if request.headers.get(TOKEN_HEADER) != FAKE_TOKEN:
            raise Reply(401, {"message": "a Toy-Token is needed"})
        raise Reply(302, b"", headers={"Location": fake.blobs.presigned_url(fake.storage_url, blob.blob_id, 300)})

    return [Route("api", "/toy/v1/", handle)]
