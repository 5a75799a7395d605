"""Tier 3: the commands as a user runs them: background mount, unmount, signals, failures, demo."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ciartfs.cli.mountpoint import is_mounted
from conftest import clean_env, require_fuse, wait_for

INSTALLED_COMMAND = os.path.join(os.path.dirname(sys.executable), "ciartfs")


class Runner:
    """Runs `ciartfs ...` and cleans up whatever it mounted or started, by pid."""

    def __init__(self, tmp_path: Path, api_url: str) -> None:
        self.tmp_path = tmp_path
        self.api_url = api_url
        self.pids: list[int] = []
        self.mountpoints: list[Path] = []

    def mountpoint(self, name: str = "mnt") -> Path:
        path = self.tmp_path / name
        path.mkdir(exist_ok=True)
        self.mountpoints.append(path)
        return path

    def settings(self) -> list[str]:
        return ["--circleci-host", self.api_url, "--cache-dir", str(self.tmp_path / "cache"),
                "--log-file", str(self.tmp_path / "ciartfs.log"), "--timeout", "3"]

    def run(self, *args: str, timeout: float = 60, cwd: Path | None = None, installed: bool = False,
            without: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        """`installed`: through the `ciartfs` command as installed, as a user runs it (from `cwd`);
        `without`: environment variables to leave out."""
        command = [INSTALLED_COMMAND] if installed else [sys.executable, "-m", "ciartfs"]
        env = {k: v for k, v in clean_env(self.tmp_path).items() if k not in without}
        result = subprocess.run([*command, *args], capture_output=True, text=True, cwd=cwd,
                                timeout=timeout, env=env, stdin=subprocess.DEVNULL)
        m = re.search(r"\(pid (\d+)", result.stdout)
        if m:
            self.pids.append(int(m.group(1)))
        return result

    def popen(self, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "ciartfs", *args], env=clean_env(self.tmp_path),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.pids.append(proc.pid)
        return proc

    def cleanup(self) -> None:
        for mp in self.mountpoints:
            if is_mounted(str(mp)):
                subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def cli(tmp_path: Path, demo_fake) -> Iterator[Runner]:
    runner = Runner(tmp_path, demo_fake.api_url)
    try:
        yield runner
    finally:
        runner.cleanup()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_background_mount_returns_once_it_answers_then_unmount(cli):
    require_fuse()
    mp = cli.mountpoint()
    result = cli.run("mount", str(mp), *cli.settings())
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(mp)) == ["actions", "bitbucket", "circleci", "github"]  # no waiting: it answers already
    assert "acme" not in os.listdir(mp / "github")  # users cannot be listed, only looked up
    assert os.listdir(mp / "github/acme/api/latest/0")
    pid = cli.pids[-1]
    result = cli.run("unmount", str(mp))
    assert result.returncode == 0, result.stderr
    assert not is_mounted(str(mp))
    assert wait_for(lambda: not pid_alive(pid)), "the mount process exits after unmount"


@pytest.mark.parametrize("planted", ["code", "checkout"])
def test_the_mount_daemon_never_imports_from_the_callers_directory(cli, tmp_path, planted):
    """A `ciartfs/` folder where the user runs the command is never executed by the daemon
    (it would run with the user's uid and tokens), and a checkout there does not break it."""
    require_fuse()
    here = tmp_path / "home"
    marker = tmp_path / "planted-code-ran"
    if planted == "code":
        (here / "ciartfs").mkdir(parents=True)
        for name in ("__init__.py", "__main__.py"):
            (here / "ciartfs" / name).write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    else:  # ~/ciartfs is a checkout (a folder without __init__.py), `ciartfs mount` run from ~
        shutil.copytree(Path(__file__).parents[1] / "ciartfs", here / "ciartfs" / "ciartfs")
        (here / "ciartfs" / "README.md").write_text("# ciartfs\n")
    mp = cli.mountpoint()
    result = cli.run("mount", str(mp), *cli.settings(), cwd=here, installed=True)
    assert result.returncode == 0, result.stderr
    assert "coverage" in os.listdir(mp / "github/acme/api/latest/0")
    assert not marker.exists(), "code from the caller's directory ran"
    assert cli.run("unmount", str(mp)).returncode == 0
    assert not marker.exists()


def test_mount_failures_exit_nonzero_with_one_clear_line(cli, tmp_path):
    require_fuse()
    cases = [
        (["mount", str(tmp_path / "missing")], "does not exist"),
        (["mount", str(cli.mountpoint("a")), "--block-size", "1000"], "block size"),
        (["mount", str(cli.mountpoint("b")), "--memory-cache", "lots"], "--memory-cache"),
        (["mount", str(cli.mountpoint("c")), "--circleci-host", "ftp://x"], "http"),
        (["mount", str(cli.mountpoint("d")), "--config", str(tmp_path / "none.toml")], "not found"),
    ]
    for args, words in cases:
        result = cli.run(*args)
        assert result.returncode != 0, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and lines[0].startswith("ciartfs: "), (args, result.stderr)
    mp = cli.mountpoint("busy")
    assert cli.run("mount", str(mp), *cli.settings()).returncode == 0
    result = cli.run("mount", str(mp), *cli.settings())
    assert result.returncode != 0 and "busy" in result.stderr
    assert cli.run("unmount", str(mp)).returncode == 0
    result = cli.run("unmount", str(mp))
    assert result.returncode != 0 and "not mounted" in result.stderr


@pytest.mark.parametrize("flag", ["--circleci-token", "--github-token", "--gh-token"])
def test_token_is_never_a_flag(cli, flag):
    result = cli.run("mount", str(cli.mountpoint()), flag, "abc")
    assert result.returncode == 2 and "unrecognized arguments" in result.stderr


def test_status_shows_the_github_rate_limit_left(cli, demo_fake, tmp_path):
    require_fuse()
    from conftest import TOKEN

    token_file = tmp_path / "gh-token"
    token_file.write_text(TOKEN + "\n")
    mp = cli.mountpoint()
    mounted = cli.run("mount", str(mp), *cli.settings(), "--github-api-url", demo_fake.api_url,
                      "--github-token-file", str(token_file))
    assert mounted.returncode == 0, mounted.stderr
    assert "latest" in os.listdir(mp / "actions/acme/api")
    used = demo_fake.github.rate_limit_used(TOKEN)
    assert used > 0
    left = re.compile(re.escape(f"GitHub Actions: {demo_fake.api_url}  (token set)  rate limit: ")
                      + r"(\d+)/5000 requests left, resets \d\d:\d\d:\d\d UTC")


    def shown() -> int | None:
        found = left.search(cli.run("status").stdout)
        return int(found.group(1)) if found else None

    assert wait_for(lambda: shown() == 5000 - used, timeout=10), (cli.run("status").stdout, used)
    assert cli.run("unmount", str(mp)).returncode == 0


def test_unreachable_host_mounts_and_listings_give_eio(cli):
    require_fuse()
    mp = cli.mountpoint()
    settings = cli.settings()
    settings[1] = "http://127.0.0.1:9"  # discard port: nothing listens
    result = cli.run("mount", str(mp), *settings)
    assert result.returncode == 0, result.stderr
    with pytest.raises(OSError) as info:
        os.listdir(mp / "github/acme/api")
    assert info.value.errno == errno.EIO
    assert cli.run("unmount", str(mp)).returncode == 0


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "fusermount3"])
def test_foreground_stops_cleanly(cli, how):
    require_fuse()
    mp = cli.mountpoint()
    proc = cli.popen("mount", "-f", str(mp), *cli.settings())
    assert wait_for(lambda: is_mounted(str(mp))), proc.stderr.read().decode() if proc.poll() is not None else ""
    assert sorted(os.listdir(mp)) == ["actions", "bitbucket", "circleci", "github"]
    if how == "fusermount3":
        subprocess.run(["fusermount3", "-u", str(mp)], check=True)
    else:
        proc.send_signal(getattr(signal, how))
    assert proc.wait(timeout=15) == 0
    assert not is_mounted(str(mp))


def test_stale_mount_is_explained_and_cleared_by_unmount(cli):
    require_fuse()
    mp = cli.mountpoint()
    proc = cli.popen("mount", "-f", str(mp), *cli.settings())
    assert wait_for(lambda: is_mounted(str(mp)))
    proc.kill()
    proc.wait(timeout=10)
    with pytest.raises(OSError) as info:
        os.listdir(mp)
    assert info.value.errno == errno.ENOTCONN
    result = cli.run("mount", str(mp), *cli.settings())
    assert result.returncode != 0 and "stale" in result.stderr and "ciartfs unmount" in result.stderr
    result = cli.run("unmount", str(mp))
    assert result.returncode == 0, result.stderr
    assert not is_mounted(str(mp))
    result = cli.run("mount", str(mp), *cli.settings())
    assert result.returncode == 0, result.stderr
    assert cli.run("unmount", str(mp)).returncode == 0


def test_demo_shows_real_files_without_any_configuration(cli, tmp_path):
    require_fuse()
    mp = tmp_path / "demo-mount"  # created by demo
    cli.mountpoints.append(mp)
    result = cli.run("demo", str(mp))
    assert result.returncode == 0, result.stderr
    assert "ls" in result.stdout and "unmount" in result.stdout
    latest = mp / "github/acme/api/latest"
    assert os.path.islink(latest)
    files = subprocess.run(["find", str(latest) + "/"], capture_output=True, text=True, timeout=60).stdout
    assert "index.html" in files and "junit.xml" in files
    grep = subprocess.run(["grep", "-rl", "FAILED", str(mp / "github/acme/api")], capture_output=True, text=True, timeout=120)
    assert "junit.xml" in grep.stdout
    from ciartfs.fakeserver.dataset import DEMO_TASK_GROUP
    group = mp / "taskcluster/group" / DEMO_TASK_GROUP
    assert "build-linux64" in os.listdir(group)
    assert (group / "build-linux64/latest/public/build/target.json").read_bytes().startswith(b'{"version"')
    pid = cli.pids[-1]
    assert cli.run("unmount", str(mp)).returncode == 0
    assert wait_for(lambda: not pid_alive(pid))


def test_sigterm_with_reads_in_flight_unmounts_cleanly(cli, demo_fake):
    require_fuse()
    mp = cli.mountpoint()
    proc = cli.popen("mount", "-f", str(mp), *cli.settings(), "--timeout", "30")
    assert wait_for(lambda: is_mounted(str(mp)))
    target = mp / "github/acme/api/2/0/dist/app.tar.gz"
    os.stat(target)
    demo_fake.faults.storage_hang = True  # reads of further blocks now hang upstream
    readers = [subprocess.Popen(["dd", f"if={target}", "of=/dev/null", "bs=1M", "skip=1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(3)]
    time.sleep(1.0)
    assert all(r.poll() is None for r in readers), "the reads are in flight"
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert time.monotonic() - start < 15
    for r in readers:
        assert r.wait(timeout=20) != 0  # the reader gets an error, not a hang
    assert not is_mounted(str(mp))
    demo_fake.faults.storage_hang = False


def test_cache_dir_is_private(cli, tmp_path):
    require_fuse()
    mp = cli.mountpoint()
    assert cli.run("mount", str(mp), *cli.settings()).returncode == 0
    assert (os.stat(tmp_path / "cache").st_mode & 0o777) == 0o700
    assert cli.run("unmount", str(mp)).returncode == 0


def test_a_cache_dir_another_user_owns_or_may_write_is_refused(cli, tmp_path):
    """Cached blocks are trusted when read back: a directory another local user controls could
    hold planted blocks (with a matching checksum) or symlinks."""
    require_fuse()
    mp = cli.mountpoint()
    theirs = tmp_path / "cache"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)  # nobody's
    result = cli.run("mount", str(mp), *cli.settings())
    assert result.returncode != 0 and not is_mounted(str(mp))
    assert re.fullmatch(r"ciartfs: refusing the cache dir: .*cache is owned by uid 65534, not by this user.*\n",
                        result.stderr), result.stderr
    os.chown(theirs, 0, 0)
    theirs.chmod(0o777)
    result = cli.run("mount", str(mp), *cli.settings())
    assert result.returncode != 0 and "writable by other users" in result.stderr
    theirs.chmod(0o755)  # ours, only readable by others: narrowed, and used
    assert cli.run("mount", str(mp), *cli.settings()).returncode == 0
    assert theirs.stat().st_mode & 0o777 == 0o700
    assert cli.run("unmount", str(mp)).returncode == 0


def test_status_agrees_with_the_server_and_cache_commands(cli, demo_fake, tmp_path):
    require_fuse()
    import json

    mp = cli.mountpoint()
    assert cli.run("mount", str(mp), *cli.settings()).returncode == 0
    data = (mp / "github/acme/api/2/0/dist/app.tar.gz").read_bytes()
    (mp / "github/acme/api/2/0/dist/app.tar.gz").read_bytes()  # the second read is a cache hit
    with pytest.raises(FileNotFoundError):
        os.stat(mp / "github/acme/api/2/0/nope")

    def doc():
        out = cli.run("status", str(mp), "--json")
        assert out.returncode == 0, out.stderr
        (one,) = json.loads(out.stdout)
        return one

    assert wait_for(lambda: doc()["stats"]["bytes_served"] >= len(data), timeout=10)
    d = doc()
    assert d["mountpoint"] == os.path.realpath(mp) and d["pid"] == cli.pids[-1]
    assert d["stats"]["http_requests"] == len(demo_fake.requests)
    storage_bytes = len(data)  # every byte of the file crossed the network once
    assert d["stats"]["bytes_fetched"] == storage_bytes
    blocks = -(-len(data) // (128 << 10))  # the default block size
    storage_requests = len([r for r in demo_fake.requests if r.server == "storage"])
    assert d["stats"]["misses"] == blocks  # each block came from the network once ...
    assert storage_requests < blocks / 2  # ... in runs: read-ahead asks for many blocks at once
    assert d["stats"]["memory_hits"] > 0 and d["settings"]["circleci_host"] == cli.api_url
    assert d["disk_bytes"] >= storage_bytes and d["errors"] == {}
    text = cli.run("status").stdout
    assert str(os.path.realpath(mp)) in text and "hit ratio" in text
    info = cli.run("cache", "info", "--cache-dir", str(tmp_path / "cache"))
    assert info.returncode == 0 and "disk use" in info.stdout and " 0 files" not in info.stdout
    assert cli.run("unmount", str(mp)).returncode == 0
    assert wait_for(lambda: json.loads(cli.run("status", "--json").stdout) == [])
    cleared = cli.run("cache", "clear", "--cache-dir", str(tmp_path / "cache"), "--older-than", "1")
    assert cleared.stdout.startswith("removed 0 files")  # everything was used just now
    cleared = cli.run("cache", "clear", "--cache-dir", str(tmp_path / "cache"))
    assert cleared.returncode == 0 and not cleared.stdout.startswith("removed 0 ")
    assert " 0 files" in cli.run("cache", "info", "--cache-dir", str(tmp_path / "cache")).stdout


def test_without_xdg_runtime_dir_status_is_kept_in_the_users_own_directory(cli, tmp_path, monkeypatch):
    """Not in a shared, predictable /tmp/ciartfs-<uid> that another user could create first."""
    require_fuse()
    import json

    shared_tmp = tmp_path / "shared-tmp"
    shared_tmp.mkdir(mode=0o1777)
    mp = cli.mountpoint()
    monkeypatch.setenv("TMPDIR", str(shared_tmp))  # clean_env passes it on
    cli_env = {"without": ("XDG_RUNTIME_DIR",)}
    assert cli.run("mount", str(mp), *cli.settings(), **cli_env).returncode == 0
    assert wait_for(lambda: [m["mountpoint"] for m in json.loads(cli.run("status", "--json", **cli_env).stdout)]
                    == [os.path.realpath(mp)])
    own = tmp_path / "xdg-cache/ciartfs/run"  # the default cache dir's run/
    assert [p.name for p in own.iterdir()] == [f"{cli.pids[-1]}.json"]
    assert own.stat().st_mode & 0o777 == 0o700 and os.listdir(shared_tmp) == []
    assert cli.run("unmount", str(mp)).returncode == 0


def test_prefetch_fills_the_cache_and_resumes(cli, demo_fake, tmp_path):
    require_fuse()
    mp = cli.mountpoint()
    assert cli.run("mount", str(mp), *cli.settings()).returncode == 0
    build = mp / "github/acme/api/4"
    files = [os.path.join(d, f) for d, _, fs in os.walk(build) for f in fs]
    assert len(files) > 5
    demo_fake.clear_requests()
    out = cli.run("prefetch", str(build), "-j", "4")
    assert out.returncode == 0, out.stderr
    # listing probed every file's first block (and kept it): small files are already whole
    small = sum(os.stat(f).st_size <= 128 << 10 for f in files)  # the default block size
    assert 0 < small < len(files)
    assert f"{len(files)} files, {small} already cached; fetching {len(files) - small}" in out.stdout
    assert "done:" in out.stdout and "MiB/s" in out.stdout
    time.sleep(0.5)  # disk writes happen behind the reads
    for f in files:
        assert int(os.getxattr(f, "user.ciartfs.cached")) == os.stat(f).st_size, f
    fetched = len([r for r in demo_fake.requests if r.server == "storage"])
    assert fetched > 0
    demo_fake.clear_requests()
    again = cli.run("prefetch", str(build))
    assert f"{len(files)} already cached; fetching 0" in again.stdout
    assert not [r for r in demo_fake.requests if r.server == "storage"], "nothing fetched twice"
    bad = cli.run("prefetch", str(tmp_path))
    assert bad.returncode != 0 and "not on a ciartfs mount" in bad.stderr
    assert cli.run("unmount", str(mp)).returncode == 0


def test_prefetch_stops_promptly_on_ctrl_c_and_resumes(cli, demo_fake, tmp_path):
    require_fuse()
    big = {f"part{i}.bin": random.Random(i).randbytes(96 << 20) for i in range(2)}
    build = demo_fake.add_project("github", "acme", "huge").add_build(build_num=1)
    for name, data in big.items():
        build.add_artifact(name, data)
    mp = cli.mountpoint()
    assert cli.run("mount", str(mp), *cli.settings()).returncode == 0
    top = mp / "github/acme/huge/1/0"
    assert sorted(os.listdir(top)) == sorted(big)
    assert {n: os.stat(top / n).st_size for n in big} == {n: len(d) for n, d in big.items()}  # sizes learned
    demo_fake.faults.storage_latency = 1.0  # a file now takes over 10 s (16 requests in flight)
    proc = subprocess.Popen([sys.executable, "-m", "ciartfs", "prefetch", "-j", "2", str(top)],
                            env=clean_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cli.pids.append(proc.pid)
    try:
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        out, _ = proc.communicate(timeout=30)
        waited = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Files being read stop after their current chunk (one request away), not at their end
    assert proc.returncode == 130 and "interrupted: 0 of 2 files done" in out, out
    assert waited < 3.5, f"Ctrl-C took {waited:.1f}s"
    demo_fake.faults.storage_latency = 0.0
    again = cli.run("prefetch", str(top))
    assert again.returncode == 0 and "done:" in again.stdout, again.stdout + again.stderr
    for name, data in big.items():  # what was cut short and resumed reads back exact
        assert hashlib.sha256((top / name).read_bytes()).digest() == hashlib.sha256(data).digest(), name
    assert cli.run("unmount", str(mp)).returncode == 0


def test_fstab_style_mount_through_mount_fuse3(cli, tmp_path):
    """/etc/fstab: 'mount  MOUNTPOINT  fuse.ciartfs  noauto,circleci_host=URL,...  0 0'.
    mount(8) hands fuse.ciartfs to mount.fuse3, which runs 'ciartfs mount MOUNTPOINT -o ...'."""
    require_fuse()
    if not shutil.which("mount.fuse3"):
        pytest.skip("mount.fuse3 (package fuse3) is not installed")
    mp = cli.mountpoint()
    opts = (f"noauto,circleci_host={cli.api_url},cache_dir={tmp_path / 'cache'},timeout=5,"
            f"log_file={tmp_path / 'fstab.log'},recent_builds=3")
    env = clean_env(tmp_path)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    # exactly what mount(8) runs for that fstab line (mount(8) itself resets PATH, so for real
    # use ciartfs must be in /usr/local/bin: see the README)
    result = subprocess.run(["mount.fuse3", "ciartfs#mount", str(mp), "-o", opts],
                            capture_output=True, text=True, timeout=60, env=env)
    m = re.search(r"\(pid (\d+)", result.stdout)
    if m:
        cli.pids.append(int(m.group(1)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert is_mounted(str(mp))
    builds = [n for n in os.listdir(mp / "github/acme/api") if n.isdigit()]
    assert len(builds) == 3  # recent_builds=3 came through the options
    assert cli.run("unmount", str(mp)).returncode == 0
    bad = cli.run("mount", str(cli.mountpoint("x")), "-o", "circle_token=abc")
    assert bad.returncode != 0 and "unknown mount option" in bad.stderr
