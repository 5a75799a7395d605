"""The FUSE layer: translate kernel requests into calls on the tree and the reader.

No HTTP and no JSON here. Every handler ends in a reply or a `pyfuse3.FUSEError`: our own
errors map through their `errno`, anything unexpected is logged with its traceback and
becomes EIO, because any other exception escaping a handler would kill the mount.
"""

from __future__ import annotations

import collections
import errno
import functools
import gc
import itertools
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pyfuse3
import trio

from ciartfs.data.livelog import LiveStream
from ciartfs.data.reader import Reader, ReadStream
from ciartfs.errors import ArtifactExpired, CiartfsError, UpstreamError, redact_url
from ciartfs.namespace.model import Artifact, Kind
from ciartfs.namespace.names import NAME_MAX
from ciartfs.namespace.tree import Node, Tree, return_freed_memory

log = logging.getLogger(__name__)

# Kernel cache timeouts. What never changes (a completed build) may be cached for a day;
# what can change (recent builds, `latest`, a running build) only briefly: our own TTLs
# decide when the API is asked again, this only bounds how stale the kernel's view is. An
# entry of a complete listing that is still fresh is kept as long as that listing (no staler
# than what the tree itself answers until then).
IMMUTABLE_TIMEOUT = 86400.0
MUTABLE_TIMEOUT = 1.0
# A file whose size is not known yet (slow) or could not be learned is shown as 0 bytes with
# attributes that expire at once: each stat asks again, and gets the true size when it comes.
UNKNOWN_SIZE_TIMEOUT = 0.0
# st_blksize is what `cp`, `cat` and stdio use as their buffer size; the kernel's largest
# buffered read is 128 KiB, so a bigger hint gains nothing.
PREFERRED_IO_SIZE = 128 << 10
XATTR_PREFIX = b"user.ciartfs."
# Attributes outside the user namespace (security.selinux, system.posix_acl_access, ...) are
# unsupported, not merely absent: `ls -l` asks for two of them per file, and on EOPNOTSUPP it
# stops asking for the rest of the device (ENODATA costs 2 round trips per file, ~45 us each:
# 90 ms of an `ls -l` of 1000 artifacts).
XATTR_NAMESPACE = b"user."
ERROR_XATTR = XATTR_PREFIX + b"error"

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _edge(handler: F) -> F:
    """Map every error at the edge: FUSEError passes, CiartfsError -> its errno, the rest EIO."""

    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except CiartfsError as e:
            # A missing name is routine (shells probe for files); an expired artifact is not.
            routine = e.errno == errno.ENOENT and not isinstance(e, ArtifactExpired)
            # a failure already logged once (a content hash mismatch, raised on each later read)
            level = logging.DEBUG if routine or getattr(e, "reported", False) else logging.WARNING
            if not routine:
                args[0].errors[errno.errorcode.get(e.errno, str(e.errno))] += 1
            log.log(level, "%s: %s (%s)", handler.__name__, e, errno.errorcode.get(e.errno, e.errno))
            raise pyfuse3.FUSEError(e.errno) from None
        except (trio.Cancelled, KeyboardInterrupt):
            raise
        except ExceptionGroup as group:  # concurrent work that all failed our way: its first error
            ours, rest = group.split(CiartfsError)
            if rest is None and ours is not None:
                first = _first_leaf(ours)
                args[0].errors[errno.errorcode.get(first.errno, str(first.errno))] += 1
                log.warning("%s: %s (%s)", handler.__name__, first, errno.errorcode.get(first.errno, first.errno))
                raise pyfuse3.FUSEError(first.errno) from None
            log.exception("internal error in %s", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            args[0].errors["internal"] += 1
            log.exception("internal error in %s", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


def _first_leaf(group: BaseExceptionGroup) -> CiartfsError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first  # type: ignore[return-value]


def _read_only(name: str) -> Any:  # Any: it stands in for Operations methods of a dozen signatures
    async def handler(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    handler.__name__ = name
    return handler


class _OpenFile:
    __slots__ = ("artifact", "live", "node", "stream")

    def __init__(self, node: Node, artifact: Artifact, live: LiveStream | None = None) -> None:
        self.node = node
        # as opened: a listing refreshed meanwhile (a live log become a link) changes the node's
        self.artifact = artifact
        self.live = live
        self.stream = ReadStream()


class ArtifactFS(pyfuse3.Operations):
    """Read-only artifacts: files 0444, directories 0555, writes EROFS."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, tree: Tree, reader: Reader) -> None:
        super().__init__()
        self.tree = tree
        self.reader = reader
        self._uid, self._gid = os.getuid(), os.getgid()
        self._handles = itertools.count(1)
        self._dirs: dict[int, list[Node]] = {}
        self._files: dict[int, _OpenFile] = {}
        self.errors: collections.Counter[str] = collections.Counter()  # errno name -> count, for status
        self.initialized = trio.Event()  # the kernel has our INIT reply (see `init`)

    def init(self) -> None:
        # pyfuse3 calls this while answering the kernel's INIT, which is sent as soon as this
        # returns: what must come after the kernel has it (kernel_readahead.py) waits for this
        self.initialized.set()

    def attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.inode
        if node.kind is Kind.DIR:
            attr.st_mode, attr.st_nlink, attr.st_size = stat.S_IFDIR | 0o555, 2, 0
        elif node.kind is Kind.LINK:
            attr.st_mode, attr.st_nlink = stat.S_IFLNK | 0o777, 1
            attr.st_size = len((node.target or "").encode())
        else:
            attr.st_mode, attr.st_nlink = stat.S_IFREG | 0o444, 1
            attr.st_size = node.size or 0
        attr.st_blocks = (attr.st_size + 511) // 512
        attr.st_blksize = PREFERRED_IO_SIZE
        attr.st_uid, attr.st_gid = self._uid, self._gid
        ns = int(node.mtime * 1e9)
        attr.st_mtime_ns = attr.st_ctime_ns = attr.st_atime_ns = ns
        timeout = IMMUTABLE_TIMEOUT if node.immutable else MUTABLE_TIMEOUT
        if not node.immutable and (fresh := self.tree.fresh_for(node)) is not None:
            # no staler than the tree's own listing: `grep -r` over a Taskcluster group (whose
            # tasks can gain runs) then makes no lookup per task once readdirplus named it
            timeout = min(IMMUTABLE_TIMEOUT, max(timeout, fresh))
        attr.entry_timeout = attr.attr_timeout = timeout
        if node.kind is Kind.FILE and node.size is None:
            attr.attr_timeout = UNKNOWN_SIZE_TIMEOUT  # the name stays; the size is asked for again
        art = node.made_artifact  # (not node.artifact: a packed file's, never live, is made when asked for)
        if art is not None and art.live:
            # a growing file: the bytes seen so far, asked for at every stat (`tail -f` polls it)
            attr.st_size = self.reader.live.size(art.key)
            attr.st_blocks = (attr.st_size + 511) // 512
            attr.attr_timeout = UNKNOWN_SIZE_TIMEOUT
        return attr

    # -- names --------------------------------------------------------------------------------

    @_edge
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if len(name) > NAME_MAX:  # the kernel leaves this check to each filesystem
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        try:  # names come from JSON text: bytes that are not UTF-8 name nothing here
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        node = await self.tree.lookup(self.tree.get(parent_inode), text)
        self.tree.remember(node)
        return self.attributes(node)

    @_edge
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self.tree.get(inode)
        await self.tree.learn_size(node)  # a slow or failed size: shown as unknown, not an error
        return self.attributes(node)

    @_edge
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self.tree.get(inode)
        if node.kind is not Kind.LINK or node.target is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(node.target)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            self.tree.forget(inode, count)
        if self.tree.trim_due():  # a large directory was released: give its memory back
            # A full collection first: it also empties the interpreter's free lists (tuples,
            # dicts, lists the listing's work left there), whose few objects otherwise keep
            # whole allocator arenas of 1 MiB mapped (4 MiB of a 100k listing's, in-process).
            # Once per large release, on this thread (the collector holds the GIL anyway).
            gc.collect()
            await trio.to_thread.run_sync(return_freed_memory)

    # -- directories --------------------------------------------------------------------------

    @_edge
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        # The listing is taken once per open, so offsets stay valid across readdir calls.
        children = await self.tree.list(self.tree.get(inode))
        fh = next(self._handles)
        self._dirs[fh] = children
        return fh

    @_edge
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        children = self._dirs.get(fh)
        if children is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        for index in range(start_id, len(children)):
            child = children[index]
            if not pyfuse3.readdir_reply(token, os.fsencode(child.name), self.attributes(child), index + 1):
                break
            self.tree.remember(child)  # readdirplus: each reply is a lookup

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- files --------------------------------------------------------------------------------

    @_edge
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise pyfuse3.FUSEError(errno.EROFS)
        node = self.tree.get(inode)
        if node.kind is not Kind.FILE or node.artifact is None:
            raise pyfuse3.FUSEError(errno.EISDIR if node.kind is Kind.DIR else errno.EINVAL)
        if node.artifact.error:
            raise UpstreamError(f"{node.path}: error artifact: {await self.reader.error_reason(node.artifact)}")
        art = node.artifact
        if art.live:
            # One shared stream; reads bypass the page cache (direct_io), which would otherwise
            # cut them at the size the kernel last saw and keep pages of a file that grows.
            live = await self.reader.live.acquire(art.key, art.url, art.credentialed)
            fh = next(self._handles)
            self._files[fh] = _OpenFile(node, art, live)
            return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)
        size = await self.tree.size_of(node)  # waits for a slow size; raises the artifact's own error
        fh = next(self._handles)
        self._files[fh] = _OpenFile(node, art)
        self.reader.opened(node.artifact, size)
        # The page cache may keep what an immutable file's reads brought in across opens.
        return pyfuse3.FileInfo(fh=fh, keep_cache=node.immutable)

    @_edge
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:  # type: ignore[override]
        # (pyfuse3 takes any contiguous buffer: PyObject_GetBuffer, then its reply copies it)
        handle = self._files.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        self.reader.stats.reads += 1
        if handle.live is not None:
            return await self._read_live(handle.live, off, size)
        node = handle.node
        # A growing file is served up to the size the kernel was shown (it pads short replies).
        return await self.reader.read_buffer(handle.artifact, off, size, handle.stream, total=node.size)

    async def _read_live(self, live: LiveStream, off: int, size: int) -> bytes:
        """What has arrived from `off` (direct_io: a short reply is not padded; b"" is the end
        for now, and `tail -f` asks again). A stream that broke fails at its end, with EIO."""
        await live.wait_for(off, self.reader.live.timeout)
        data = await live.read(off, size)
        if not data and live.error is not None and off >= live.seen:
            raise UpstreamError(f"live log cut short after {live.seen} bytes: {live.error}")
        return data

    async def release(self, fh: int) -> None:
        handle = self._files.pop(fh, None)
        if handle is not None and handle.live is not None:
            self.reader.live.release(handle.live)

    async def flush(self, fh: int) -> None:
        # Nothing to flush on a read-only mount. ENOSYS, once, tells the kernel never to send
        # FLUSH again (it is then a success): `close` no longer waits for a round trip to us
        # (`grep -r` over 2000 members: 2000 fewer requests, each waited for).
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @_edge
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = PREFERRED_IO_SIZE
        data.f_namemax = 255
        return data

    # -- extended attributes ----------------------------------------------------------------------

    @_edge
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if not name.startswith(XATTR_NAMESPACE):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        value = await self._xattr(self.tree.get(inode), name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value.encode()

    @_edge
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        node = self.tree.get(inode)
        art = node.artifact  # (first: a packed file's info may be made with it)
        names = [XATTR_PREFIX + key.encode() for key in node.info]
        if art is not None:
            names += [XATTR_PREFIX + key.encode() for key in ("url", "cached") if key not in node.info]
            if art.error or node.error is not None:
                names.append(ERROR_XATTR)
        return names

    async def _xattr(self, node: Node, name: bytes) -> str | None:
        if not name.startswith(XATTR_PREFIX):
            return None
        key = name[len(XATTR_PREFIX):].decode(errors="replace")
        art = node.artifact
        if art is not None:
            if key == "url":
                return redact_url(art.url)
            if key == "cached":
                return str(await self.reader.cached_bytes(art, node.size or 0))
            if key == "error":
                if art.error:
                    return await self.reader.error_reason(art)
                await self.tree.learn_size(node)  # a remembered failure comes back at once
                if node.error is not None:
                    return f"{errno.errorcode.get(node.error.errno, node.error.errno)}: {node.error}"
        return node.info.get(key)

    # -- everything that would write: EROFS (the mount is also 'ro', this is defence in depth)

    setattr = _read_only("setattr")
    mknod = _read_only("mknod")
    mkdir = _read_only("mkdir")
    unlink = _read_only("unlink")
    rmdir = _read_only("rmdir")
    symlink = _read_only("symlink")
    rename = _read_only("rename")
    link = _read_only("link")
    create = _read_only("create")
    write = _read_only("write")
    setxattr = _read_only("setxattr")
    removexattr = _read_only("removexattr")
