"""Tier 1: the inode table follows the kernel's references. A directory whose whole subtree
the kernel has forgotten lets go of its nodes and listing, and is listed again on a visit;
nothing the kernel still holds (or holds something below) is ever dropped."""

from __future__ import annotations

from ciartfs.namespace.model import Artifact, Entry, Kind, PackedFiles, StaticDir
from ciartfs.namespace.tree import Tree


class CountingDir(StaticDir):
    """A static directory that counts how often it is listed."""

    def __init__(self, entries: list[Entry]) -> None:
        super().__init__(entries)
        self.listed = 0

    async def list(self) -> list[Entry]:
        self.listed += 1
        return await super().list()


def file_entry(name: str) -> Entry:
    return Entry(name, Kind.FILE, immutable=True, artifact=Artifact(f"k/{name}", f"http://x/{name}", True, size=len(name)))


def make_tree() -> tuple[Tree, CountingDir, CountingDir]:
    build = CountingDir([file_entry(f"f{i}") for i in range(100)])
    builds = CountingDir([Entry("1", Kind.DIR, immutable=True, source=build)])
    root = StaticDir([Entry("proj", Kind.DIR, immutable=True, source=builds)])

    async def sizer(art: Artifact, reading: bool) -> int:
        raise AssertionError("sizes are in the listing")

    return Tree(root, sizer), builds, build


async def visit(tree: Tree, *names: str):
    """Look up a path as the kernel does: each component remembered; then list the last one
    as readdirplus does (each entry remembered)."""
    node = tree.root
    for name in names:
        node = await tree.lookup(node, name)
        tree.remember(node)
    children = await tree.list(node)
    for child in children:
        tree.remember(child)
    return node, children


async def test_a_subtree_the_kernel_forgot_is_dropped_and_listed_again():
    tree, _builds, build = make_tree()
    one, children = await visit(tree, "proj", "1")
    assert len(tree.nodes) == 1 + 2 + 100 and build.listed == 1
    for child in children:  # the kernel forgets the files: the build dir is still held
        tree.forget(child.inode, 1)
    assert len(tree.nodes) == 103 and one.listing is not None
    tree.forget(one.inode, 1)  # ... and now the build dir: its subtree goes
    assert len(tree.nodes) == 3 and one.listing is None and not one.children
    assert all(not c.attached for c in children)
    again = await tree.list(one)  # visited again: listed again, new nodes
    assert build.listed == 2 and [c.name for c in again] == [c.name for c in children]
    assert {c.inode for c in again}.isdisjoint(c.inode for c in children)


async def test_nothing_under_a_held_node_is_dropped():
    tree, _builds, build = make_tree()
    one, children = await visit(tree, "proj", "1")
    held = children[7]
    proj = tree.root.children["proj"]
    for child in children:
        if child is not held:
            tree.forget(child.inode, 1)
    tree.forget(one.inode, 1)
    tree.forget(proj.inode, 1)
    # the kernel still holds one file: its directories and their listings stay
    assert tree.nodes[held.inode] is held and held.attached
    assert one.listing is not None and proj.listing is not None and len(tree.nodes) == 103
    tree.forget(held.inode, 1)  # the last reference: everything below the root goes
    assert len(tree.nodes) == 2 and proj.listing is None and build.listed == 1


async def test_lookup_counts_are_per_reference():
    tree, _, _ = make_tree()
    one, children = await visit(tree, "proj", "1")
    tree.remember(one)  # a second lookup of the same directory
    for child in children:
        tree.forget(child.inode, 1)
    tree.forget(one.inode, 1)
    assert one.listing is not None and len(tree.nodes) == 103  # one reference left
    tree.forget(one.inode, 1)
    assert one.listing is None and len(tree.nodes) == 3
    tree.forget(one.inode, 1)  # more forgets than lookups: ignored
    assert tree.root.pinned >= 1 and tree.root.children["proj"].pinned >= 1


def packed_files(names: list[str], made: list[int], *, immutable: bool = True, url: str = "http://x/") -> PackedFiles:
    """`names` packed; `made` records each artifact made (by index)."""
    def make(i: int) -> Artifact:
        made.append(i)
        return Artifact(f"k/{names[i]}", url + names[i], immutable)

    return PackedFiles(names, 5.0, immutable, {"source": "s"}, make)


async def test_packed_files_become_nodes_whose_artifacts_are_made_only_when_asked_for():
    made: list[int] = []
    names = sorted(["sub", *(f"f{i:02}" for i in range(50))])  # "sub" is also a directory: it wins
    files = packed_files(names, made)
    d = StaticDir([Entry("sub", Kind.DIR, immutable=True, source=StaticDir([])), file_entry("plain")], files=files)
    tree = Tree(StaticDir([Entry("d", Kind.DIR, immutable=True, source=d)]), sizer=None)  # type: ignore[arg-type]
    node, children = await visit(tree, "d")
    assert sorted(c.name for c in children) == sorted({"plain", *names})
    assert made == [], "listing made no artifact"
    by_name = {c.name: c for c in children}
    assert by_name["sub"].kind is Kind.DIR and by_name["plain"].artifact == file_entry("plain").artifact
    f7 = by_name["f07"]
    assert (f7.kind, f7.mtime, f7.immutable, f7.info, f7.size) == (Kind.FILE, 5.0, True, {"source": "s"}, None)
    assert f7.made_artifact is None and made == []
    assert f7.artifact == Artifact("k/f07", "http://x/f07", True)
    assert f7.artifact is f7.artifact and made == [names.index("f07")], "made once, then kept"
    # what is not the tree (a generic reader of the directory) sees every file as an entry
    listed = {e.name: e for e in await d.list()}
    assert set(listed) == {"sub", "plain", *names} and listed["f07"].artifact == f7.artifact
    assert listed["sub"].kind is Kind.DIR  # (the packed "sub" is shadowed by the directory)
    assert (await d.lookup("f49")).artifact == Artifact("k/f49", "http://x/f49", True)
    assert await d.lookup("nope") is None
    # forgotten and listed again: new nodes, artifacts made again only when asked for
    for child in children:
        tree.forget(child.inode, 1)
    tree.forget(node.inode, 1)
    assert node.listing is None
    made.clear()
    _, again = await visit(tree, "d")
    assert len(again) == len(children) and made == []


async def test_a_mutable_packed_listing_listed_again_has_its_files_made_again(clock):
    made: list[int] = []
    names = ["a", "b"]

    class Changing(StaticDir):
        def __init__(self) -> None:
            super().__init__([], ttl=1.0, files=packed_files(names, made, immutable=False, url="http://one/"))

    d = Changing()
    tree = Tree(StaticDir([Entry("d", Kind.DIR, immutable=True, source=d)]), sizer=None)  # type: ignore[arg-type]
    _, children = await visit(tree, "d")
    a = next(c for c in children if c.name == "a")
    a.size = 3  # as if learned
    assert a.artifact.url == "http://one/a"
    d.files = packed_files(names, made, immutable=False, url="http://two/")
    clock.jump(2)
    _, again = await visit(tree, "d")
    assert next(c for c in again if c.name == "a") is a, "the same node (the kernel's inode stays valid)"
    assert a.size is None and a.artifact.url == "http://two/a"


async def test_pinned_says_whether_the_kernel_references_anything_in_a_subtree_whatever_the_order():
    """`pinned` counts a node's own reference and its referenced children (not every node
    below): zero exactly when nothing in the subtree is referenced, after any order of
    lookups and forgets."""
    import random

    rnd = random.Random(17)
    leaves = lambda p: [file_entry(f"{p}{i}") for i in range(3)]  # noqa: E731
    sub = [Entry(f"s{j}", Kind.DIR, immutable=True, source=StaticDir(leaves(f"s{j}f"))) for j in range(3)]
    tree = Tree(StaticDir([Entry("d", Kind.DIR, immutable=True, source=StaticDir(sub + leaves("f")))]),
                sizer=None)  # type: ignore[arg-type]
    d, children = await visit(tree, "d")
    nodes = [d, *children]
    for child in children:
        if child.kind is Kind.DIR:
            nodes += await tree.list(child)

    def referenced(node) -> bool:
        return node.lookups > 0 or any(referenced(c) for c in node.children.values())

    for _ in range(400):
        node = rnd.choice(nodes)
        if rnd.random() < 0.5 and node.attached:  # (the kernel is given only attached nodes)
            tree.remember(node)
        elif node.lookups:
            tree.forget(node.inode, rnd.randint(1, node.lookups))
        for n in nodes:
            if n.attached:
                assert (n.pinned > 0) == referenced(n), n.path
