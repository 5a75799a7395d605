"""Tier 1: settings precedence (flag > env > file > default), sizes, token sources."""

import pytest

from ciartfs.config import load_settings, parse_size
from ciartfs.errors import ConfigError


@pytest.mark.parametrize("text,value", [("4096", 4096), ("512K", 512 << 10), ("256M", 256 << 20),
                                        ("1G", 1 << 30), ("2MiB", 2 << 20), ("3mb", 3 << 20), (77, 77)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("bad", ["", "M", "1.5M", "-1K", "12Q"])
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def write(path, text):
    path.write_text(text)
    return path


def test_precedence_flag_env_file_default(tmp_path):
    cfg = write(tmp_path / "c.toml", 'circleci_host = "https://file.example"\nblock_size = "64K"\n'
                                     'recent_builds = 7\nlatest_ttl = 5\n')
    env = {"CIRCLECI_HOST": "https://env.example", "CIARTFS_BLOCK_SIZE": "128K"}
    s = load_settings({"block_size": "256K"}, env=env, config_path=cfg)
    assert s.block_size == 256 << 10          # flag
    assert s.provider("circleci").host == "https://env.example"  # env beats file
    assert s.recent_builds == 7               # file
    assert s.latest_ttl == 5.0
    assert s.timeout == 30.0                  # default
    assert s.provider("circleci").api == "https://env.example/api/v1.1"


def test_missing_default_config_file_is_fine(tmp_path):
    s = load_settings({}, env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert s.provider("circleci").host == "https://circleci.com"


def test_unknown_key_and_bad_values_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        load_settings({}, env={}, config_path=write(tmp_path / "a.toml", "circle_host = 1\n"))
    with pytest.raises(ConfigError, match="--block-size"):
        load_settings({"block_size": "huge"}, env={})
    with pytest.raises(ConfigError, match="block size"):
        load_settings({"block_size": "1000"}, env={})
    with pytest.raises(ConfigError, match="http"):
        load_settings({"circleci_host": "ftp://x"}, env={})
    with pytest.raises(ConfigError, match="credentials"):
        load_settings({"circleci_host": "https://user:pw@x"}, env={})
    with pytest.raises(ConfigError, match="not found"):
        load_settings({}, env={}, config_path=tmp_path / "missing.toml")


def test_token_sources(tmp_path):
    tok = write(tmp_path / "tok", "file-token\n")
    assert load_settings({}, env={"CIRCLE_TOKEN": "env-token"}).provider("circleci").token == "env-token"
    from_file = load_settings({"circleci_token_file": str(tok)}, env={"CIRCLE_TOKEN": "env-token"})
    assert from_file.provider("circleci").token == "file-token"
    cfg = write(tmp_path / "c.toml", f'circleci_token_file = "{tok}"\n')
    assert load_settings({}, env={}, config_path=cfg).provider("circleci").token == "file-token"
    assert load_settings({}, env={"CIRCLE_TOKEN": "env-token"}, config_path=cfg).provider("circleci").token == "env-token"
    with pytest.raises(ConfigError, match="token file"):
        load_settings({"circleci_token_file": str(tmp_path / "nope")}, env={})


def test_token_never_in_repr(tmp_path):
    s = load_settings({}, env={"CIRCLE_TOKEN": "sekrit-123"})
    assert "sekrit-123" not in repr(s)
    assert s.secrets() == ["sekrit-123"]


def test_taskcluster_settings(tmp_path):
    s = load_settings({}, env={"TASKCLUSTER_ROOT_URL": "https://tc.example/", "TASKCLUSTER_CLIENT_ID": "me",
                               "TASKCLUSTER_ACCESS_TOKEN": "tc-secret"})
    assert s.provider("taskcluster").root_url == "https://tc.example"
    assert s.provider("taskcluster").client_id == "me" and "tc-secret" in s.secrets() and "tc-secret" not in repr(s)
    assert load_settings({}, env={}).provider("taskcluster") is None
    with pytest.raises(ConfigError, match="TASKCLUSTER_CLIENT_ID"):
        load_settings({}, env={"TASKCLUSTER_CLIENT_ID": "me"})


def test_readme_config_example_has_every_key_and_loads(tmp_path):
    import re
    from pathlib import Path

    from ciartfs.config import all_options

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = re.search(r"A `config.toml` with every key:\n\n```toml\n(.*?)```", readme, re.S).group(1)
    path = tmp_path / "config.toml"
    path.write_text(block.replace("~/.config/ciartfs/circle-token", str(tmp_path / "tok"))
                    .replace("~/.config/ciartfs/github-token", str(tmp_path / "gh-tok")))
    (tmp_path / "tok").write_text("t0ken\n")
    (tmp_path / "gh-tok").write_text("gh-t0ken\n")
    settings = load_settings({}, env={}, config_path=path)
    assert {o.key for o in all_options()} <= set(re.findall(r"^(\w+) =", block, re.M))
    assert settings.memory_cache == 512 << 20 and settings.provider("circleci").token == "t0ken"
    assert settings.provider("github").token == "gh-t0ken"


def test_allow_private_addresses_from_flag_env_or_file(tmp_path):
    assert load_settings({}, env={}).allow_private_addresses is False  # off unless asked for
    on = write(tmp_path / "on.toml", "allow_private_addresses = true\n")
    assert load_settings({}, env={}, config_path=on).allow_private_addresses is True
    assert load_settings({}, env={"CIARTFS_ALLOW_PRIVATE_ADDRESSES": "1"}).allow_private_addresses is True
    assert load_settings({}, env={"CIARTFS_ALLOW_PRIVATE_ADDRESSES": "no"}, config_path=on).allow_private_addresses is False
    assert load_settings({"allow_private_addresses": True}, env={}).allow_private_addresses is True
    with pytest.raises(ConfigError, match="CIARTFS_ALLOW_PRIVATE_ADDRESSES"):
        load_settings({}, env={"CIARTFS_ALLOW_PRIVATE_ADDRESSES": "maybe"})


def test_the_address_rule_knows_the_configured_api_hosts(tmp_path):
    from ciartfs.mount import Mount, api_hosts
    from ciartfs.net.addresses import AddressClass

    s = load_settings({"circleci_host": "http://127.0.0.1:8080", "taskcluster_root_url": "https://tc.example",
                       "cache_dir": str(tmp_path / "c")}, env={})
    assert api_hosts(s) == ["127.0.0.1", "tc.example", "api.github.com"]
    assert Mount(s).address_rule.allowed == {AddressClass.PUBLIC, AddressClass.LOOPBACK}
    override = load_settings({"allow_private_addresses": True, "cache_dir": str(tmp_path / "c")}, env={})
    assert Mount(override).address_rule.allowed == {AddressClass.PUBLIC, AddressClass.LOOPBACK, AddressClass.PRIVATE}


def test_max_decoded_size_from_flag_env_file_and_mount_option(tmp_path, monkeypatch):
    from ciartfs.cli.parser import build_parser, settings_from_args

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))  # (the CLI reads the real environment)
    monkeypatch.delenv("CIARTFS_MAX_DECODED_SIZE", raising=False)
    monkeypatch.delenv("CIARTFS_CONFIG", raising=False)

    assert load_settings({}, env={}).max_decoded_size == 16 << 30
    cfg = write(tmp_path / "c.toml", 'max_decoded_size = "2G"\n')
    assert load_settings({}, env={}, config_path=cfg).max_decoded_size == 2 << 30
    assert load_settings({}, env={"CIARTFS_MAX_DECODED_SIZE": "3G"}, config_path=cfg).max_decoded_size == 3 << 30
    assert load_settings({"max_decoded_size": "512M"}, env={"CIARTFS_MAX_DECODED_SIZE": "3G"}).max_decoded_size == 512 << 20
    with pytest.raises(ConfigError, match="--max-decoded-size"):
        load_settings({"max_decoded_size": "0"}, env={})
    args = build_parser().parse_args(["mount", str(tmp_path), "--max-decoded-size", "1G"])
    assert settings_from_args(args).max_decoded_size == 1 << 30
    args = build_parser().parse_args(["mount", str(tmp_path), "-o", "max_decoded_size=64M"])
    assert settings_from_args(args).max_decoded_size == 64 << 20
