"""The proxy's backend TLS settings: flags over MEMRING_* variables over the [proxy] table,
and the mistakes refused at start (exit 2) rather than at the first connection."""

from __future__ import annotations

from pathlib import Path

import pytest

from memring.cluster.certificates import CertificateAuthority
from memring.netio.settings import SettingsError
from memring.proxy.settings import load_settings

pytestmark = pytest.mark.unit


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "memring.toml"
    path.write_text('[[shards]]\nname = "s1"\nnodes = ["127.0.0.1:11311"]\n')
    return path


def test_off_by_default(config: Path) -> None:
    settings = load_settings(["--config", str(config)])
    assert not settings.backend_tls and settings.backend_tls_settings is None


def test_flags_env_and_file(config: Path, private_ca: CertificateAuthority,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = private_ca.issue("proxy-settings")
    settings = load_settings(["--config", str(config), "--backend-tls", "--backend-tls-ca",
                              str(private_ca.cert), "--backend-tls-cert", str(proxy.cert),
                              "--backend-tls-key", str(proxy.key)])
    tls = settings.backend_tls_settings
    assert tls is not None and (tls.ca, tls.cert, tls.key, tls.verify) == (
        str(private_ca.cert), str(proxy.cert), str(proxy.key), "require")

    monkeypatch.setenv("MEMRING_BACKEND_TLS", "true")
    monkeypatch.setenv("MEMRING_BACKEND_TLS_VERIFY", "none")
    assert load_settings(["--config", str(config)]).backend_tls_settings is not None
    assert load_settings(["--config", str(config), "--no-backend-tls"]).backend_tls is False

    monkeypatch.delenv("MEMRING_BACKEND_TLS")
    monkeypatch.delenv("MEMRING_BACKEND_TLS_VERIFY")
    config.write_text(f'[proxy]\nbackend_tls = true\nbackend_tls_ca = "{private_ca.cert}"\n'
                      + config.read_text())
    assert load_settings(["--config", str(config)]).backend_tls_ca == str(private_ca.cert)


@pytest.mark.parametrize(("argv", "message"), [
    (["--backend-tls"], "give --backend-tls-ca"),
    (["--backend-tls", "--backend-tls-ca", "/nonexistent/ca.crt"], "Error loading the CA certificate"),
    (["--backend-tls-ca", "CA"], "without backend_tls"),
    (["--backend-tls", "--backend-tls-verify", "request"], "must be require or none"),
])
def test_mistakes_are_refused_at_start(config: Path, argv: list[str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(["--config", str(config), *argv])


def test_a_boolean_in_the_file(config: Path) -> None:
    config.write_text('[proxy]\nbackend_tls = "yes"\n' + config.read_text())
    with pytest.raises(SettingsError, match="must be a boolean"):
        load_settings(["--config", str(config)])
