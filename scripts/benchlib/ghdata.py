"""The benchmark's GitHub Actions data (issue 18, "Speed"): three artifact zips made on the fly
by the fake (ciartfs.fakeserver.generated_zip.GeneratedZip, never stored), each the one artifact
of its own workflow run, so that listing one run reads one archive's index only.

  large   500 MiB of stored, incompressible 1 MiB members (`blobs/00000.bin` ...): read one
  many    10,000 small stored members in 10 directories of 1,000: `ls -R`
  logs    2,000 deflated log-like members of 100 KiB (~200 MiB decoded, ~38 MiB stored):
          `grep -rl` for the label of one member (every other member is read whole)

The fake process (fakeci.py) serves them; the benchmark process builds the same archives (they
are seeded, and cheap to build: nothing is generated until read) to know the expected answers.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ciartfs.fakeserver.generated_zip import GeneratedZip

OWNER, REPO = "bench", "actions-data"
TOKEN = "ghp_bench0000000000000000000000000000000"  # the fake's; never a real one
LARGE, MANY, LOGS = "large", "many", "logs"  # the artifacts' names
LARGE_MEMBER = 123  # index of the member read in the `large` artifact
LOGS_MATCH = 1234  # index of the one `logs` member whose label the grep looks for


def archives(large_mib: int = 500, many: int = 10_000, logs: int = 2000) -> dict[str, GeneratedZip]:
    return {LARGE: GeneratedZip.large(large_mib << 20), MANY: GeneratedZip.many_members(many),
            LOGS: GeneratedZip.deflated(logs)}


def needle() -> str:
    """What `grep -rl` looks for: LOGS_MATCH's label (the logs' text never holds "member ")."""
    return f"member {LOGS_MATCH:07d}>"


def expected(zips: dict[str, GeneratedZip]) -> dict[str, Any]:
    """What the commands must answer: the member read and its SHA-256, the paths `ls -R` must
    show, the member `grep -rl` must find; and where each archive's central directory starts."""
    large = zips[LARGE]
    member = large.members[LARGE_MEMBER]
    digest = hashlib.sha256()
    for piece in large.member_read(LARGE_MEMBER):
        digest.update(piece)
    return {
        "large_member": member.name, "large_member_size": member.size, "large_member_sha256": digest.hexdigest(),
        "many_files": {m.name: m.size for m in zips[MANY].members},
        "logs_match": zips[LOGS].members[LOGS_MATCH].name,
        "logs_count": len(zips[LOGS].members),
        "central_offset": {name: z.central_offset for name, z in zips.items()},
        "archive_size": {name: z.size for name, z in zips.items()},
    }
