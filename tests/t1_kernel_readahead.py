"""Tier 1: finding a mount's backing device in mountinfo, and raising its read-ahead window
(against a stand-in sysfs directory; the real one is exercised by tests/t3_page_cache.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ciartfs.kernel_readahead import READAHEAD_KB, device_of, raise_readahead

MOUNTINFO = """\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
36 22 0:41 / /tmp/mnt rw,nosuid,nodev,relatime shared:20 - fuse.ciartfs ciartfs ro,user_id=0,group_id=0
37 22 0:42 / /tmp/with\\040space rw,nosuid,nodev,relatime - fuse.ciartfs ciartfs ro
38 22 0:43 / /tmp/mnt rw,nosuid,nodev,relatime shared:21 - fuse.ciartfs ciartfs ro
39 22 0:44 / /tmp/tmpfs rw,relatime - tmpfs tmpfs rw
40 22 0:45 / /tmp/blk rw,relatime - fuseblk /dev/sdb1 rw
"""


def test_the_device_of_the_last_fuse_mount_at_a_path():
    assert device_of("/tmp/mnt", MOUNTINFO) == "0:43"  # mounted over the first: the one in force
    assert device_of("/tmp/with space", MOUNTINFO) == "0:42"  # octal escapes undone
    assert device_of("/tmp/blk", MOUNTINFO) == "0:45"
    assert device_of("/tmp/tmpfs", MOUNTINFO) is None  # not ours to touch
    assert device_of("/nowhere", MOUNTINFO) is None
    assert device_of("/tmp/mnt", "garbage\n\n1 2 3\n") is None


@pytest.fixture
def sysfs(tmp_path: Path) -> tuple[Path, Path, Path]:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTINFO)
    window = tmp_path / "bdi" / "0:43" / "read_ahead_kb"
    window.parent.mkdir(parents=True)
    window.write_text("128\n")
    return mountinfo, tmp_path / "bdi", window


def test_the_window_is_raised(sysfs):
    mountinfo, bdi, window = sysfs
    assert raise_readahead("/tmp/mnt", mountinfo_path=str(mountinfo), bdi_dir=str(bdi)) == READAHEAD_KB
    assert window.read_text() == str(READAHEAD_KB)


def test_a_larger_window_is_kept(sysfs):
    mountinfo, bdi, window = sysfs
    window.write_text("4096\n")
    assert raise_readahead("/tmp/mnt", mountinfo_path=str(mountinfo), bdi_dir=str(bdi)) == 4096
    assert window.read_text() == "4096\n"


def test_what_cannot_be_done_leaves_the_mount_as_it_is(sysfs, tmp_path):
    mountinfo, bdi, window = sysfs
    assert raise_readahead("/nowhere", mountinfo_path=str(mountinfo), bdi_dir=str(bdi)) is None
    assert raise_readahead("/tmp/mnt", mountinfo_path=str(tmp_path / "absent"), bdi_dir=str(bdi)) is None
    assert raise_readahead("/tmp/blk", mountinfo_path=str(mountinfo), bdi_dir=str(bdi)) is None  # no such bdi
    window.write_text("not a number")
    assert raise_readahead("/tmp/mnt", mountinfo_path=str(mountinfo), bdi_dir=str(bdi)) is None
    window.write_text("128")
    os.chmod(window, 0o444)
    if os.geteuid() != 0:  # root writes whatever the mode says
        assert raise_readahead("/tmp/mnt", mountinfo_path=str(mountinfo), bdi_dir=str(bdi)) is None
        assert window.read_text() == "128"
