"""The TLS flags of both servers: flag, environment and TOML, and the errors a bad file or a
bad combination gives before anything listens."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from memring.backend.settings import load_settings as backend_settings
from memring.cluster.certificates import CertificateAuthority, Credential
from memring.netio.settings import SettingsError, reachable_from_other_machines
from memring.proxy.settings import load_settings as proxy_settings

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def cert(private_ca: CertificateAuthority) -> Credential:
    return private_ca.issue("settings")


@pytest.fixture(params=["backend", "proxy"])
def load(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., object]:
    if request.param == "backend":
        return backend_settings
    config = tmp_path / "proxy.toml"
    config.write_text('[[shards]]\nname = "s1"\nnodes = ["127.0.0.1:11311"]\n')
    return lambda argv: proxy_settings(["--config", str(config), *argv])


def _files(cert: Credential) -> list[str]:
    return ["--tls-cert", str(cert.cert), "--tls-key", str(cert.key)]


def test_flags_and_environment(load: Callable[..., object], cert: Credential,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(["--tls", *_files(cert), "--tls-ca", str(cert.ca), "--tls-verify",
                     "require", "--tls-min-version", "tlsv1.3"])
    assert settings.tls and settings.tls_enabled  # type: ignore[attr-defined]
    assert settings.tls_settings.verify == "require"  # type: ignore[attr-defined]
    assert settings.tls_settings.version_name == "tlsv1.3"  # type: ignore[attr-defined]
    monkeypatch.setenv("MEMRING_TLS", "1")
    monkeypatch.setenv("MEMRING_TLS_CERT", str(cert.cert))
    monkeypatch.setenv("MEMRING_TLS_KEY", str(cert.key))
    assert load([]).tls  # type: ignore[attr-defined]
    monkeypatch.setenv("MEMRING_TLS", "0")
    assert not load([]).tls_enabled  # type: ignore[attr-defined]


@pytest.mark.parametrize(("argv", "message"), [
    (["--tls"], "needs a certificate file"),
    (["--tls", "--tls-cert", "/nonexistent.crt"],
     "Error loading the certificate chain: /nonexistent.crt : No such file or directory"),
    (["--tls-listen", "127.0.0.1:0", "--tls-cert", "{cert}", "--tls-key", "{ca}"],
     "Error loading the key: "),
    (["--tls", "--tls-listen", "127.0.0.1:0", "--tls-cert", "{cert}", "--tls-key", "{key}"],
     "give one of them"),
    (["--tls", "--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-verify", "require"],
     "needs a CA file"),
    (["--tls", "--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-min-version", "ssl3"],
     "minimum version"),
    (["--tls-listen", "nowhere", "--tls-cert", "{cert}", "--tls-key", "{key}"],
     "expected HOST:PORT"),
])
def test_bad_tls_settings_are_settings_errors(load: Callable[..., object], cert: Credential,
                                              argv: list[str], message: str) -> None:
    argv = [a.format(cert=cert.cert, key=cert.key, ca=cert.ca) for a in argv]
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        load(argv)


def test_backend_toml(cert: Credential, tmp_path: Path) -> None:
    config = tmp_path / "backend.toml"
    config.write_text(f'[backend]\ntls = true\ntls_cert = "{cert.cert}"\n'
                      f'tls_key = "{cert.key}"\n')
    assert backend_settings(["--config", str(config)]).tls


@pytest.mark.parametrize(("host", "exposed"), [
    ("127.0.0.1", False), ("::1", False), ("localhost", False), ("0.0.0.0", True),
    ("::", True), ("10.1.2.3", True), ("cache.example", True)])
def test_which_plain_listeners_are_warned_about(host: str, exposed: bool) -> None:
    assert reachable_from_other_machines(host) is exposed
