"""Tier 4: URLs chosen by others, through real mounts. A CircleCI listing's `url`, a Taskcluster
`reference` artifact and any redirect may point at the machine's own services (the address rule)
or at the CI's own API (credential scope). Neither may turn into a readable file, and the rest
of the build stays readable.

The fake CI runs on loopback, so loopback is allowed (the demo works); the "internal" services
sit at this machine's private address, or, with the fake itself moved to that address, on
loopback. Link-local peers are tested in t1_addresses.py (a URL cannot name an IPv6 zone).
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ciartfs.fakeserver import FakeCI, InternalService
from ciartfs.fakeserver.internal import SECRET
from conftest import TOKEN, MountFactory, mounting, serving
from local_addresses import private_ipv4

STOP = "2026-11-01T10:00:00Z"
TC_ID, TC_TOKEN = "project/ciartfs/tester", "tc-access-token-xyz"
OK = b"an ordinary artifact\n"


def expect_errno(code: int, path: Path) -> None:
    with pytest.raises(OSError) as info:
        os.close(os.open(path, os.O_RDONLY))
    assert info.value.errno == code, f"{path}: {info.value}"


def slug(n: int) -> str:
    return f"uNtRuStD{'Q'}a{'C'}{n:010d}A"


@pytest.fixture
def private_service() -> Iterator[InternalService]:
    with InternalService(private_ipv4()) as service:
        yield service


@pytest.fixture
def loopback_service() -> Iterator[InternalService]:
    with InternalService("127.0.0.1") as service:
        yield service


def refusals(m, what: str) -> list[str]:
    """The WARNING lines (one per failed open) about a refused URL containing `what`."""
    return [line for line in m.log_text().splitlines()
            if " WARNING " in line and "refused to fetch" in line and what in line]


# -- finding 3: the address rule ----------------------------------------------------------------

def test_listing_urls_to_a_private_address_are_eacces_and_the_rest_reads(fake, mount, private_service,
                                                                        loopback_service):
    build = fake.add_project("github", "acme", "api").add_build(1, stop_time=STOP)
    build.add_artifact("ok.txt", OK)
    build.add_artifact("meta.txt", b"", url=private_service.url + "/latest/meta-data/iam/security-credentials/")
    # a chain: through an allowed (loopback) hop to the private address
    build.add_artifact("chain.txt", b"", url=loopback_service.redirect_url(
        loopback_service.redirect_url(private_service.url + "/admin")))
    m = mount()
    node = m.path / "github/acme/api/1/0"
    expect_errno(errno.EACCES, node / "meta.txt")
    expect_errno(errno.EACCES, node / "chain.txt")
    assert (node / "ok.txt").read_bytes() == OK  # the rest of the build is unaffected
    assert private_service.requests == []
    assert len(loopback_service.requests) >= 2  # the chain was followed, up to the refused hop
    # one log line each, naming the URL (and the hop refused)
    meta, chain = refusals(m, "/latest/meta-data/"), refusals(m, "redirected to " + private_service.url + "/admin")
    assert len(meta) == 1 and len(chain) == 1, m.log_text()
    assert all("private address" in line and "(EACCES)" in line for line in meta + chain)
    assert SECRET not in m.log_text()

    # --allow-private-addresses is the explicit override
    allowed = mount("--allow-private-addresses", name="allowed")
    assert SECRET.encode() in (allowed.path / "github/acme/api/1/0/meta.txt").read_bytes()
    assert len(private_service.requests) >= 1


def test_a_refused_artifact_leaves_its_directory_listable_and_grep_finds_no_secret(fake, mount, private_service):
    build = fake.add_project("github", "acme", "api").add_build(1, stop_time=STOP)
    build.add_artifact("ok.txt", OK)
    build.add_artifact("meta.txt", b"", url=private_service.url + "/latest/meta-data/iam/security-credentials/")
    m = mount()
    node = m.path / "github/acme/api/1/0"
    assert sorted(os.listdir(node)) == ["meta.txt", "ok.txt"]
    grep = subprocess.run(["grep", "-rl", "SecretAccessKey", str(m.path / "github/acme/api/1")],
                          capture_output=True, text=True, timeout=60)
    assert grep.stdout == "" and "meta.txt" in grep.stderr  # refused (EACCES), not read
    expect_errno(errno.EACCES, node / "meta.txt")
    assert private_service.requests == []


@pytest.fixture
def private_fake() -> Iterator[FakeCI]:
    """The fake CI at this machine's private address: private is allowed, loopback is not."""
    yield from serving(FakeCI(tokens={TOKEN}, host=private_ipv4()))


@pytest.fixture
def private_mount(tmp_path: Path, private_fake: FakeCI) -> Iterator[MountFactory]:
    yield from mounting(MountFactory(tmp_path, private_fake))


SPELLINGS = {"plain": "127.0.0.1", "decimal": "2130706433", "hex": "0x7f.1", "short": "127.1",
             "name": "localhost", "any": "0.0.0.0", "mapped": "[::ffff:127.0.0.1]"}


def test_every_spelling_of_loopback_is_eacces_when_the_api_host_is_not_on_loopback(private_fake, private_mount,
                                                                                   loopback_service):
    build = private_fake.add_project("github", "acme", "api").add_build(1, stop_time=STOP)
    build.add_artifact("ok.txt", OK)
    for name, host in SPELLINGS.items():
        build.add_artifact(f"{name}.txt", b"", url=f"http://{host}:{loopback_service.port}/admin/keys")
    m = private_mount()
    node = m.path / "github/acme/api/1/0"
    for name in SPELLINGS:
        expect_errno(errno.EACCES, node / f"{name}.txt")
    assert (node / "ok.txt").read_bytes() == OK  # private (the API host's class) is fetched
    assert loopback_service.requests == []
    assert len(refusals(m, "loopback address")) >= len(SPELLINGS)


def test_a_reference_artifact_to_a_private_address_is_eacces(fake, mount, private_service):
    fake.queue.clients[TC_ID] = TC_TOKEN
    run = fake.queue.add_task(slug(1)).add_run("completed")
    run.add_artifact("public/ok.txt", OK)
    run.add_artifact("public/metadata.json", storage_type="reference", url=private_service.url + "/computeMetadata/v1/")
    m = mount("--taskcluster-root-url", fake.api_url)
    run_dir = m.path / "taskcluster" / slug(1) / "0"
    expect_errno(errno.EACCES, run_dir / "public/metadata.json")
    assert (run_dir / "public/ok.txt").read_bytes() == OK
    assert private_service.requests == []
    assert refusals(m, "private address")


# -- finding 4: credentials only on requests the provider built ----------------------------------

def test_a_listing_url_never_takes_the_token_to_the_api_or_another_project(fake, mount):
    """A private project (the token is needed) whose listing points at the token's own /me,
    the same through dot segments, and another private project's artifact."""
    vault = fake.add_project("github", "acme", "vault", private=True).add_build(1, stop_time=STOP)
    hidden = vault.add_artifact("keys.txt", b"vault keys\n")
    build = fake.add_project("github", "acme", "secret", private=True).add_build(1, stop_time=STOP)
    build.add_artifact("ok.txt", OK)
    build.add_artifact("me.json", b"", url=fake.api_url + "/api/v1.1/me")
    build.add_artifact("dots.json", b"", url=fake.api_url + "/artifacts/github/acme/secret/1/0/../../../../../../api/v1.1/me")
    build.add_artifact("other.txt", b"", url=fake.artifact_url(fake.projects[("github", "acme", "vault")], vault, hidden))
    m = mount(token=TOKEN)
    node = m.path / "github/acme/secret/1/0"
    fake.clear_requests()
    assert (node / "ok.txt").read_bytes() == OK  # its own artifact route: with the token
    expect_errno(errno.EACCES, node / "me.json")  # asked without the token: 401
    expect_errno(errno.EACCES, node / "dots.json")
    expect_errno(errno.ENOENT, node / "other.txt")  # without the token a private project is hidden
    me = [r for r in fake.requests if r.path == "/api/v1.1/me"]
    assert len(me) >= 2 and all("circle-token" not in r.headers for r in me)
    vault_reads = [r for r in fake.requests if r.path.startswith("/artifacts/github/acme/vault/")]
    assert vault_reads and all("circle-token" not in r.headers for r in vault_reads)
    own = [r for r in fake.requests if r.path.startswith("/artifacts/github/acme/secret/")]
    assert own and all(r.headers.get("circle-token") == TOKEN for r in own)


def test_a_storage_hop_back_to_the_api_gets_no_token(fake, mount):
    build = fake.add_project("github", "acme", "secret", private=True).add_build(1, stop_time=STOP)
    build.add_artifact("ok.txt", OK)
    build.add_artifact("bounce.txt", b"never served", storage_redirect=fake.api_url + "/api/v1.1/me")
    m = mount(token=TOKEN)
    node = m.path / "github/acme/secret/1/0"
    expect_errno(errno.EACCES, node / "bounce.txt")
    assert (node / "ok.txt").read_bytes() == OK
    me = [r for r in fake.requests if r.path == "/api/v1.1/me"]
    assert me and all("circle-token" not in r.headers for r in me)


@pytest.fixture
def two_tasks(fake: FakeCI) -> FakeCI:
    """Task 2 has a private artifact; task 1, written by someone else, points at it."""
    fake.queue.clients[TC_ID] = TC_TOKEN
    victim = fake.queue.add_task(slug(2)).add_run("completed")
    victim.add_artifact("private/secret.txt", b"task 2's secret\n")
    private_url = f"{fake.api_url}/api/queue/v1/task/{slug(2)}/runs/0/artifacts/private/secret.txt"
    run = fake.queue.add_task(slug(1)).add_run("completed")
    run.add_artifact("public/ok.txt", OK)
    run.add_artifact("public/innocent.txt", storage_type="reference", url=private_url)
    run.add_artifact("private/bounce.txt", b"never served", storage_redirect=private_url)
    return fake


def test_a_reference_or_a_storage_hop_to_the_queue_gets_no_hawk_signature(two_tasks, mount):
    fake = two_tasks
    m = mount("--taskcluster-root-url", fake.api_url,
              env={"TASKCLUSTER_CLIENT_ID": TC_ID, "TASKCLUSTER_ACCESS_TOKEN": TC_TOKEN})
    tc = m.path / "taskcluster"
    fake.clear_requests()
    expect_errno(errno.EACCES, tc / slug(1) / "0/public/innocent.txt")  # a reference to it
    expect_errno(errno.EACCES, tc / slug(1) / "0/private/bounce.txt")  # storage redirecting to it
    assert (tc / slug(1) / "0/public/ok.txt").read_bytes() == OK
    to_secret = [r for r in fake.requests if r.path.endswith(f"/task/{slug(2)}/runs/0/artifacts/private/secret.txt")]
    assert len(to_secret) >= 2 and all("authorization" not in r.headers for r in to_secret)
    # the queue URL built here is still signed: the secret is readable where it belongs
    assert (tc / slug(2) / "0/private/secret.txt").read_bytes() == b"task 2's secret\n"
