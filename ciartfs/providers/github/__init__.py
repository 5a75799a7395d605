"""GitHub Actions: `actions/<owner>/<repo>/<run_id>/<artifact>/<member path>` (tree.py, api.py).

Each artifact is a zip kept in blob storage that honours Range: its members are shown as
files by reading the zip's central directory (data/zipmember.py), and only the members read
are fetched. An artifact uploaded without zipping (`archive: false`) is the file itself.

Settings: the API's base URL (`--github-api-url`, $GITHUB_API_URL, default
https://api.github.com; GitHub Enterprise: https://HOST/api/v3). The token comes from $GH_TOKEN,
else $GITHUB_TOKEN (what `gh` reads), or the file `--github-token-file` names; never a flag's
value. It goes to the API's origin only, on requests built here: the artifact download's 302
leads to a blob host that must never see it (credentials.py, client.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ciartfs.options import Option, OptionValues, parse_path, parse_url
from ciartfs.providers.base import MountContext, Provider, ProviderMount, load_token

if TYPE_CHECKING:
    from ciartfs.net.credentials import Credential

TOKEN_ENV_VARS = ("GH_TOKEN", "GITHUB_TOKEN")
DEFAULT_API_URL = "https://api.github.com"


@dataclasses.dataclass(frozen=True)
class GitHubSettings:
    api_url: str = DEFAULT_API_URL
    token: str | None = dataclasses.field(default=None, repr=False)


class GitHubActions(Provider[GitHubSettings]):
    name = "github"
    title = "GitHub Actions"
    options = (
        Option("github_api_url", "GITHUB_API_URL", parse_url, DEFAULT_API_URL,
               "GitHub API base URL; adds actions/ (GitHub Enterprise: https://HOST/api/v3)"),
        Option("github_token_file", "CIARTFS_GITHUB_TOKEN_FILE", parse_path, None,
               "file holding the GitHub token (else $GH_TOKEN or $GITHUB_TOKEN)"),
    )
    credential_help = "$GH_TOKEN or $GITHUB_TOKEN, or --github-token-file"
    example_path = "actions/<owner>/<repo>/latest/<artifact>/"
    fake_modules = ("ciartfs.fakeserver.github",)

    def load(self, given: OptionValues) -> GitHubSettings:
        # Always in force: public repositories list without a token.
        return GitHubSettings(api_url=given["github_api_url"].rstrip("/"),
                              token=load_token(given, env_vars=TOKEN_ENV_VARS, file_key="github_token_file"))

    def demo(self, api_url: str, token: str) -> GitHubSettings:
        return GitHubSettings(api_url=api_url, token=token)

    def demo_examples(self, mountpoint: str) -> list[str]:
        repo = f"{mountpoint}/actions/acme/api"
        report = f"{repo}/workflow/ci.yml/latest/coverage-report"
        return [f"ls -l {repo}/ {repo}/latest/", f"ls -R {report}/", f"xdg-open {report}/index.html"]

    def api_urls(self, settings: GitHubSettings) -> list[str]:
        return [settings.api_url]

    def credentials(self, settings: GitHubSettings) -> list[Credential]:
        from ciartfs.providers.github.api import credential

        return [credential(settings.api_url, settings.token)]

    def secrets(self, settings: GitHubSettings) -> list[str]:
        return [settings.token] if settings.token else []

    def mount(self, settings: GitHubSettings, context: MountContext) -> ProviderMount:
        from ciartfs.providers.github import api, tree

        actions = api.ActionsApi(context.docs, settings.api_url, token_set=bool(settings.token))
        root = tree.root_entry(actions, context)
        return ProviderMount([root], live_status=actions.live_status)

    def status(self, settings: GitHubSettings) -> dict[str, Any]:
        return {"github_api_url": settings.api_url, "github_token": bool(settings.token)}

    def describe(self, status: Mapping[str, Any]) -> str | None:
        if not status.get("github_api_url"):
            return None
        line = f"{status['github_api_url']}" + ("  (token set)" if status.get("github_token") else "")
        remaining, reset = status.get("github_rate_remaining"), status.get("github_rate_reset")
        if isinstance(remaining, int):
            line += f"  rate limit: {remaining}"
            if isinstance(status.get("github_rate_limit"), int):
                line += f"/{status['github_rate_limit']}"
            line += " requests left"
            if isinstance(reset, (int, float)):
                import time

                line += time.strftime(", resets %H:%M:%S UTC", time.gmtime(reset))
        return line


PROVIDER = GitHubActions()
