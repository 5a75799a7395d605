"""The name rules: how names and paths from the network become file names.

`name_problem` is the one rule every name the tree shows passes; `place_artifacts` is the one
place that decides how artifact paths become a directory tree (rules in its docstring, also in
the README).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from ciartfs.namespace.model import Artifact, Entry, Kind, PackedFiles, StaticDir

log = logging.getLogger(__name__)

NAME_MAX = 255
# Path components remembered as safe while a listing is placed (its directories' names recur
# in every path below them); bounded, as the listing is not.
KNOWN_GOOD_KEPT = 4096

T = TypeVar("T")


@dataclasses.dataclass
class FileTree(Generic[T]):
    """A nested mapping of safe names: `dirs` and `files` never share a name."""

    dirs: dict[str, FileTree[T]] = dataclasses.field(default_factory=dict)
    files: dict[str, T] = dataclasses.field(default_factory=dict)

    def count(self) -> int:
        return len(self.files) + sum(d.count() for d in self.dirs.values())


def tree_entries(tree: FileTree[T], make_file: Callable[[str, str, T], Entry], *, mtime: float,
                 immutable: bool, ttl: float | None, prefix: str = "") -> list[Entry]:
    """The entries of a FileTree's top level: subdirectories as StaticDirs (recursively),
    files made by `make_file(name, path_below_the_top, value)`."""
    entries = []
    for name, sub in tree.dirs.items():
        children = tree_entries(sub, make_file, mtime=mtime, immutable=immutable, ttl=ttl, prefix=f"{prefix}{name}/")
        entries.append(Entry(name, Kind.DIR, mtime=mtime, immutable=immutable, source=StaticDir(children, ttl=ttl)))
    entries.extend(make_file(name, prefix + name, value) for name, value in tree.files.items())
    return entries


def pack_files(tree: FileTree[T]) -> tuple[list[str], list[str], list[T]]:
    """A placed FileTree's files, directory by directory, as a listing is kept: (each directory
    holding files, as a prefix: "" for the top, "a/b/" below; its files' names, sorted, joined
    by NUL (no placed name holds one); the files' values in that order)."""
    dirs, names, values = [], [], []
    todo = [("", tree)]
    while todo:  # (depth first, without recursion: a path may be deep)
        prefix, at = todo.pop()
        if at.files:
            listed = sorted(at.files)
            dirs.append(prefix)
            names.append("\0".join(listed))
            values += [at.files[name] for name in listed]
        todo += [(f"{prefix}{name}/", sub) for name, sub in reversed(at.dirs.items())]
    return dirs, names, values


def packed_entries(dirs: list[str], names: list[str], make: Callable[[str, int], Artifact], *, mtime: float,
                   immutable: bool, ttl: float | None, info: Mapping[str, str]) -> tuple[list[Entry], PackedFiles | None]:
    """The top level of what `pack_files` packed, as `tree_entries` gives a FileTree's, its
    files packed (`make(path below the top, index in the packed order)` is the artifact of one,
    made when first asked for): (the subdirectories, the files). A dict look-up per directory,
    nothing per file but splitting the names."""
    files: dict[str, PackedFiles] = {}
    subdirs: dict[str, list[str]] = {"": []}
    first = 0
    for prefix, joined in zip(dirs, names, strict=True):
        listed = joined.split("\0")
        files[prefix] = PackedFiles(listed, mtime, immutable, info, functools.partial(_make_packed, make, prefix, listed, first))
        first += len(listed)
        chain, at = [], prefix  # the directories above it not registered yet
        while at not in subdirs:
            chain.append(at)
            at = at[:-1].rpartition("/")[0] + "/" if "/" in at[:-1] else ""
        for below in reversed(chain):
            subdirs[below] = []
            subdirs[at].append(below[len(at):-1])
            at = below

    def level(prefix: str) -> tuple[list[Entry], PackedFiles | None]:
        entries = []
        for name in subdirs[prefix]:
            children, packed = level(f"{prefix}{name}/")
            entries.append(Entry(name, Kind.DIR, mtime=mtime, immutable=immutable,
                                 source=StaticDir(children, ttl=ttl, files=packed)))
        return entries, files.get(prefix)

    return level("")


def _make_packed(make: Callable[[str, int], Artifact], prefix: str, names: list[str], first: int, i: int) -> Artifact:
    return make(prefix + names[i], first + i)


def target_problem(target: str) -> str | None:
    try:
        target.encode("utf-8")
    except UnicodeEncodeError:
        return "links to a target that is not valid UTF-8"
    return None


def split_artifact_path(path: Any, known_good: set[str] | None = None) -> tuple[str, ...] | str:
    """The safe components of an artifact path, or a reason (str) why it is refused.
    `known_good`: components already found safe (a listing's directories), added to."""
    if not isinstance(path, str):
        return "not a string"
    if "\x00" in path:
        return "contains a NUL byte"
    parts = tuple(p for p in path.split("/") if p != "")  # drops the leading '/' and '//'
    if not parts:
        return "empty path"
    for part in parts:
        if known_good is not None and part in known_good:
            continue
        problem = name_problem(part)
        if problem:
            return f"a component {problem}"
        if known_good is not None and len(known_good) < KNOWN_GOOD_KEPT:
            known_good.add(part)
    return parts


def name_problem(name: str) -> str | None:
    """Why `name` (from the network) cannot be a file name, or None: the one rule for every
    name the tree shows. JSON strings can hold lone surrogates, which no file name can carry."""
    if name in ("", ".", ".."):
        return f"is {name!r}" if name else "is empty"
    if "/" in name or "\x00" in name:
        return "contains '/' or a NUL byte"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if len(encoded) > NAME_MAX:
        return f"is longer than {NAME_MAX} bytes"
    return None


def place_artifacts(items: Iterable[tuple[Any, T]], *, where: str, tiebreak: Callable[[T], str] = str) -> FileTree[T]:
    """Arrange (path, value) pairs into a FileTree. The rules, deterministic whatever the
    order of `items`:

    - a leading '/' is dropped and empty components ('a//b', trailing '/') are collapsed;
    - a path with a '.' or '..' component, a NUL byte, invalid UTF-8, or a component over
      255 bytes is skipped (warning logged);
    - the same path twice: the one whose `tiebreak` sorts first is kept, the rest skipped;
    - a path that is a file and also a directory of other paths ('a' and 'a/b'): the
      directory wins and the file is skipped.
    """
    accepted: list[tuple[tuple[str, ...], str, T]] = []
    known_good: set[str] = set()
    for path, value in items:
        parts = split_artifact_path(path, known_good)
        if isinstance(parts, str):
            log.warning("%s: skipped artifact path '%s': %s", where, short(path), parts)
            continue
        accepted.append((parts, tiebreak(value), value))
    accepted.sort(key=lambda t: (t[0], t[1]))
    dir_paths = {parts[:i] for parts, _, _ in accepted for i in range(1, len(parts))}
    tree: FileTree[T] = FileTree()
    previous: tuple[str, ...] | None = None
    for parts, _, value in accepted:
        shown = "/".join(parts)
        if parts in dir_paths:
            log.warning("%s: skipped artifact %r: it is also a directory of other artifacts", where, short(shown))
            continue
        if parts == previous:
            log.warning("%s: skipped duplicate artifact path %r", where, short(shown))
            continue
        previous = parts
        node = tree
        for part in parts[:-1]:
            node = node.dirs.setdefault(part, FileTree())
        node.files[parts[-1]] = value
    return tree


# Characters a log line shows escaped: a name from the network must not forge a log line (a
# newline), hide text (control sequences) or fail a log handler's encoding (lone surrogates).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def short(value: Any, limit: int = 120) -> str:
    """`value` for a log line: cut to `limit` characters, control characters escaped."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    return _UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], text)
