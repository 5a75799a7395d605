"""The benchmark's seeded data: what the fake CircleCI and the static files host serve.

Build 1: one large random file (cold and warm reads). Build 2: 2000 small text "logs", a few
holding NEEDLE (grep -rl). Build 3: 1000 small files in one directory (ls -l). Build 4: a zip
of 2000 stored (uncompressed) members of random bytes (unzip -l: only its central directory,
at the end, needs to be read).
"""

from __future__ import annotations

import json
import random
import zipfile
from pathlib import Path
from typing import Any

from benchlib.common import MiB

PROJECT = ("github", "bench", "data")
BIG_BUILD, GREP_BUILD, LS_BUILD, ZIP_BUILD = 1, 2, 3, 4
BIG_PATH = "big.bin"
ZIP_PATH = "dist/packages.zip"
NEEDLE = "CIARTFS_BENCH_NEEDLE_7f3a"
SEED = 20261101
# bytes -> printable text (letters, digits, spaces, newlines): grep-able "logs" from random bytes
_TEXT = bytes((b"abcdefghijklmnopqrstuvwxyz0123456789      \n" * 6)[:256])


def text_bytes(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n).translate(_TEXT)


def make_zip(path: Path, rng: random.Random, members: int, total_mib: int) -> dict[str, int]:
    """A zip of `members` ZIP_STORED members of random (incompressible) bytes, about
    `total_mib` MiB in all; returns {member name: size}, what `unzip -l` must list."""
    mean = total_mib * MiB // members
    sizes: dict[str, int] = {}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for i in range(members):
            name = f"pkg/mod-{i // 10:04d}/data-{i:04d}.bin"
            info = zipfile.ZipInfo(name, date_time=(2026, 11, 4, 10, 0, 0))  # fixed: the same bytes every run
            info.compress_type = zipfile.ZIP_STORED
            body = rng.randbytes(rng.randint(mean * 4 // 5, mean * 6 // 5))
            zf.writestr(info, body)
            sizes[name] = len(body)
    return sizes


def generate(data: Path, size_mib: int, grep_files: int, ls_files: int, zip_members: int, zip_mib: int) -> dict[str, Any]:
    """Seeded data files and the manifest both servers load (see scripts/benchlib/fakeci.py)."""
    rng = random.Random(SEED)
    big = data / "big.bin"
    with open(big, "wb") as f:
        left = size_mib * MiB
        while left:
            n = min(left, 16 * MiB)
            f.write(rng.randbytes(n))
            left -= n
    grep_arts, needles = [], set()
    needle_idx = set(rng.sample(range(grep_files), max(1, grep_files // 300)))
    (data / "grep").mkdir()
    for i in range(grep_files):
        path = f"reports/shard-{i % 20:02d}/test-{i:04d}.log"
        body = bytearray(text_bytes(rng, rng.randint(1024, 20 * 1024)))
        if i in needle_idx:
            at = rng.randrange(len(body) - len(NEEDLE))
            body[at:at + len(NEEDLE)] = NEEDLE.encode()
            needles.add(path)
        local = data / "grep" / f"{i:04d}"
        local.write_bytes(body)
        grep_arts.append([path, str(local)])
    ls_arts, ls_sizes = [], {}
    (data / "ls").mkdir()
    for i in range(ls_files):
        name = f"file-{i:04d}.txt"
        body = text_bytes(rng, rng.randint(100, 4000))
        local = data / "ls" / name
        local.write_bytes(body)
        ls_arts.append([f"many/{name}", str(local)])
        ls_sizes[name] = len(body)
    zip_local = data / "packages.zip"
    zip_sizes = make_zip(zip_local, rng, zip_members, zip_mib)
    manifest = {"project": list(PROJECT), "builds": [
        {"num": BIG_BUILD, "stop_time": "2026-11-01T10:00:00Z", "artifacts": [[BIG_PATH, str(big)]]},
        {"num": GREP_BUILD, "stop_time": "2026-11-02T10:00:00Z", "artifacts": grep_arts},
        {"num": LS_BUILD, "stop_time": "2026-11-03T10:00:00Z", "artifacts": ls_arts},
        {"num": ZIP_BUILD, "stop_time": "2026-11-04T10:00:00Z", "artifacts": [[ZIP_PATH, str(zip_local)]]},
    ]}
    (data / "manifest.json").write_text(json.dumps(manifest))
    return {"big": big, "needles": needles, "ls_sizes": ls_sizes, "zip": zip_local, "zip_sizes": zip_sizes}
