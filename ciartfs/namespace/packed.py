"""Immutable listings kept packed: one seam for every provider whose listings can never change
(a completed CircleCI build or job, a resolved Taskcluster run).

Listing such a directory again after the kernel forgot it (a re-list, or `ls` of a build seen
before) should cost the tree's nodes, not the listing's JSON again: parsing, placing and
checking 100k artifacts cost several times the listing itself. So a provider keeps what it
placed, packed (a few flat objects per directory instead of three per file), in a
`KeptListings` (one per API host, least recently used dropped beyond its byte cap, so that
browsing builds plateaus), and makes the directory's entries from it each time it is listed:

    tree = place_artifacts(...)                            # names.py: the one rule for paths
    packed = pack(tree, columns=..., flags=...)            # per file: text columns and a byte
    kept.put(where, packed, packed.size)
    entries, files = unpack(packed, make, ...)             # model.PackedFiles: no Entry per file

`make(path, i)` makes the i-th packed file's artifact when it is first needed, from
`packed.text(column, i)` and `packed.flags[i]`; `info_of(path, i)` its extended attributes when
they differ per file. Files a provider wants shown as plain entries (say, mutable ones in an
immutable listing) are kept `apart`, as (path, value) pairs, and made by `make_apart`.

Invariants:
- A packed directory's names are sorted, distinct and placed (safe: `names.name_problem`), and
  none is also an apart file's or a subdirectory's (they come from one FileTree).
- A column value never holds a NUL (they are NUL-joined): `pack` returns None for a listing
  that has one, and the provider lists it unpacked.
- A column's values are kept without the prefix they all share (`Packed.prefixes`): a build's
  URLs differ only after their host, job and node, so what is kept per file is about its path.
- `make` never returns a LIVE artifact, and gives no size (model.PackedFiles): only immutable
  listings are packed.
- `KeptListings` holds at most `limit` bytes (as `Packed.size` counts them); a listing larger
  than that is not kept.
"""

from __future__ import annotations

import collections
import itertools
from array import array
from collections.abc import Callable, Mapping, Sequence
from typing import Generic, TypeVar

from ciartfs.namespace.model import Artifact, Entry, PackedFiles
from ciartfs.namespace.names import FileTree, pack_files, packed_entries

T = TypeVar("T")
V = TypeVar("V")

# What the kept listings of one API host hold, packed, once their nodes are gone (the kernel
# forgot them): a file's name and its URL's tail (after the prefix they share) and ~9 bytes,
# ~30-100 bytes a file, so 16 MiB keeps a build of 100k artifacts, or 160-500 of 1000.
KEPT_LISTING_BYTES = 16 << 20
# What an apart file costs kept, besides its path: its value (a small record).
APART_BYTES = 200


class Packed(Generic[T]):
    """A placed listing's files, packed (see the module docstring): `dirs` and `names` as
    names.pack_files gives them, per file (in that order) its `texts` columns' values and one
    byte of `flags`; `apart`: the files kept as (path, value) instead. A column's values are
    kept as `prefixes[column]` (what they all begin with) and, NUL-joined in `texts`, the rest."""

    __slots__ = ("dirs", "names", "prefixes", "texts", "flags", "apart", "_ends")

    def __init__(self, dirs: list[str], names: list[str], texts: Sequence[str], flags: bytes,
                 apart: list[tuple[str, T]], prefixes: Sequence[str]) -> None:
        self.dirs, self.names, self.texts, self.flags, self.apart = dirs, names, tuple(texts), flags, apart
        self.prefixes = tuple(prefixes)
        # per column, where each value ends (made when a value is first asked for: 8 bytes a
        # file, where a list of the values would cost a str object each)
        self._ends: list[array[int] | None] = [None] * len(self.texts)

    def __len__(self) -> int:
        return len(self.flags)

    @property
    def size(self) -> int:
        """Bytes it holds, about (its columns' ends counted as if made)."""
        return (sum(map(len, self.dirs)) + sum(map(len, self.names)) + sum(map(len, self.texts))
                + sum(map(len, self.prefixes)) + len(self.flags)
                + 8 * len(self.flags) * len(self.texts) + sum(len(p) + APART_BYTES for p, _ in self.apart))

    def text(self, column: int, i: int) -> str:
        """The i-th file's value in a text column."""
        ends = self._ends[column]
        text = self.texts[column]
        if ends is None:
            ends = self._ends[column] = array("q", itertools.accumulate(len(v) + 1 for v in text.split("\0")))
        return self.prefixes[column] + text[ends[i - 1] if i else 0:ends[i] - 1]


def pack(tree: FileTree[T], *, columns: Callable[[str, T], Sequence[str]], width: int,
         flags: Callable[[str, T], int] | None = None,
         apart: Callable[[str, T], bool] | None = None) -> Packed[T] | None:
    """A placed FileTree packed: each file's `width` text `columns(path, value)` and byte
    `flags(path, value)` (0-255; 0 without it); files for which `apart(path, value)` says so
    kept as (path, value). None when a column value holds a NUL (it cannot be joined)."""
    kept_apart: list[tuple[str, T]] = []
    if apart is not None:
        tree = _without(tree, apart, "", kept_apart)
    dirs, names, values = pack_files(tree)
    paths = [prefix + name for prefix, joined in zip(dirs, names, strict=True) for name in joined.split("\0")]
    rows = [columns(path, value) for path, value in zip(paths, values, strict=True)]
    texts, prefixes = [], []
    for c in range(width):
        column = [row[c] for row in rows]
        prefix = _shared_prefix(column) if len(column) > 1 else ""
        text = "\0".join([v[len(prefix):] for v in column] if prefix else column)
        if "\0" in prefix or text.count("\0") != max(0, len(rows) - 1):
            return None
        texts.append(text)
        prefixes.append(prefix)
    flag_bytes = bytes(flags(p, v) for p, v in zip(paths, values, strict=True)) if flags else bytes(len(values))
    return Packed(dirs, names, texts, flag_bytes, kept_apart, prefixes=prefixes)


def _shared_prefix(values: list[str]) -> str:
    """The longest string every one of `values` begins with (character by character, not by
    path component: URLs share a host and more)."""
    low, high = min(values), max(values)  # what the smallest and largest share, all share
    return low[:next((i for i, (a, b) in enumerate(zip(low, high, strict=False)) if a != b), len(low))]


def _without(tree: FileTree[T], apart: Callable[[str, T], bool], prefix: str, out: list[tuple[str, T]]) -> FileTree[T]:
    """`tree` less the files `apart` picks (added to `out` with their paths); iterative: a
    path may be deep."""
    top: FileTree[T] = FileTree()
    todo = [(prefix, tree, top)]
    while todo:
        at, node, copy = todo.pop()
        for name, value in node.files.items():
            if apart(at + name, value):
                out.append((at + name, value))
            else:
                copy.files[name] = value
        for name, sub in node.dirs.items():
            copy.dirs[name] = FileTree()
            todo.append((f"{at}{name}/", sub, copy.dirs[name]))
    return top


def unpack(packed: Packed[T], make: Callable[[str, int], Artifact], *, mtime: float, immutable: bool,
           ttl: float | None, info: Mapping[str, str], info_of: Callable[[str, int], Mapping[str, str]] | None = None,
           make_apart: Callable[[str, str, T], Entry] | None = None) -> tuple[list[Entry], PackedFiles | None]:
    """The top level of a packed listing, as names.tree_entries gives a FileTree's: (its
    subdirectories and apart files as entries, its packed files). Nothing per packed file but
    splitting its directory's names; apart files by `make_apart(name, path, value)`."""
    extra: dict[str, list[Entry]] = collections.defaultdict(list)
    if make_apart is not None:
        for path, value in packed.apart:
            prefix, _, name = path.rpartition("/")
            extra[prefix + "/" if prefix else ""].append(make_apart(name, path, value))
    return packed_entries(packed.dirs, packed.names, make, mtime=mtime, immutable=immutable, ttl=ttl, info=info,
                          info_of=info_of, extra=extra)


class KeptListings(Generic[V]):
    """Immutable listings kept (by a key such as "vcs/user/project/build"), least recently
    used dropped beyond `limit` bytes, so that browsing builds plateaus."""

    def __init__(self, limit: int = KEPT_LISTING_BYTES) -> None:
        self.limit = limit
        self._kept: collections.OrderedDict[str, tuple[V, int]] = collections.OrderedDict()
        self.size = 0  # bytes kept

    def __contains__(self, key: str) -> bool:
        return key in self._kept

    def get(self, key: str) -> V | None:
        kept = self._kept.get(key)
        if kept is None:
            return None
        self._kept.move_to_end(key)
        return kept[0]

    def put(self, key: str, value: V, size: int) -> None:
        if key in self._kept or size > self.limit:
            return
        self._kept[key] = (value, size)
        self.size += size
        while self.size > self.limit:
            _, (_, dropped) = self._kept.popitem(last=False)
            self.size -= dropped
