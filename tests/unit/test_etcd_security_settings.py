"""The "etcd security" options, one rule for every program that takes --etcd (backend, proxy,
`memring`): flag > MEMRING_ETCD_* > config file, the group last in --help, no password flag,
and a bad combination refused as bad usage naming what to fix."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from memring.backend.settings import load_settings as backend_settings
from memring.cluster.etcd_security import EtcdSecurity
from memring.netio.settings import SettingsError
from memring.proxy.settings import load_settings as proxy_settings

pytestmark = pytest.mark.unit

Load = Callable[[list[str]], object]
PROGRAMS: dict[str, tuple[Load, list[str]]] = {
    "backend": (backend_settings, ["--shard", "s1"]),
    "proxy": (proxy_settings, []),
}


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    paths = {}
    for name, text in (("ca", "CA"), ("cert", "CERT"), ("key", "KEY"),
                       ("password", "secret\nignored\n")):
        path = tmp_path / name
        path.write_text(text)
        paths[name] = str(path)
    return paths


def _flags(files: dict[str, str]) -> list[str]:
    return ["--etcd-ca", files["ca"], "--etcd-cert", files["cert"], "--etcd-key", files["key"],
            "--etcd-user", "memring", "--etcd-password-file", files["password"]]


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_flags_env_and_file(program: str, files: dict[str, str], tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    load, extra = PROGRAMS[program]
    settings = load(["--etcd", "https://127.0.0.1:2379", *extra, *_flags(files)])
    security = EtcdSecurity.of(settings)
    assert security == EtcdSecurity(files["ca"], files["cert"], files["key"], "memring",
                                    files["password"])
    assert security.password() == "secret"
    config = tmp_path / "memring.toml"
    config.write_text(f'[{program}]\netcd_ca = "{files["ca"]}"\netcd_user = "file-user"\n'
                      f'etcd_password_file = "{files["password"]}"\n'
                      + ("[[shards]]\nnodes = ['127.0.0.1:1']\n" if program == "proxy" else ""))
    monkeypatch.setenv("MEMRING_ETCD_USER", "env-user")
    settings = load(["--config", str(config), "--etcd", "https://127.0.0.1:2379", *extra])
    assert (settings.etcd_ca, settings.etcd_user) == (files["ca"], "env-user")  # type: ignore[attr-defined]
    settings = load(["--config", str(config), "--etcd", "https://127.0.0.1:2379", *extra,
                     "--etcd-user", "flag-user"])
    assert settings.etcd_user == "flag-user"  # type: ignore[attr-defined]


@pytest.mark.parametrize("program", sorted(PROGRAMS))
@pytest.mark.parametrize(("urls", "flags", "message"), [
    ("https://127.0.0.1:1,http://127.0.0.1:2", [], "etcd URLs mix http and https: give every "
     "member as https:// (TLS) or every one as http://"),
    ("https://127.0.0.1:1,127.0.0.1:2", [], "etcd URLs mix http and https"),
    ("http://127.0.0.1:1", ["--etcd-ca", "{ca}"], "--etcd-ca/--etcd-cert/--etcd-key need "
     "https:// etcd URLs"),
    ("https://127.0.0.1:1", ["--etcd-cert", "{cert}"], "--etcd-cert and --etcd-key go together"),
    ("https://127.0.0.1:1", ["--etcd-user", "memring"],
     "--etcd-user and --etcd-password-file go together"),
    ("https://127.0.0.1:1", ["--etcd-ca", "/nonexistent/ca.crt"],
     "--etcd-ca /nonexistent/ca.crt: not a readable file"),
    ("https://127.0.0.1:1", ["--etcd-user", "u", "--etcd-password-file", "/nonexistent/pw"],
     "--etcd-password-file /nonexistent/pw: No such file or directory"),
])
def test_bad_combinations_are_bad_usage(program: str, urls: str, flags: list[str],
                                        message: str, files: dict[str, str]) -> None:
    load, extra = PROGRAMS[program]
    with pytest.raises(SettingsError) as refused:
        load(["--etcd", urls, *extra, *(f.format(**files) for f in flags)])
    assert message in str(refused.value)


def test_no_password_flag_and_the_group_comes_last() -> None:
    for argv in (["-m", "memring.backend", "--help"], ["-m", "memring.proxy", "--help"],
                 ["-m", "memring", "status", "--help"], ["-m", "memring", "up", "--help"]):
        text = subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                              timeout=30, check=True).stdout
        assert "--etcd-password " not in text and "--etcd-password\n" not in text
        assert text.rstrip().endswith("a flag)"), argv  # --etcd-password-file's help
        assert "etcd security:" in text


def test_memring_refuses_mixed_endpoints_as_bad_usage() -> None:
    done = subprocess.run([sys.executable, "-m", "memring", "status", "--etcd",
                           "https://127.0.0.1:1,http://127.0.0.1:2"], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr == ("memring: error: etcd URLs mix http and https: give every member "
                           "as https:// (TLS) or every one as http://\n")
