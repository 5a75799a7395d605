"""The Provider contract (providers/base.py): the built-in providers keep it, nothing outside
providers/ names one, and a provider from outside (tests/toy_provider.py, one registry line
through $CIARTFS_EXTRA_PROVIDERS) gets its settings, credentials, status line and mount."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import toy_provider
from ciartfs import status
from ciartfs.config import all_options, load_settings
from ciartfs.errors import CiartfsError, ConfigError
from ciartfs.fakeserver import FakeCI
from ciartfs.fakeserver.server import API_MODULES, SHARED_MODULES, api_modules_for
from ciartfs.options import Option, OptionValues, parse_url
from ciartfs.providers import registry
from ciartfs.providers.base import Provider, check_providers
from conftest import TOKEN, clean_env, serving, wait_for

ROOT = Path(__file__).resolve().parent.parent
TOY_ENV = {registry.EXTRA_PROVIDERS_ENV: "toy_provider:PROVIDER"}


def with_toy() -> tuple[Provider[Any], ...]:
    return registry.providers(TOY_ENV)


# -- the built-in providers --------------------------------------------------------------------

def test_every_registered_provider_keeps_the_naming_rules() -> None:
    providers = registry.providers({})
    assert [p.name for p in providers] == ["circleci", "taskcluster", "github"]
    check_providers(providers, all_options(()))  # raises on a clash
    for p in providers:
        assert p.options and all(o.key.startswith(p.name + "_") for o in p.options)
        assert p.title and p.credential_help and p.example_path


def test_every_api_of_the_fake_server_belongs_to_one_provider() -> None:
    """The fake serves by default what the built-in providers name: no API module is orphaned
    or claimed twice, and each one has routes."""
    claimed = [m for p in registry.PROVIDERS for m in p.fake_modules]
    assert len(claimed) == len(set(claimed)) and not set(claimed) & set(SHARED_MODULES)
    assert set(API_MODULES) == set(claimed) | set(SHARED_MODULES)
    fakeserver = ROOT / "ciartfs/fakeserver"
    with_routes = {f"ciartfs.fakeserver.{path.stem}" for path in fakeserver.glob("*.py")
                   if re.search(r"^def routes\(", path.read_text(), re.M)}
    assert with_routes == set(API_MODULES)
    for name in API_MODULES:
        assert callable(importlib.import_module(name).routes)


def test_no_provider_is_named_outside_its_package() -> None:
    """config, mount, the CLI and status reach providers only through the contract."""
    files = [ROOT / "ciartfs/config.py", ROOT / "ciartfs/mount.py", ROOT / "ciartfs/status.py",
             *sorted((ROOT / "ciartfs/cli").glob("*.py"))]
    words = {w for p in registry.PROVIDERS for w in (p.name, p.title)} | {"circle", "CIRCLE_TOKEN", "TASKCLUSTER_"}
    for path in files:
        text = path.read_text()
        found = sorted(w for w in words if w.lower() in text.lower())
        assert not found, f"{path.relative_to(ROOT)} names {found}"


def test_a_clash_between_providers_is_a_one_line_error() -> None:
    class SameVariable(toy_provider.ToyCI):
        name, options = "toy2", (Option("toy2_url", "TOY_URL", parse_url, None, "x"),)

    with pytest.raises(ConfigError, match=r"provider toy2: option toy2_url \(\$TOY_URL\) is another setting's"):
        load_settings({}, env={}, providers=(toy_provider.PROVIDER, SameVariable()))

    class Unprefixed(toy_provider.ToyCI):
        name = "other"
    with pytest.raises(ConfigError, match="option toy_url does not begin with 'other_'"):
        all_options((Unprefixed(),))
    with pytest.raises(ConfigError, match="taken"):
        all_options((toy_provider.PROVIDER, toy_provider.ToyCI()))

    class CoreVariable(toy_provider.ToyCI):
        options = (Option("toy_url", "CIARTFS_CACHE_DIR", parse_url, None, "x"),)
    with pytest.raises(ConfigError, match=r"\$CIARTFS_CACHE_DIR\) is another setting's"):
        all_options((CoreVariable(),))


@pytest.mark.parametrize("spec,why", [("no_such_module_xyz:PROVIDER", "cannot load"),
                                      ("toy_provider:NOPE", "cannot load"),
                                      ("toy_provider:FAKE_TOKEN", "is not a Provider")])
def test_a_bad_extra_provider_is_a_one_line_error(spec: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        registry.providers({registry.EXTRA_PROVIDERS_ENV: spec})


def test_a_bad_extra_provider_stops_the_cli_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, registry.EXTRA_PROVIDERS_ENV: "no_such_module_xyz"}
    result = subprocess.run([sys.executable, "-m", "ciartfs", "status"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("ciartfs: $CIARTFS_EXTRA_PROVIDERS: cannot load 'no_such_module_xyz'")
    assert "Traceback" not in result.stderr


# -- the toy provider: settings and credentials ---------------------------------------------------

def test_the_toy_providers_options_and_credential_are_settings(tmp_path: Path) -> None:
    env = {"TOY_URL": "https://toy.example/", "TOY_TOKEN": "toy-tok-1"}
    s = load_settings({}, env=env, providers=with_toy())
    toy = s.provider("toy")
    assert toy.url == "https://toy.example" and toy.token == "toy-tok-1"  # parsed as URLs are
    assert "toy-tok-1" in s.secrets() and "toy-tok-1" not in repr(s)
    assert s.provider("circleci") is not None  # the built-in ones stay in force beside it
    # flag > env > config, and a token file given as a flag beats the variable
    tok = tmp_path / "tok"
    tok.write_text("from-file\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text('toy_url = "https://file.example"\n')
    s = load_settings({"toy_token_file": str(tok)}, env={"TOY_TOKEN": "env"}, config_path=cfg, providers=with_toy())
    assert s.provider("toy") == toy_provider.ToySettings("https://file.example", "from-file")
    assert load_settings({"toy_url": "http://flag.example"}, env=env, providers=with_toy()).provider("toy").url \
        == "http://flag.example"
    # not configured: not in force; without the registry line its key is unknown
    assert load_settings({}, env={}, providers=with_toy()).provider("toy") is None
    with pytest.raises(ConfigError, match="unknown key"):
        load_settings({}, env={}, config_path=cfg)
    with pytest.raises(ConfigError, match=r"\$TOY_URL"):
        load_settings({}, env={"TOY_URL": "ftp://x"}, providers=with_toy())


def test_the_cli_takes_the_toy_providers_flags_and_mount_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ciartfs.cli.parser import build_parser, settings_from_args

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))
    monkeypatch.delenv("CIARTFS_CONFIG", raising=False)
    monkeypatch.delenv("TOY_TOKEN", raising=False)
    monkeypatch.setenv(registry.EXTRA_PROVIDERS_ENV, TOY_ENV[registry.EXTRA_PROVIDERS_ENV])
    parser = build_parser()
    assert "Toy CI" in parser.format_help()
    args = parser.parse_args(["mount", str(tmp_path), "--toy-url", "https://toy.example"])
    assert settings_from_args(args).provider("toy") == toy_provider.ToySettings("https://toy.example")
    args = parser.parse_args(["mount", str(tmp_path), "-o", "toy_url=https://o.example"])
    assert settings_from_args(args).provider("toy").url == "https://o.example"
    with pytest.raises(SystemExit):  # never a flag value: there is no such flag
        parser.parse_args(["mount", str(tmp_path), "--toy-token", "x"])


def test_the_mount_gives_the_toy_its_credential_address_rule_and_status(tmp_path: Path) -> None:
    from ciartfs.mount import Mount, api_hosts
    from ciartfs.net.addresses import AddressClass

    env = {"TOY_URL": "http://10.1.2.3:9", "TOY_TOKEN": "toy-tok-2", "CIARTFS_CACHE_DIR": str(tmp_path / "c"),
           "CIARTFS_OFFLINE": "1"}  # (nothing is asked of 10.1.2.3)
    s = load_settings({}, env=env, providers=with_toy())
    assert api_hosts(s) == ["circleci.com", "api.github.com", "10.1.2.3"]
    mount = Mount(s)
    assert AddressClass.PRIVATE in mount.address_rule.allowed  # its API host is private
    toy_creds = [c for p in s.providers for c in p.credentials() if c.applies_to("http://10.1.2.3:9/toy/v1/builds")]
    assert len(toy_creds) == 1 and toy_creds[0].headers_for("GET", "http://10.1.2.3:9/x") == {"Toy-Token": "toy-tok-2"}
    assert not toy_creds[0].applies_to("http://10.1.2.3:10/x")  # its origin only
    doc = mount.status(0)
    assert doc["settings"]["toy_url"] == "http://10.1.2.3:9" and doc["settings"]["toy_token"] is True
    assert "toy-tok-2" not in repr(doc)
    assert doc["settings"]["toy_listings"] == 0  # its live status
    root = trio.run(mount.tree.root.source.list)
    assert [e.name for e in root] == ["github", "bitbucket", "circleci", "actions", "toy"]  # registry order
    toy_dir = next(e for e in root if e.name == "toy").source
    with pytest.raises(CiartfsError):  # offline, nothing cached: the listing fails, and is counted
        trio.run(toy_dir.list)
    assert mount.status(0)["settings"]["toy_listings"] == 1


def test_two_providers_cannot_show_the_same_top_level_name(tmp_path: Path) -> None:
    from ciartfs.mount import Mount

    class Squatter(toy_provider.ToyCI):
        name, options = "squatter", (Option("squatter_url", None, parse_url, "http://s.example", "x"),)

        def load(self, given: OptionValues) -> toy_provider.ToySettings:
            return toy_provider.ToySettings(given["squatter_url"])

    s = load_settings({"cache_dir": str(tmp_path / "c")}, env={"TOY_URL": "http://t.example"},
                      providers=(*with_toy(), Squatter()))
    with pytest.raises(ConfigError, match="provider squatter: top-level name 'toy' is taken"):
        Mount(s)


def test_the_status_line_is_the_providers_own(monkeypatch: pytest.MonkeyPatch) -> None:
    doc: dict[str, Any] = {"pid": 7, "uptime": 1.0, "mountpoint": "/m",
                           "settings": {"circleci_host": "https://c", "circleci_token": True,
                                        "toy_url": "http://t", "toy_token": False, "cache_dir": "/c",
                                        "cache_size": 1, "memory_cache": 1},
                           "stats": {"memory_hits": 0, "disk_hits": 0, "misses": 0, "http_requests": 0,
                                     "bytes_fetched": 0, "bytes_served": 0},
                           "disk_bytes": 0, "memory_bytes": 0, "errors": {}}
    assert "Toy CI" not in status.format_status(doc)
    monkeypatch.setenv(registry.EXTRA_PROVIDERS_ENV, TOY_ENV[registry.EXTRA_PROVIDERS_ENV])
    lines = status.format_status(doc).splitlines()
    assert "  CircleCI:       https://c  (token set)" in lines and "  Toy CI:         http://t" in lines
    assert not any("Taskcluster" in line for line in lines)  # it published nothing


def test_the_demo_points_every_provider_at_the_fake() -> None:
    for p in with_toy():
        demo = p.demo("http://127.0.0.1:1", "demo-token")
        assert demo is not None and p.api_urls(demo) == ["http://127.0.0.1:1"]
        assert dataclasses.is_dataclass(demo)


# -- the toy provider through a real mount ---------------------------------------------------------

TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture
def fake() -> Iterator[FakeCI]:
    """The fake server with the toy's API too: the routes its provider's `fake_modules` name."""
    yield from serving(FakeCI(tokens={TOKEN}, api_modules=api_modules_for(with_toy())))


def toy_env(**extra: str) -> dict[str, str]:
    """What a ciartfs process needs to load the toy provider: the registry line, the module's folder."""
    return {**TOY_ENV, "PYTHONPATH": str(TESTS_DIR), **extra}


def test_the_toy_provider_mounts_and_its_files_read_with_ordinary_tools(mount: Any, fake: FakeCI,
                                                                        tmp_path: Path) -> None:
    m = mount("--toy-url", fake.api_url, env=toy_env(TOY_TOKEN=toy_provider.FAKE_TOKEN))
    toy = m.path / "toy"
    assert sorted(os.listdir(m.path)) == ["actions", "bitbucket", "circleci", "github", "toy"]
    assert sorted(os.listdir(toy)) == ["1", "2"]
    found = subprocess.run(["find", str(toy), "-type", "f"], capture_output=True, text=True, timeout=60, check=True)
    expected = {f"{n}/{path}": data for n, files in toy_provider.FAKE_BUILDS.items() for path, data in files.items()}
    assert sorted(os.path.relpath(line, toy) for line in found.stdout.splitlines()) == sorted(expected)
    sums = subprocess.run(["sha256sum", *expected], cwd=toy, capture_output=True, text=True, timeout=60, check=True)
    assert sums.stdout == "".join(f"{hashlib.sha256(data).hexdigest()}  {path}\n" for path, data in expected.items())
    assert {path: os.stat(toy / path).st_size for path in expected} == {p: len(d) for p, d in expected.items()}
    cat = subprocess.run(["cat", str(toy / "1/hello.txt")], capture_output=True, timeout=60, check=True)
    assert cat.stdout == b"hello from the toy CI\n"

    # Its token went to its own API on the requests its provider built, never to storage.
    asked = [r for r in fake.requests if r.server == "api" and r.path.startswith("/toy/v1/builds/1/files/")]
    assert asked and all(r.headers.get("toy-token") == toy_provider.FAKE_TOKEN for r in asked)
    stored = [r for r in fake.requests if r.server == "storage"]
    assert stored and not any("toy-token" in r.headers for r in stored)
    assert toy_provider.FAKE_TOKEN not in m.log_text()

    # `ciartfs status`, in a process with the same registry line, shows its line, not its token.
    shown = subprocess.run([sys.executable, "-m", "ciartfs", "status", str(m.path)], capture_output=True,
                           text=True, timeout=60, env=clean_env(tmp_path, **toy_env()))
    assert shown.returncode == 0, shown.stderr
    assert f"  Toy CI:         {fake.api_url}  (token set)\n" in shown.stdout
    assert toy_provider.FAKE_TOKEN not in shown.stdout

    def published() -> dict[str, Any]:  # (read without the registry line: plain JSON)
        out = subprocess.run([sys.executable, "-m", "ciartfs", "status", "--json", str(m.path)],
                             capture_output=True, text=True, timeout=60, env=clean_env(tmp_path), check=True).stdout
        assert toy_provider.FAKE_TOKEN not in out
        settings: dict[str, Any] = json.loads(out)[0]["settings"]
        return settings

    assert published()["toy_url"] == fake.api_url and published()["toy_token"] is True
    # its live status, republished as the mount runs: the listings done above are counted
    assert wait_for(lambda: published()["toy_listings"] >= 1, timeout=3 * status.PUBLISH_INTERVAL + 10)


def test_without_its_token_the_toys_files_are_eacces(mount: Any, fake: FakeCI) -> None:
    m = mount("--toy-url", fake.api_url, env=toy_env())
    m.expect_errors = True  # the refusal is logged
    assert sorted(os.listdir(m.path / "toy/1")) == ["hello.txt", "logs"]  # listings need no token
    with pytest.raises(PermissionError):
        (m.path / "toy/1/hello.txt").read_bytes()
