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
# Deeper paths are refused: a real build nests nowhere near this, and the tree's listing code
# recurses once per level (a hostile path 1500 levels deep took its whole listing down).
MAX_DEPTH = 256
# Directories a listing may make: each costs a few hundred bytes, and two bytes of a hostile
# listing ("d/") can ask for one. Real builds have fewer directories than files; chains of
# one-file directories ("results/<id>/<id>/out.xml") stay well inside this.
DIRS_FREE, DIRS_PER_FILE = 10_000, 4
# Path components remembered as safe while a listing is placed (its directories' names recur
# in every path below them); bounded, as the listing is not.
KNOWN_GOOD_KEPT = 4096

T = TypeVar("T")
R = TypeVar("R")


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
                   immutable: bool, ttl: float | None, info: Mapping[str, str],
                   info_of: Callable[[str, int], Mapping[str, str]] | None = None,
                   extra: Mapping[str, list[Entry]] | None = None) -> tuple[list[Entry], PackedFiles | None]:
    """The top level of what `pack_files` packed, as `tree_entries` gives a FileTree's, its
    files packed (`make(path below the top, index in the packed order)` is the artifact of one,
    made when first asked for; `info_of(path, index)` its info, when files' differ): (the
    subdirectories, the files). `extra`: more entries, by directory prefix (names none of the
    packed files have). A dict look-up per directory, nothing per file but splitting the names."""
    files: dict[str, PackedFiles] = {}
    subdirs: dict[str, list[str]] = {"": []}
    first = 0
    for prefix, joined in zip(dirs, names, strict=True):
        listed = joined.split("\0")
        files[prefix] = PackedFiles(listed, mtime, immutable, info, functools.partial(_make_packed, make, prefix, listed, first),
                                    None if info_of is None else functools.partial(_make_packed, info_of, prefix, listed, first))
        first += len(listed)
        _register(subdirs, prefix)
    for prefix in extra or {}:
        _register(subdirs, prefix)

    def level(prefix: str) -> tuple[list[Entry], PackedFiles | None]:
        entries = []
        for name in subdirs[prefix]:
            children, packed = level(f"{prefix}{name}/")
            entries.append(Entry(name, Kind.DIR, mtime=mtime, immutable=immutable,
                                 source=StaticDir(children, ttl=ttl, files=packed)))
        entries += (extra or {}).get(prefix, ())
        return entries, files.get(prefix)

    return level("")


def _register(subdirs: dict[str, list[str]], prefix: str) -> None:
    """Register directory `prefix` ("a/b/") and those above it in `subdirs` (each directory's
    subdirectories' names, in the order first registered)."""
    chain, at = [], prefix  # the directories above it not registered yet
    while at not in subdirs:
        chain.append(at)
        at = at[:-1].rpartition("/")[0] + "/" if "/" in at[:-1] else ""
    for below in reversed(chain):
        subdirs[below] = []
        subdirs[at].append(below[len(at):-1])
        at = below


def _make_packed(make: Callable[[str, int], R], prefix: str, names: list[str], first: int, i: int) -> R:
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
    if len(parts) > MAX_DEPTH:
        return f"is nested deeper than {MAX_DEPTH} directories"
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
    # Sorted, the paths below a path follow it and its duplicates at once: whether it is also a
    # directory is one comparison with the next other path, not a set of every path's prefixes
    # (quadratic in depth: a hostile listing of deep paths made gigabytes of them).
    accepted.sort(key=lambda t: (t[0], t[1]))
    tree: FileTree[T] = FileTree()
    previous: tuple[str, ...] | None = None
    after_duplicates = 0
    dirs_made, max_dirs = 0, DIRS_FREE + DIRS_PER_FILE * len(accepted)
    over_budget, first_over = 0, ""
    for i, (parts, _, value) in enumerate(accepted):
        shown = "/".join(parts)
        if parts == previous:
            log.warning("%s: skipped duplicate artifact path %r", where, short(shown))
            continue
        previous = parts
        after_duplicates = max(after_duplicates, i + 1)
        while after_duplicates < len(accepted) and accepted[after_duplicates][0] == parts:
            after_duplicates += 1
        if after_duplicates < len(accepted) and accepted[after_duplicates][0][:len(parts)] == parts:
            log.warning("%s: skipped artifact %r: it is also a directory of other artifacts", where, short(shown))
            continue
        node, known = tree, 0  # (the directories it shares with the paths placed before it)
        while known < len(parts) - 1 and (sub := node.dirs.get(parts[known])) is not None:
            node, known = sub, known + 1
        if dirs_made + len(parts) - 1 - known > max_dirs:
            over_budget += 1
            first_over = first_over or shown
            continue
        dirs_made += len(parts) - 1 - known
        for part in parts[known:-1]:
            sub = FileTree()
            node.dirs[part] = sub
            node = sub
        node.files[parts[-1]] = value
    if over_budget:  # (one line: a hostile listing would make one per artifact)
        log.warning("%s: skipped %d artifacts, e.g. %r: the listing's directories would pass %d (%d + %d per file)",
                    where, over_budget, short(first_over), max_dirs, DIRS_FREE, DIRS_PER_FILE)
    return tree


def place_directories(tree: FileTree[Any], paths: Iterable[str], *, where: str, entries: int) -> None:
    """Add directories named by `paths` (an archive's directory entries, so that empty ones show
    too) to a placed `tree`, by the artifact path rules; a path that is not a legal one, or that
    runs into a file, adds what it can before that. Within the same bound as the files' own
    directories, for a listing of `entries` entries: a hostile zip's directory entries could ask
    for millions."""
    made, skipped, budget = 0, 0, DIRS_FREE + DIRS_PER_FILE * entries
    for path in paths:
        parts = split_artifact_path(path)
        if isinstance(parts, str):
            continue
        node = tree
        for part in parts:
            if part in node.files:
                break
            sub = node.dirs.get(part)
            if sub is None:
                if made >= budget:
                    skipped += 1
                    break
                made += 1
                sub = node.dirs[part] = FileTree()
            node = sub
    if skipped:
        log.warning("%s: %d directory entries not shown: past %d directories made by them", where, skipped, budget)


# Characters a log line shows escaped: a name from the network must not forge a log line (a
# newline), hide text (control sequences) or fail a log handler's encoding (lone surrogates).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def short(value: Any, limit: int = 120) -> str:
    """`value` for a log line: cut to `limit` characters, control characters escaped."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    return _UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], text)
