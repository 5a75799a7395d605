"""Tier 1: the disk cache's pack store (ciartfs/data/packstore.py): bytes back exactly or a miss
(corruption, torn writes, a writer killed mid-append), LRU eviction by whole packs at a cost
proportional to what it frees, several stores (mounts) on one directory, the previous layout
removed. And through a real mount: the previous layout is cleared at start."""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ciartfs import buffers
from ciartfs.data import packstore
from ciartfs.data.packstore import INDEX_NAME, ORPHAN_AGE, DiskStore, pack_name
from conftest import wait_for

KEY = "circleci|host|gh/acme/api|1|0/dist/app.bin|4096|0"


def records(root: Path) -> list[tuple[int, int, int]]:
    """(pack, pos, len) of every record in the index, in file order."""
    with sqlite3.connect(root / INDEX_NAME) as db:
        return db.execute("SELECT pack, pos, len FROM entries ORDER BY pack, pos").fetchall()


def test_round_trip_private_files_and_no_key_on_disk(tmp_path):
    root = tmp_path / "blocks"
    store = DiskStore(root, 1 << 20)
    assert store.put(KEY, b"hello") and store.get(KEY) == b"hello"
    assert store.get("other") is None and not store.contains("other") and store.contains(KEY)
    store.close()
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    names = os.listdir(root)
    assert any(n.endswith(".pack") for n in names) and INDEX_NAME in names
    for name in names:
        path = root / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
        raw = path.read_bytes()
        assert b"circleci" not in raw and b"acme" not in raw and b"app.bin" not in raw, f"the key is in {name}"
    assert DiskStore(root, 1 << 20).get(KEY) == b"hello"  # the next mount


def test_might_have_answers_from_memory_without_false_negatives(tmp_path):
    store = DiskStore(tmp_path, 64 << 20)  # its filter of ids written since start: 65536 of them
    store.put_many([(f"k{i}", b"x") for i in range(500)])
    assert store.might_have("absent")  # the filters not built yet: "maybe"
    store.load_index()
    assert not store.might_have("absent")
    # past its filter's size: both filters built again in the background, never a false "no"
    store.put_many([(f"n{i}", b"y") for i in range(70_000)])
    keys = [f"k{i}" for i in range(500)] + [f"n{i}" for i in range(0, 70_000, 97)]
    assert all(store.might_have(k) for k in keys)
    assert wait_for(lambda: store._written.count < 1000)
    assert all(store.might_have(k) for k in keys)
    assert sum(store.might_have(f"absent{i}") for i in range(1000)) < 100  # a filter, not "always maybe"
    # blocks written since start are known one by one: a cold read's next block is a "no"
    store.put_many([(f"cc|h|o/r|1|0/big.bin|4096|{i}", b"z") for i in range(0, 100, 2)])
    assert all(store.might_have(f"cc|h|o/r|1|0/big.bin|4096|{i}") for i in range(0, 100, 2))
    assert sum(store.might_have(f"cc|h|o/r|1|0/big.bin|4096|{i}") for i in range(1, 100, 2)) < 5
    assert sum(store.might_have(f"cc|h|o/r|1|0/other{n}.bin|4096|{i}") for n in range(100) for i in range(10)) < 100
    store.close()
    # found on disk at start: by file (a file never read is a "no"; one partly on disk, a "maybe")
    again = DiskStore(tmp_path, 64 << 20)
    again.load_index()
    assert all(again.might_have(f"cc|h|o/r|1|0/big.bin|4096|{i}") for i in range(100))
    assert sum(again.might_have(f"cc|h|o/r|1|0/other{n}.bin|4096|{i}") for n in range(100) for i in range(10)) < 100


@pytest.mark.parametrize("damage", ["flip", "truncate", "zeros"])
def test_a_corrupt_or_torn_record_is_a_miss_never_wrong_bytes(tmp_path, damage, caplog):
    store = DiskStore(tmp_path, 1 << 20)
    store.put_many([("a", b"A" * 1000), ("b", b"B" * 1000), ("c", b"C" * 1000)])
    (pack, pos, length), *_ = [r for r in records(tmp_path) if r[1] == 1000]  # b's record
    path = tmp_path / pack_name(pack)
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[pos + 500] ^= 1
    elif damage == "zeros":  # the row committed, the bytes never reached the disk (power loss)
        raw[pos:pos + length] = bytes(length)
    else:  # cut inside b: c is gone too
        del raw[pos + 10:]
    path.write_bytes(bytes(raw))
    assert store.get("b") is None
    assert "corrupt or truncated" in caplog.text
    assert not store.contains("b"), "the damaged record is dropped from the index"
    assert store.get("a") == b"A" * 1000
    assert store.get("c") == (None if damage == "truncate" else b"C" * 1000)


def test_a_record_found_under_another_keys_id_fails_its_check(tmp_path):
    """The checksum is seeded by the key: a record moved to another key's row (an id collision,
    or a row pointing at the wrong place) is a miss."""
    store = DiskStore(tmp_path, 1 << 20)
    store.put_many([("one", b"1" * 100), ("two", b"1" * 100)])
    with sqlite3.connect(tmp_path / INDEX_NAME) as db:
        (sum_one,) = db.execute("SELECT sum FROM entries WHERE k=?", (packstore.key_digest("one")[0],)).fetchone()
        db.execute("UPDATE entries SET sum=? WHERE k=?", (sum_one, packstore.key_digest("two")[0]))
    assert store.get("one") == b"1" * 100
    assert store.get("two") is None


def test_a_writer_killed_mid_append_leaves_a_miss_and_the_store_goes_on(tmp_path, monkeypatch):
    store = DiskStore(tmp_path, 1 << 20)
    store.put("before", b"b" * 100)
    real = os.pwritev

    def half_then_die(fd, buffers, offset):
        real(fd, [bytes(buffers[0])[: len(buffers[0]) // 2]], offset)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(packstore.os, "pwritev", half_then_die)
    assert store.put_many([("torn", b"t" * 1000), ("also", b"a" * 1000)]) == 0
    monkeypatch.undo()
    assert store.get("torn") is None and store.get("also") is None and store.enabled
    assert store.put("after", b"c" * 100) and store.get("after") == b"c" * 100
    assert store.get("before") == b"b" * 100
    # a process killed between its append and its commit: bytes with no row, never served
    restarted = DiskStore(tmp_path, 1 << 20)
    assert restarted.get("torn") is None and restarted.get("after") == b"c" * 100


def test_records_discarded_at_the_end_of_the_own_pack_give_their_space_back(tmp_path):
    store = DiskStore(tmp_path, 1 << 30)
    store.put("kept", b"k" * 100)
    for i in range(20):  # a decode that then fails
        store.put(f"decoded{i}", b"d" * 10_000)
    store.put("other", b"o" * 100)
    store.discard_many([f"decoded{i}" for i in range(20)])
    assert store.bytes_used == 200_200, "only what follows the last live record is cut off (nothing here)"
    store.discard("other")
    (pack,) = [n for n in os.listdir(tmp_path) if n.endswith(".pack")]
    assert store.bytes_used == (tmp_path / pack).stat().st_size == 100
    assert store.get("kept") == b"k" * 100 and store.get("decoded3") is None
    assert store.put("after", b"a" * 10) and store.get("after") == b"a" * 10


def test_records_discarded_before_a_later_record_of_the_own_pack_give_their_disk_blocks_back(tmp_path):
    """A failed decode followed by a record written meanwhile (an API document behind it): its
    blocks cannot be cut off the end, so they are punched out; the later record reads back."""
    store = DiskStore(tmp_path, 1 << 30)
    store.put("kept", b"k" * 100)
    for i in range(64):  # 8 MiB a decode wrote before it failed
        store.put(f"decoded{i}", os.urandom(128 << 10))
    store.put("document", b"{}" * 50)
    (pack,) = [tmp_path / n for n in os.listdir(tmp_path) if n.endswith(".pack")]
    before = pack.stat()
    assert before.st_blocks * 512 >= 8 << 20
    store.discard_many([f"decoded{i}" for i in range(64)])
    after = pack.stat()
    assert after.st_size == before.st_size, "the later record keeps its place"
    assert after.st_blocks * 512 < 64 << 10, "the discarded records' disk blocks stayed"
    assert store.get("kept") == b"k" * 100 and store.get("document") == b"{}" * 50
    assert store.get("decoded5") is None
    assert store.put("after", b"a" * 10) and store.get("after") == b"a" * 10


def test_disk_full_turns_the_store_off(tmp_path, caplog, monkeypatch):
    store = DiskStore(tmp_path, 1 << 20)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(packstore.os, "pwritev", full)
    assert not store.put("k", b"data")
    monkeypatch.undo()
    assert not store.enabled and "full" in caplog.text
    assert store.get("k") is None and not store.might_have("k")


def test_eviction_frees_the_least_recently_used_packs(tmp_path):
    store = DiskStore(tmp_path, 10_000)  # packs of 312 bytes: each record of 1500 is a pack of its own
    for i in range(5):
        store.put(f"k{i}", bytes(1500))
        time.sleep(0.01)
    assert store.get("k0") is not None  # read: now the most recently used
    for i in range(5, 10):
        store.put(f"k{i}", bytes(1500))
    assert store.bytes_used <= 10_000
    assert store.get("k0") is not None
    assert store.get("k1") is None
    assert len([n for n in os.listdir(tmp_path) if n.endswith(".pack")]) == len(records(tmp_path))


class FileCalls:
    """Counts the store's file-system calls that cost per file."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: dict[str, int] = {}
        for name in ("unlink", "stat", "lstat", "scandir", "listdir", "open"):
            real = getattr(os, name)
            monkeypatch.setattr(packstore.os, name, self._counted(name, real))

    def _counted(self, name, real):
        def call(*a, **k):
            self.calls[name] = self.calls.get(name, 0) + 1
            return real(*a, **k)
        return call


@pytest.mark.parametrize("entries", [200, 20_000])
def test_eviction_costs_what_it_frees_not_the_size_of_the_cache(tmp_path, monkeypatch, entries):
    """The same eviction (one pack) over a small and a 100x larger cache: the same file calls,
    none of them a stat or a directory scan."""
    bound = 64 << 20  # packs of 2 MiB
    store = DiskStore(tmp_path, bound)
    block = bytes(bound // entries)
    store.put_many([(f"old{i}", block) for i in range(entries)])
    assert store.bytes_used <= bound
    with sqlite3.connect(tmp_path / INDEX_NAME) as db:
        packs = db.execute("SELECT n, size FROM packs ORDER BY used").fetchall()
    new = bound - store.bytes_used + 1  # one byte over the bound
    excess, expected = store.bytes_used + new - int(bound * packstore.EVICT_TO), 0
    while excess > 0:  # the oldest whole packs that bring it down to 90%
        excess -= packs[expected][1]
        expected += 1
    calls = FileCalls(monkeypatch)
    store.put("new", bytes(new))
    counted = dict(calls.calls)
    monkeypatch.undo()
    assert counted.get("stat", 0) + counted.get("lstat", 0) + counted.get("scandir", 0) + counted.get("listdir", 0) == 0
    assert counted["unlink"] == expected <= 4  # a few whole packs, however many records they hold
    assert [n for n, _ in packs[:expected] if (tmp_path / pack_name(n)).exists()] == []
    assert store.bytes_used <= bound * packstore.EVICT_TO


def test_two_stores_on_one_directory_share_records_and_survive_each_others_eviction(tmp_path):
    a, b = DiskStore(tmp_path, 100_000), DiskStore(tmp_path, 100_000)
    a.put("from a", b"a" * 100)
    b.put("from b", b"b" * 100)
    assert a.get("from b") == b"b" * 100 and b.get("from a") == b"a" * 100
    # a fills the cache past its bound: b's pack (older) is evicted under b
    for i in range(40):
        a.put(f"fill{i}", bytes(3000))
    assert b.get("from b") is None
    assert b.put("b again", b"B" * 100), "b noticed its pack was gone and started a new one"
    assert a.get("b again") == b"B" * 100 and b.get("b again") == b"B" * 100
    assert a.bytes_used <= 100_000


def test_the_previous_layout_and_orphan_packs_are_removed_at_start(tmp_path):
    old_dir = tmp_path / "ab"
    old_dir.mkdir()
    (old_dir / ("ab" * 32)).write_bytes(b"CIAFSB1\n" + bytes(40))
    (old_dir / ("ab" * 32 + ".tmp.42.1")).write_bytes(b"half")
    keep = tmp_path / "notes"  # not ours to remove: not a two-hex-digit directory
    keep.mkdir()
    (tmp_path / "cd").symlink_to(keep)  # a link is never followed, nor removed
    orphan, fresh = tmp_path / pack_name(1), tmp_path / pack_name(2)
    for path in (orphan, fresh):
        path.write_bytes(b"x" * 10)
    then = time.time() - ORPHAN_AGE - 60
    os.utime(orphan, (then, then))
    store = DiskStore(tmp_path, 1 << 20)
    store.put("k", b"v")
    store.load_index()
    assert not old_dir.exists() and not orphan.exists()
    assert fresh.exists() and keep.is_dir() and (tmp_path / "cd").is_symlink()
    assert store.get("k") == b"v" and store.bytes_used == 1


def test_a_damaged_index_is_replaced_by_an_empty_one(tmp_path, caplog):
    store = DiskStore(tmp_path, 1 << 20)
    store.put("k", b"v" * 100)
    store.close()
    for name in os.listdir(tmp_path):
        if name.startswith(INDEX_NAME):
            (tmp_path / name).write_bytes(b"not a database" * 100)
    again = DiskStore(tmp_path, 1 << 20)
    assert "cannot be used" in caplog.text
    assert again.get("k") is None and again.put("k", b"w") and again.get("k") == b"w"
    assert [n for n in os.listdir(tmp_path) if n.endswith(".pack")] == [pack_name(records(tmp_path)[0][0])]


def test_an_index_of_another_version_is_replaced_and_one_that_cannot_be_opened_turns_the_store_off(tmp_path, caplog):
    store = DiskStore(tmp_path / "a", 1 << 20)
    store.put("k", b"v")
    store.close()
    with sqlite3.connect(tmp_path / "a" / INDEX_NAME) as db:
        db.execute("PRAGMA user_version=99")
    again = DiskStore(tmp_path / "a", 1 << 20)
    assert "index version 99" in caplog.text and again.enabled and again.get("k") is None
    (tmp_path / "b").mkdir(mode=0o700)
    (tmp_path / "b" / INDEX_NAME).mkdir()  # not a file (nor a database)
    off = DiskStore(tmp_path / "b", 1 << 20)
    assert not off.enabled and "memory cache only" in caplog.text
    assert off.get("k") is None and not off.put("k", b"v") and not off.might_have("k") and off.bytes_used == 0


def test_clear_removes_old_packs_or_everything(tmp_path):
    store = DiskStore(tmp_path, 1 << 20)
    store.put("k", b"v" * 100)
    assert store.clear(time.time() - 86400) == (0, 0)
    (tmp_path / "ef").mkdir()
    (tmp_path / "ef" / ("ef" * 32)).write_bytes(bytes(50))
    assert store.describe()["files"] == 2 and store.describe()["records"] == 1
    assert store.clear() == (2, 150)
    assert store.get("k") is None and store.describe() == {"bytes": 0, "files": 0, "records": 0, "least_recently_used": None}
    assert store.put("k", b"again") and store.get("k") == b"again"


# -- O_DIRECT writes ------------------------------------------------------------------------------

def page_views(pages: list[int], seed: int = 1) -> list[memoryview]:
    """Read-only views of one page-aligned run buffer (as the reader keeps a run's blocks), each
    `pages[i]` pages long, filled with distinct bytes."""
    run = buffers.unfilled(max(sum(pages) * buffers.PAGE, buffers.ALIGN_FROM))  # (smaller ones: unaligned)
    assert buffers.address(run) % buffers.PAGE == 0
    for i in range(len(run) // 8):
        run[i * 8:i * 8 + 8] = (i * 2654435761 + seed).to_bytes(8, "little")
    view, out, at = memoryview(run).toreadonly(), [], 0
    for n in pages:
        out.append(view[at:at + n * buffers.PAGE])
        at += n * buffers.PAGE
    return out


def spy_writes(monkeypatch) -> list[tuple[bool, int, int]]:
    """(through an O_DIRECT descriptor, offset, bytes) of every pwritev of the store."""
    calls: list[tuple[bool, int, int]] = []
    real = os.pwritev

    def pwritev(fd, bufs, offset):
        calls.append((bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT), offset, sum(len(b) for b in bufs)))
        return real(fd, bufs, offset)

    monkeypatch.setattr(packstore.os, "pwritev", pwritev)
    return calls


def test_whole_pages_of_a_run_go_to_disk_with_o_direct_and_the_rest_through_the_page_cache(tmp_path, monkeypatch):
    """A cold read's blocks (views of a page-aligned run buffer) are written straight from
    memory to the device: never copied into the page cache (on this machine a copy of 1 GiB is
    0.4-0.6 CPU-s). Records of other lengths or kinds share the pack; every one reads back exact."""
    calls = spy_writes(monkeypatch)
    store = DiskStore(tmp_path, 1 << 30)
    views = page_views([32, 32, 1, 3])
    items = [("size|a", b"12345"), ("a|131072|0", views[0]), ("a|131072|1", views[1]), ("small", b"s" * 100),
             ("a|4096|7", views[2]), ("odd", views[3][:5000]), ("a|4096|9", views[3])]
    assert store.put_many(items) == len(items)
    for key, data in items:
        assert store.get(key) == bytes(data), key
    on_disk = {pos: length for _, pos, length in records(tmp_path)}
    direct = [(offset, size) for through_direct, offset, size in calls if through_direct]
    assert sum(size for _, size in direct) == (32 + 32 + 1 + 3) * buffers.PAGE, calls
    assert all(offset % buffers.PAGE == 0 for offset, _ in direct)
    assert direct[0] == (buffers.PAGE, 64 * buffers.PAGE), "two consecutive blocks: one write, after the size record's page"
    assert sorted(on_disk.values()) == sorted(len(d) for _, d in items)
    store.close()
    assert DiskStore(tmp_path, 1 << 30).get("a|131072|1") == bytes(views[1])  # the next mount


def test_buffers_to_receive_into_are_page_aligned_and_exactly_as_long_as_asked():
    for n in (buffers.ALIGN_FROM, 1 << 20, (1 << 20) + 5, 4 << 20):
        run = buffers.unfilled(n)
        assert type(run) is bytearray and len(run) == n and buffers.address(run) % buffers.PAGE == 0
        view = memoryview(run).toreadonly()
        assert buffers.page_aligned(view[buffers.PAGE:3 * buffers.PAGE])
        assert not buffers.page_aligned(view[1:buffers.PAGE + 1]) and not buffers.page_aligned(view[:100])
    assert len(buffers.unfilled(100)) == 100


def test_a_filesystem_refusing_o_direct_gets_the_same_bytes_through_the_page_cache(tmp_path, monkeypatch, caplog):
    caplog.set_level("INFO", logger=packstore.__name__)
    calls = spy_writes(monkeypatch)
    real = packstore.os.pwritev
    refused = 0

    def refuse_direct(fd, bufs, offset):  # as a device with sectors larger than a page would
        nonlocal refused
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused += 1
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, bufs, offset)

    monkeypatch.setattr(packstore.os, "pwritev", refuse_direct)
    store = DiskStore(tmp_path, 1 << 30)
    for round_ in range(packstore.DIRECT_REFUSALS_TOLERATED + 3):
        items = [(f"b{round_}|4096|{i}", v) for i, v in enumerate(page_views([1, 2], seed=round_))]
        assert store.put_many(items) == 2
        assert all(store.get(k) == bytes(v) for k, v in items)
    assert refused == packstore.DIRECT_REFUSALS_TOLERATED, "then no more attempts"
    assert "O_DIRECT writes refused" in caplog.text and store.enabled
    assert not any(through_direct for through_direct, _, _ in calls)

    real_open = os.open  # and one whose files cannot be opened with O_DIRECT at all
    monkeypatch.setattr(packstore.os, "open", lambda path, flags, *a: (
        (_ for _ in ()).throw(OSError(errno.EINVAL, "Invalid argument")) if flags & os.O_DIRECT
        else real_open(path, flags, *a)))
    other = DiskStore(tmp_path / "other", 1 << 30)
    (view,) = page_views([4])
    assert other.put("k|4096|0", view) and other.get("k|4096|0") == bytes(view)
    assert "no O_DIRECT writes" in caplog.text


# -- the store against a model ------------------------------------------------------------------

KEYS = [f"art{i}|4096|{j}" for i in range(3) for j in range(4)]
operation = st.one_of(
    st.tuples(st.just("put"), st.lists(st.tuples(st.sampled_from(KEYS), st.binary(max_size=600)), min_size=1, max_size=4)),
    st.tuples(st.just("put_pages"), st.lists(st.tuples(st.sampled_from(KEYS), st.integers(1, 3)), min_size=1, max_size=4)),
    st.tuples(st.just("get"), st.sampled_from(KEYS)),
    st.tuples(st.just("discard"), st.sampled_from(KEYS)),
    st.tuples(st.just("restart"), st.none()),
    st.tuples(st.just("damage"), st.integers(min_value=0, max_value=10_000)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operation, max_size=40), bound=st.sampled_from([1500, 1 << 20]))
def test_the_store_behaves_like_a_dict_that_may_forget(tmp_path_factory, ops, bound):
    """Every get is the last bytes put under the key, or a miss; with a bound larger than all
    the bytes ever put and no damage, never a miss. A flipped byte (anywhere) is a miss at worst."""
    root = tmp_path_factory.mktemp("store")
    store = DiskStore(root, bound)
    model: dict[str, bytes] = {}
    may_miss = bound < 1 << 20
    for op, arg in ops:
        if op == "put_pages":  # a run's blocks (O_DIRECT), each a few pages long
            keys = [key for key, _ in arg]
            views = page_views([pages for _, pages in arg], seed=len(model))
            assert store.put_many(list(zip(keys, views, strict=True))) == len(keys)
            model.update((key, bytes(view)) for key, view in zip(keys, views, strict=True))
        elif op == "put":
            stored = store.put_many(arg)
            assert stored == len(arg)
            model.update(arg)
            assert store.bytes_used <= bound
        elif op == "get":
            got = store.get(arg)
            if arg not in model:
                assert got is None
            elif may_miss:
                assert got in (None, model[arg])
            else:
                assert got == model[arg]
        elif op == "discard":
            store.discard(arg)
            model.pop(arg, None)
        elif op == "restart":
            store.close()
            store = DiskStore(root, bound)
            store.load_index()
        else:
            packs = sorted(n for n in os.listdir(root) if n.endswith(".pack") and (root / n).stat().st_size)
            if packs:
                path = root / packs[arg % len(packs)]
                raw = bytearray(path.read_bytes())
                raw[arg % len(raw)] ^= 0x5A
                path.write_bytes(bytes(raw))
                may_miss = True
    for key in KEYS:
        got = store.get(key)
        assert got is None if key not in model else got in ((None, model[key]) if may_miss else (model[key],))
    store.close()


# -- through a real mount ------------------------------------------------------------------------

def test_the_previous_cache_layout_is_removed_at_mount(fake, mount, tmp_path):
    blocks = tmp_path / "cache" / "blocks"
    os.makedirs(blocks / "ab", mode=0o700)
    old = blocks / "ab" / ("ab" * 32)
    old.write_bytes(b"CIAFSB1\n" + bytes(40))
    m = mount(cache_dir=tmp_path / "cache")
    assert wait_for(lambda: not old.exists()), "the previous layout's file is still there"
    assert sorted(os.listdir(m.path)) == ["actions", "bitbucket", "circleci", "github"]
