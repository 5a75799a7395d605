"""Tier 1: the artifact path safety rules of tree.place_artifacts (documented in README)."""

import logging
import tracemalloc

import pytest
import trio

from ciartfs.namespace.model import Artifact, Entry, Kind, StaticDir
from ciartfs.namespace.names import (
    DIRS_FREE,
    DIRS_PER_FILE,
    MAX_DEPTH,
    FileTree,
    pack_files,
    packed_entries,
    place_artifacts,
    split_artifact_path,
    tree_entries,
)


def flatten(tree: FileTree, prefix: str = "") -> dict[str, object]:
    out = {prefix + name: value for name, value in tree.files.items()}
    for name, sub in tree.dirs.items():
        out.update(flatten(sub, prefix + name + "/"))
    return out


async def entry_values(directory, prefix: str) -> dict[str, object]:
    """Path -> the URL of each file below a directory's entries (what a reader of it sees)."""
    out: dict[str, object] = {}
    for entry in await directory.list():
        if entry.kind is Kind.DIR:
            out.update(await entry_values(entry.source, f"{prefix}{entry.name}/"))
        else:
            assert entry.artifact.key == prefix + entry.name
            out[prefix + entry.name] = entry.artifact.url
    return out


def place(paths, **kw):
    return flatten(place_artifacts([(p, f"url-{i}") for i, p in enumerate(paths)], where="t", **kw))


def test_leading_slash_and_empty_components_collapse():
    assert place(["/tmp/a.txt", "x//y///z", "trailing/"]) == {
        "tmp/a.txt": "url-0", "x/y/z": "url-1", "trailing": "url-2"}


@pytest.mark.parametrize("bad", ["../etc/passwd", "a/../../b", "./a", "a/./b", "a/..", "..", ".",
                                 "a\x00b", "x/" + "n" * 256, "", "/", "//", "\udc80bad"])
def test_unsafe_paths_are_skipped_with_a_warning(bad, caplog):
    with caplog.at_level(logging.WARNING):
        assert place([bad, "ok.txt"]) == {"ok.txt": "url-1"}
    assert "skipped" in caplog.text


def test_a_path_too_deep_is_skipped_and_the_rest_of_its_listing_still_builds(caplog):
    """One hostile path 1500 levels deep once took its whole listing down (RecursionError in
    the recursive listing code); now it is skipped like any unsafe path."""
    deepest_kept = "/".join(["d"] * (MAX_DEPTH - 1)) + "/f"
    with caplog.at_level(logging.WARNING):
        tree = place_artifacts([("/".join(["d"] * 1500) + "/f", "deep"), (deepest_kept, "kept"), ("ok", "ok")], where="t")
    assert "deeper than" in caplog.text
    assert flatten(tree) == {deepest_kept: "kept", "ok": "ok"}
    dirs, names, values = pack_files(tree)
    subdirs, packed = packed_entries(dirs, names, lambda path, i: Artifact(key=path, url=values[i]), mtime=0.0,
                                     immutable=True, ttl=None, info={})
    assert [e.name for e in subdirs] == ["d"] and packed is not None and packed.names == ["ok"]
    entries = tree_entries(tree, lambda name, path, value: Entry(name, Kind.FILE, mtime=0.0, immutable=True,
                                                                artifact=Artifact(key=path, url=value, immutable=True)),
                           mtime=0.0, immutable=True, ttl=None)
    assert sorted(e.name for e in entries) == ["d", "ok"]


def test_placing_deep_paths_costs_memory_in_proportion_to_the_listing(caplog):
    """500 distinct paths 255 levels deep (a 0.3 MB listing): placing them once made every
    path's every prefix (~175 MB), and each asks for 254 directories of a few hundred bytes.
    The directories a listing makes are bounded by its files: the paths past it are skipped,
    with one log line."""
    paths = ["/".join([f"p{i:03d}"] + ["d"] * (MAX_DEPTH - 2)) + "/f" for i in range(500)]
    tracemalloc.start()
    try:
        with caplog.at_level(logging.WARNING):
            tree = place_artifacts([(p, i) for i, p in enumerate(paths)], where="t")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    budget = DIRS_FREE + DIRS_PER_FILE * 500
    placed = budget // (MAX_DEPTH - 1)
    assert sorted(tree.dirs) == [f"p{i:03d}" for i in range(placed)]  # the first ones in order, whole
    assert flatten(tree.dirs["p000"]) == {"/".join(["d"] * (MAX_DEPTH - 2)) + "/f": 0}
    assert [r.getMessage()[:25] for r in caplog.records] == [f"t: skipped {500 - placed} artifacts,"]
    assert peak < 20 * 2**20, f"placing a 0.3 MB listing peaked at {peak / 2**20:.0f} MiB"


def test_a_build_with_more_directories_than_files_is_placed_whole():
    """Chains of one-file directories, as sharded test results have, are inside the budget."""
    paths = [f"results/shard-{i}/{i:x}/run/out.xml" for i in range(5000)]
    assert len(flatten(place_artifacts([(p, p) for p in paths], where="t"))) == 5000


def test_name_of_exactly_255_bytes_is_kept():
    name = "é" * 127 + "x"  # 255 bytes in UTF-8
    assert place([name]) == {name: "url-0"}
    assert isinstance(split_artifact_path("é" * 128), str)  # 256 bytes: refused


def test_duplicates_keep_the_smallest_tiebreak_whatever_the_order(caplog):
    items = [("a/b", "https://z"), ("a/b", "https://a"), ("/a//b", "https://m")]
    for order in (items, items[::-1], items[1:] + items[:1]):
        with caplog.at_level(logging.WARNING):
            assert flatten(place_artifacts(order, where="t")) == {"a/b": "https://a"}
    assert "duplicate" in caplog.text


def test_file_and_directory_collision_directory_wins(caplog):
    items = [("a", "u1"), ("a/b", "u2"), ("a/c/d", "u3"), ("a/c", "u4")]
    for order in (items, items[::-1]):
        with caplog.at_level(logging.WARNING):
            assert flatten(place_artifacts(order, where="t")) == {"a/b": "u2", "a/c/d": "u3"}
    assert "also a directory" in caplog.text


def test_non_string_path_is_refused():
    assert split_artifact_path(42) == "not a string"
    assert split_artifact_path(None) == "not a string"


def test_unicode_and_spaces_are_fine():
    assert place(["réports/ünïcode file.txt", "日本/語"]) == {
        "réports/ünïcode file.txt": "url-0", "日本/語": "url-1"}


# -- property-based: random hostile listings ---------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_component = st.one_of(
    st.sampled_from(["", ".", "..", "a", "b", "a b", "é", "x\x00y", "n" * 256, "ü" * 128, "日本"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=12),
)
_path = st.lists(_component, min_size=1, max_size=5).map("/".join) | st.lists(_component, max_size=4).map(
    lambda parts: "/" + "/".join(parts))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_path, st.text(max_size=3)), max_size=25), st.randoms())
def test_random_listings_keep_the_invariants(items, rnd):
    tree = place_artifacts(items, where="prop")
    flat = flatten(tree)
    # nothing escapes: every name is a safe, single component
    for path in flat:
        for part in path.split("/"):
            assert part not in ("", ".", "..") and "\x00" not in part
            assert len(part.encode("utf-8")) <= 255
    # deterministic whatever the order
    shuffled = list(items)
    rnd.shuffle(shuffled)
    assert flatten(place_artifacts(shuffled, where="prop")) == flat
    # every safe path is reachable unless another path needs it as a directory
    safe = {"/".join(p) for p in (split_artifact_path(path) for path, _ in items) if not isinstance(p, str)}
    dirs = {s.rsplit("/", 1)[0] for s in safe if "/" in s}
    dir_prefixes = {"/".join(d.split("/")[:i]) for d in dirs for i in range(1, d.count("/") + 2)}
    assert set(flat) == safe - dir_prefixes
    # packed (a listing kept once its nodes are gone), then made entries again: the same files
    dirs, names, values = pack_files(tree)
    assert not any("\0" in part for path in flat for part in path.split("/"))  # (names are NUL-joined)
    entries, files = packed_entries(dirs, names, lambda path, i: Artifact(path, values[i], True), mtime=0.0,
                                    immutable=True, ttl=None, info={})
    assert trio.run(entry_values, StaticDir(entries, files=files), "") == flat
    # a kept duplicate is the smallest value
    for path, value in flat.items():
        candidates = [v for p, v in items if not isinstance(split_artifact_path(p), str)
                      and "/".join(split_artifact_path(p)) == path]
        assert value == min(candidates, key=str)


def test_the_name_rule_refuses_what_no_file_name_can_be():
    from ciartfs.namespace.names import name_problem

    for bad in ("", ".", "..", "a/b", "a\x00b", "bad\ud800name", "x" * 256, "é" * 128):
        assert name_problem(bad), bad
    for good in ("a", "...", "x" * 255, "é" * 127, "report (1).xml", "%2F"):
        assert name_problem(good) is None, good
    assert split_artifact_path("logs/odd\udc00.log") == "a component is not valid UTF-8"


def test_v2_names_with_lone_surrogates_become_usable_names():
    from ciartfs.namespace.names import name_problem
    from ciartfs.providers.circleci.v2 import unique_names

    named = unique_names(["build\ud800", "build?", "ok"], name_of=lambda x: x, order_of=lambda x: 0)
    assert [name for name, _ in named] == ["build?", "build?~2", "ok"]
    assert all(name_problem(name) is None for name, _ in named)


def test_a_packed_listing_gives_each_file_its_columns_flags_info_and_apart_files_as_entries():
    """namespace/packed.py: what a provider keeps of an immutable listing. Each packed file's
    artifact and info are made from its own row; files kept apart come back as the entries
    `make_apart` makes, in their directories (one only they are in made too); a column value
    holding a NUL cannot be packed; the kept listings drop the least recently used past their cap."""
    from ciartfs.namespace.packed import KeptListings, pack, unpack

    paths = ["a/b/c.txt", "a/x.txt", "top.txt", "é/ü.bin", "only-apart/ref.txt", "a/ref.txt", "a/b/d.txt"]
    tree = place_artifacts([(p, f"url-{i}") for i, p in enumerate(paths)], where="t")
    packed = pack(tree, columns=lambda path, url: (url, path.upper()), width=2, flags=lambda path, url: len(path),
                  apart=lambda path, url: path.endswith("ref.txt"))
    assert packed is not None and len(packed) == 5 and sorted(p for p, _ in packed.apart) == ["a/ref.txt",
                                                                                             "only-apart/ref.txt"]

    def make(path: str, i: int) -> Artifact:
        assert packed.flags[i] == len(path)
        return Artifact(key=path, url=packed.text(0, i), immutable=True)

    entries, files = unpack(packed, make, mtime=0.0, immutable=True, ttl=None, info={"shared": "x"},
                            info_of=lambda path, i: {"upper": packed.text(1, i)},
                            make_apart=lambda name, path, url: Entry(name, Kind.FILE, artifact=Artifact(path, url, False)))
    top = StaticDir(entries, files=files)
    assert trio.run(entry_values, top, "") == {p: f"url-{i}" for i, p in enumerate(paths)}
    assert files is not None and files.names == ["top.txt"] and files.entry(0).info == {"upper": "TOP.TXT"}
    a = next(e for e in entries if e.name == "a").source
    assert a.files.names == ["x.txt"] and [e.name for e in trio.run(a.list_unpacked)] == ["b", "ref.txt"]
    assert not trio.run(a.lookup, "ref.txt").artifact.immutable  # apart: as `make_apart` made it
    assert pack(tree, columns=lambda path, url: (url + "\0" if path == "a/x.txt" else url,), width=1) is None

    kept: KeptListings[str] = KeptListings(limit=100)
    kept.put("one", "1", 40)
    kept.put("two", "2", 40)
    assert kept.get("one") == "1"  # used: "two" is now the least recently used
    kept.put("three", "3", 40)
    assert "two" not in kept and kept.get("one") == "1" and kept.get("three") == "3" and kept.size == 80
    kept.put("huge", "h", 101)
    assert "huge" not in kept and kept.size == 80


@pytest.mark.parametrize("urls", [
    [f"https://output.circle-artifacts.com/output/job/3c2c2d5e/artifacts/0/many/f{i:06d}.bin" for i in range(1000)],
    ["https://h/a", "https://h/ab", "https://h/a/c"],  # one value is the shared prefix itself
    ["https://h/only"],  # one file: nothing shared with another
    ["x", "y", "z"],  # nothing shared
])
def test_a_packed_column_keeps_what_its_values_share_once(urls):
    """A build's URLs differ only after their host, job and node: a packed column keeps that
    prefix once and the rest per file, and gives each value back whole."""
    from ciartfs.namespace.packed import pack

    tree = place_artifacts([(f"d/f{i:06d}", url) for i, url in enumerate(urls)], where="t")
    packed = pack(tree, columns=lambda path, url: (url,), width=1)
    assert packed is not None
    assert [packed.text(0, i) for i in range(len(urls))] == urls
    shared = len(urls[0]) - 12 if len(urls) == 1000 else 0  # 12: "f000123.bin" and its NUL
    assert len(packed.texts[0]) <= sum(len(u) + 1 for u in urls) - len(urls) * shared
    assert packed.size < sum(map(len, urls)) + 50 * len(urls) - len(urls) * shared


def test_a_column_whose_shared_prefix_holds_a_nul_is_not_packed():
    from ciartfs.namespace.packed import pack

    tree = place_artifacts([("a", "u\0a"), ("b", "u\0b")], where="t")
    assert pack(tree, columns=lambda path, url: (url,), width=1) is None
