"""Tier 4: random hostile artifact listings through one real mount (hypothesis).

Each example is a new build of random paths (unicode, '..', '.', '//', NUL, duplicates,
file/dir collisions, names over 255 bytes). Through the kernel: nothing escapes the node
directory, the tree is the same when listed twice, every safe artifact is reachable with its
bytes, and the mount keeps answering."""

from __future__ import annotations

import itertools
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_component = st.one_of(
    st.sampled_from(["", ".", "..", "a", "b", "a b", "é", "x\x00y", "n" * 256, "ü" * 128, "日本", "-rf", "*"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/"), min_size=1, max_size=10),
)
_path = st.lists(_component, min_size=1, max_size=4).map("/".join) | st.lists(_component, max_size=3).map(
    lambda parts: "/" + "/".join(parts))

_builds = itertools.count(1)


def expected_tree(paths: list[str]) -> set[str]:
    """The safe paths (rules as documented in the README), computed independently."""
    safe = set()
    for p in paths:
        parts = [c for c in p.split("/") if c]
        if not parts or "\x00" in p or any(c in (".", "..") or len(c.encode()) > 255 for c in parts):
            continue
        safe.add("/".join(parts))
    dirs = {"/".join(s.split("/")[:i]) for s in safe for i in range(1, s.count("/") + 1)}
    return safe - dirs


def walk(root: str) -> dict[str, int]:
    found = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            full = os.path.join(dirpath, name)
            assert os.path.realpath(full).startswith(os.path.realpath(root) + os.sep), full
            found[os.path.relpath(full, root)] = os.stat(full).st_size
    return found


def test_random_listings_through_a_real_mount(fake, mount):
    project = fake.add_project("github", "prop", "paths")
    m = mount()

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(_path, min_size=1, max_size=10))
    def check(paths: list[str]) -> None:
        num = next(_builds)
        build = project.add_build(build_num=num, stop_time="2026-11-01T10:00:00Z")
        data = {}
        for i, p in enumerate(paths):
            payload = f"{num}:{i}:{p!r}\n".encode("utf-8", "surrogateescape")
            build.add_artifact(p, payload)
            data.setdefault("/".join(c for c in p.split("/") if c), []).append(payload)
        node = m.path / "github/prop/paths" / str(num) / "0"
        expected = expected_tree(paths)
        if not expected:
            assert not node.exists()
            return
        first = walk(str(node))
        assert set(first) == expected
        assert walk(str(node)) == first  # deterministic
        for rel, size in first.items():
            content = (node / rel).read_bytes()
            assert content in data[rel] and size == len(content)
        assert sorted(os.listdir(m.path)) == ["actions", "bitbucket", "circleci", "github"]  # still answering

    check()
    assert next(_builds) > 30, "hypothesis ran the examples"
    found = [b for b in project.builds.values() if b.artifacts]
    assert len(found) > 30
