"""CircleCI: API v1.1 (v1.py) and v2 (v2.py) as one provider, since they share a host and a token.

    github/, bitbucket/   <vcs>/<user>/<project>/... (v1.1; its pipeline/ is v2's)
    circleci/             <org-id>/<project-id>/<job-number>/... (v2 only)

The token comes from $CIRCLE_TOKEN or the file `circleci_token_file` names (see
base.load_token); it goes to the CircleCI host and its artifact hosts (v1.credential).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ciartfs.options import Option, OptionValues, parse_path, parse_url
from ciartfs.providers.base import MountContext, Provider, ProviderMount, load_token

if TYPE_CHECKING:
    from ciartfs.net.credentials import Credential

TOKEN_ENV_VARS = ("CIRCLE_TOKEN",)


@dataclasses.dataclass(frozen=True)
class CircleCISettings:
    host: str = "https://circleci.com"
    token: str | None = dataclasses.field(default=None, repr=False)

    @property
    def api(self) -> str:
        """The v1.1 API's base URL."""
        return self.host + "/api/v1.1"


class CircleCI(Provider[CircleCISettings]):
    name = "circleci"
    title = "CircleCI"
    options = (
        Option("circleci_host", "CIRCLECI_HOST", parse_url, "https://circleci.com",
               "CircleCI host; the v1.1 API is at URL/api/v1.1"),
        Option("circleci_token_file", "CIARTFS_CIRCLECI_TOKEN_FILE", parse_path, None,
               "file holding the CircleCI API token (else $CIRCLE_TOKEN)"),
    )
    credential_help = "$CIRCLE_TOKEN or --circleci-token-file"
    example_path = "github/acme/api/latest/0/"
    fake_modules = ("ciartfs.fakeserver.circleci_v1", "ciartfs.fakeserver.v2")

    def load(self, given: OptionValues) -> CircleCISettings:
        # Always in force: public projects need no token.
        return CircleCISettings(host=given["circleci_host"],
                                token=load_token(given, env_vars=TOKEN_ENV_VARS, file_key="circleci_token_file"))

    def demo(self, api_url: str, token: str) -> CircleCISettings:
        return CircleCISettings(host=api_url, token=token)

    def demo_examples(self, mountpoint: str) -> list[str]:
        project = f"{mountpoint}/github/acme/api"
        return [f"ls -l {project}/", f"ls -R {project}/latest/", f"grep -rl FAILED {project}/",
                f"sha256sum {project}/latest/0/dist/app.tar.gz"]

    def api_urls(self, settings: CircleCISettings) -> list[str]:
        return [settings.host]

    def credentials(self, settings: CircleCISettings) -> list[Credential]:
        from ciartfs.providers.circleci.v1 import credential

        cred = credential(settings.host, settings.token)
        return [cred] if cred is not None else []

    def secrets(self, settings: CircleCISettings) -> list[str]:
        return [settings.token] if settings.token else []

    def mount(self, settings: CircleCISettings, context: MountContext) -> ProviderMount:
        from ciartfs.providers.circleci import v1, v2

        token_set = bool(settings.token)
        api = v1.CircleCIApi(context.docs, settings.host, token_set=token_set)
        v2_api = v2.CircleCIV2Api(context.docs, settings.host, token_set=token_set, kept=api.kept)  # one cap per host
        ttl = context.ttl
        entries = v1.root_entries(
            api, recent_builds=context.recent_builds, ttl=ttl, mtime=context.mtime,
            extras=lambda vcs, user, project: [v2.pipelines_entry(v2_api, vcs, user, project, ttl)])
        entries.append(v2.v2_root_entry(v2_api, ttl=ttl, mtime=context.mtime))
        return ProviderMount(entries)

    def status(self, settings: CircleCISettings) -> dict[str, Any]:
        return {"circleci_host": settings.host, "circleci_token": bool(settings.token)}

    def describe(self, status: Mapping[str, Any]) -> str | None:
        if "circleci_host" not in status:
            return None
        return f"{status['circleci_host']}" + ("  (token set)" if status.get("circleci_token") else "")


PROVIDER = CircleCI()
