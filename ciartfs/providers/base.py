"""The Provider contract: everything one CI system brings to a mount, behind one interface.

A CI system is one package under providers/ whose provider object is one line in
providers/registry.py. Nothing outside its package names it: config.py, mount.py, the CLI and
`ciartfs status` reach it only through this interface.

A provider is generic over its own settings type `S` (a frozen dataclass of its own): `load`
makes one from its options and credential sources, and every other method is given it back.

Invariants every provider keeps:
- Its options' keys begin with its name and an underscore (`circleci_host`), and their
  environment variables are its own: no clash with the core settings or another provider.
- A secret never comes from an option's value (a flag shows in `ps`; config files are
  shared): it comes from environment variables, or from a file an option names (`load_token`).
- `secrets()` names every secret its settings hold (logs redact them), and its settings'
  `repr` shows none of them.
- Credentials go only where the `Credential` objects from `credentials()` say, and only on
  requests the provider built (net/client.py enforces both). The address rule trusts the hosts
  of `api_urls()` (and addresses like theirs), nothing more on its behalf.
- What `status()` publishes holds no secret (whether one is set, at most), under keys that
  begin with its name; `describe()` turns that back into one line for `ciartfs status`.
- Importing a provider's package is cheap: every command reads every provider's options
  (even `--help`), so API modules (httpx, trio) are imported when a mount is built.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ciartfs.errors import ConfigError
from ciartfs.options import Option, OptionValues

if TYPE_CHECKING:
    from ciartfs.data.zipmember import ZipArchives
    from ciartfs.namespace.model import Entry
    from ciartfs.net.credentials import Credential
    from ciartfs.providers.apidocs import ApiDocs

S = TypeVar("S")


@dataclasses.dataclass(frozen=True)
class MountContext:
    """What a mount lends its providers to build their directories with."""

    docs: ApiDocs  # API answers: fetched, parsed, kept for --offline (docs.http: the HTTP client)
    recent_builds: int  # how many recent builds (runs, tasks) a listing shows
    ttl: float  # seconds before 'latest' links and listings that can change are asked again
    mtime: float  # the mount's start: the mtime of fixed directories
    # zip artifacts' members as files: `await archives.members(archive, where=, mtime=)`
    # (data/zipmember.py): the top-level entries of its member tree, or None (show it as a file)
    archives: ZipArchives


@dataclasses.dataclass(frozen=True)
class ProviderMount:
    """What a provider adds to one mount."""

    root_entries: list[Entry]  # its top-level directories (names unique across providers)
    # What changes while mounted, for `ciartfs status` (e.g. a rate-limit budget): keys
    # `<name>_...`, no secrets; called at every status publish, on the mount's thread.
    live_status: Callable[[], dict[str, Any]] = dict


class Provider(abc.ABC, Generic[S]):
    """One CI system: its settings, credentials, API hosts, top-level directories, status.

    Class attributes: `name` (the prefix of its option keys and status keys, e.g. "circleci"),
    `title` (for people: "CircleCI"), `options` (its settings; see options.Option), and for
    the CLI's help: `credential_help` (where its credentials come from) and `example_path` (a
    directory of one build's artifacts inside a mount). `fake_modules` name the modules that
    serve its API on the bundled fake server (tests, `ciartfs demo`): each has
    `routes(fake) -> list[Route]` (see fakeserver/routing.py); named, not imported, so that
    a mount never loads the fake."""

    name: str
    title: str
    options: tuple[Option, ...] = ()
    credential_help: str = ""
    example_path: str = ""
    fake_modules: tuple[str, ...] = ()

    @abc.abstractmethod
    def load(self, given: OptionValues) -> S | None:
        """Its settings, credentials included, from its options' values (`given[key]`) and
        the environment (`given.env`); None when it is not configured, and then it adds
        nothing to the mount. A bad value raises ConfigError, one line that quotes no secret."""

    @abc.abstractmethod
    def demo(self, api_url: str, token: str) -> S | None:
        """Settings that point at the bundled fake server at `api_url` (`ciartfs demo`),
        where `token` is accepted; None if the fake does not serve this system."""

    def demo_examples(self, mountpoint: str) -> list[str]:
        """Commands to try on the demo's data under `mountpoint` (printed by `ciartfs demo`)."""
        return []

    @abc.abstractmethod
    def api_urls(self, settings: S) -> list[str]:
        """The base URLs of the APIs it talks to. Their hosts are what the address rule
        compares artifact hosts with: loopback or private API hosts admit such addresses."""

    @abc.abstractmethod
    def credentials(self, settings: S) -> list[Credential]:
        """The credentials in force, each scoped to the origins it may be sent to."""

    @abc.abstractmethod
    def secrets(self, settings: S) -> list[str]:
        """Every secret the settings hold, as it could appear in a log line."""

    @abc.abstractmethod
    def mount(self, settings: S, context: MountContext) -> ProviderMount:
        """Its API clients over `context.docs`, and what they add to this mount."""

    @abc.abstractmethod
    def status(self, settings: S) -> dict[str, Any]:
        """Its settings for `ciartfs status` (and its --json), keys `<name>_...`, no secrets."""

    @abc.abstractmethod
    def describe(self, status: Mapping[str, Any]) -> str | None:
        """One line for `ciartfs status` from the published settings (its own keys among
        others, perhaps from another version), or None when they do not mention it."""

    def __repr__(self) -> str:
        return f"<provider {self.name}>"


@dataclasses.dataclass(frozen=True)
class Configured(Generic[S]):
    """A provider in force in one mount, with its settings."""

    provider: Provider[S]
    settings: S

    @property
    def name(self) -> str:
        return self.provider.name

    def api_urls(self) -> list[str]:
        return self.provider.api_urls(self.settings)

    def credentials(self) -> list[Credential]:
        return self.provider.credentials(self.settings)

    def secrets(self) -> list[str]:
        return self.provider.secrets(self.settings)

    def mount(self, context: MountContext) -> ProviderMount:
        return self.provider.mount(self.settings, context)

    def status(self) -> dict[str, Any]:
        return self.provider.status(self.settings)


def check_providers(providers: Sequence[Provider[Any]], core: Sequence[Option]) -> None:
    """Names, option keys and environment variables are each one provider's (see above)."""
    names: set[str] = set()
    keys, envs = {o.key for o in core}, {o.env for o in core if o.env}
    for p in providers:
        if p.name in names or not p.name.isidentifier():
            raise ConfigError(f"provider name {p.name!r} is taken or not an identifier")
        names.add(p.name)
        for opt in p.options:
            if not opt.key.startswith(p.name + "_"):
                raise ConfigError(f"provider {p.name}: option {opt.key} does not begin with '{p.name}_'")
            if opt.key in keys or (opt.env and opt.env in envs):
                raise ConfigError(f"provider {p.name}: option {opt.key} (${opt.env}) is another setting's too")
            keys.add(opt.key)
            if opt.env:
                envs.add(opt.env)


# -- credential sources ------------------------------------------------------------------------

def read_token_file(path: Path) -> str:
    """The one token a file holds (surrounding whitespace ignored); the message never quotes it."""
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read token file {path}: {e.strerror}") from None
    if not token or any(c.isspace() for c in token):
        raise ConfigError(f"token file {path} must hold one token on one line")
    return token


def load_token(given: OptionValues, *, env_vars: Sequence[str], file_key: str) -> str | None:
    """An API token, from the first source that has one: a token file given as a flag, the
    environment variables in order, then a token file from the environment or config file.
    (A flag is the most specific request; a token file in the config file is the fallback
    that a variable exported for one command may override.)"""
    path: Path | None = given[file_key]
    if path is not None and given.from_flag(file_key):
        return read_token_file(path)
    for var in env_vars:
        if given.env.get(var):
            return given.env[var].strip()
    return read_token_file(path) if path is not None else None
