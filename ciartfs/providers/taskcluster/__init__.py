"""Taskcluster (queue v1, provider.py): `taskcluster/`, present when a root URL is configured.

Credentials come from the variables every Taskcluster client reads: $TASKCLUSTER_CLIENT_ID and
$TASKCLUSTER_ACCESS_TOKEN, and $TASKCLUSTER_CERTIFICATE for temporary credentials. They are
Hawk-signed per request, for the root URL's host only (provider.credential).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ciartfs.errors import ConfigError
from ciartfs.options import Option, OptionValues, parse_url
from ciartfs.providers.base import MountContext, Provider, ProviderMount

if TYPE_CHECKING:
    from ciartfs.net.credentials import Credential


@dataclasses.dataclass(frozen=True)
class TaskclusterSettings:
    root_url: str
    client_id: str | None = None
    access_token: str | None = dataclasses.field(default=None, repr=False)
    # temporary credentials' certificate (JSON text, signed by the issuer: kept out of logs too)
    certificate: str | None = dataclasses.field(default=None, repr=False)


class Taskcluster(Provider[TaskclusterSettings]):
    name = "taskcluster"
    title = "Taskcluster"
    options = (
        Option("taskcluster_root_url", "TASKCLUSTER_ROOT_URL", parse_url, None,
               "Taskcluster deployment; adds taskcluster/ (credentials: $TASKCLUSTER_CLIENT_ID, "
               "$TASKCLUSTER_ACCESS_TOKEN, and $TASKCLUSTER_CERTIFICATE for temporary credentials)"),
    )
    credential_help = "$TASKCLUSTER_CLIENT_ID and $TASKCLUSTER_ACCESS_TOKEN (and $TASKCLUSTER_CERTIFICATE)"
    example_path = "taskcluster/<taskId>/latest/public/build/"
    fake_modules = ("ciartfs.fakeserver.taskcluster", "ciartfs.fakeserver.livelog")  # the queue, a worker's livelog

    def load(self, given: OptionValues) -> TaskclusterSettings | None:
        env = given.env
        client_id = env.get("TASKCLUSTER_CLIENT_ID") or None
        access_token = env.get("TASKCLUSTER_ACCESS_TOKEN") or None
        # (checked even without a root URL: a half-set pair is a mistake worth one line)
        if bool(client_id) != bool(access_token):
            raise ConfigError("set both TASKCLUSTER_CLIENT_ID and TASKCLUSTER_ACCESS_TOKEN, or neither")
        certificate = (env.get("TASKCLUSTER_CERTIFICATE") or "").strip() or None
        if certificate is not None:
            if not client_id:
                raise ConfigError("TASKCLUSTER_CERTIFICATE is set without TASKCLUSTER_CLIENT_ID and "
                                  "TASKCLUSTER_ACCESS_TOKEN")
            try:
                parsed = json.loads(certificate)
            except (ValueError, RecursionError):
                parsed = None
            if not isinstance(parsed, dict):  # never quoted: it is a credential
                raise ConfigError("TASKCLUSTER_CERTIFICATE is not a JSON object (the certificate of temporary "
                                  "credentials)")
        root_url = given["taskcluster_root_url"]
        if root_url is None:
            return None
        return TaskclusterSettings(root_url, client_id, access_token, certificate)

    def demo(self, api_url: str, token: str) -> TaskclusterSettings:
        return TaskclusterSettings(api_url)  # public artifacts only: no client credentials

    def demo_examples(self, mountpoint: str) -> list[str]:
        from ciartfs.fakeserver.dataset import DEMO_TASK_GROUP

        group = f"{mountpoint}/taskcluster/group/{DEMO_TASK_GROUP}"
        return [f"ls -l {group}/ {group}/build-linux64/",
                f"tail -f {group}/lint/latest/public/logs/live.log   # a running task"]

    def api_urls(self, settings: TaskclusterSettings) -> list[str]:
        return [settings.root_url]

    def credentials(self, settings: TaskclusterSettings) -> list[Credential]:
        from ciartfs.providers.taskcluster.provider import credential

        cred = credential(settings.root_url, settings.client_id, settings.access_token, settings.certificate)
        return [cred] if cred is not None else []

    def secrets(self, settings: TaskclusterSettings) -> list[str]:
        return [s for s in (settings.access_token, settings.certificate) if s]

    def mount(self, settings: TaskclusterSettings, context: MountContext) -> ProviderMount:
        from ciartfs.providers.taskcluster import provider

        queue = provider.QueueApi(context.docs, settings.root_url)
        return ProviderMount([provider.root_entry(queue, ttl=context.ttl, mtime=context.mtime)])

    def status(self, settings: TaskclusterSettings) -> dict[str, Any]:
        return {"taskcluster_root_url": settings.root_url, "taskcluster_credentials": bool(settings.access_token)}

    def describe(self, status: Mapping[str, Any]) -> str | None:
        if not status.get("taskcluster_root_url"):
            return None
        return f"{status['taskcluster_root_url']}" + ("  (credentials set)" if status.get("taskcluster_credentials") else "")


PROVIDER = Taskcluster()
