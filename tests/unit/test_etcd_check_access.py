"""A server's start-up check of its etcd credentials (`EtcdCoordinator.check_access`): a
refusal stops the server; "unavailable" is asked again a few times, since a fresh TLS
connection to a loaded etcd is sometimes cut short in its handshake, before it is taken for
an etcd not up yet (logged, the server goes on). The probe is stubbed: no etcd is contacted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from memring.cluster import etcd_coordinator
from memring.cluster.coordinator import AccessDenied, CoordinatorUnavailable
from memring.cluster.etcd_coordinator import CHECK_ACCESS_TRIES, EtcdCoordinator
from memring.cluster.etcd_security import EtcdSecurity

pytestmark = pytest.mark.unit


def _coordinator(tmp_path: Path, answers: list[Exception | None],
                 monkeypatch: pytest.MonkeyPatch) -> EtcdCoordinator:
    password = tmp_path / "memring.password"
    password.write_text("secret\n")
    coordinator = EtcdCoordinator("http://127.0.0.1:1", security=EtcdSecurity(
        user="memring", password_file=str(password)))

    async def probe() -> None:
        answer = answers.pop(0)
        if answer is not None:
            raise answer

    monkeypatch.setattr(coordinator, "probe", probe)
    return coordinator


async def test_a_refusal_after_a_connection_cut_short_stops_the_server(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answers: list[Exception | None] = [
        CoordinatorUnavailable("Handshake read failed (Endpoint closing)"),
        AccessDenied("refused user 'memring': wrong user name or password")]
    coordinator = _coordinator(tmp_path, answers, monkeypatch)
    with trio.fail_after(5), pytest.raises(AccessDenied, match="wrong user name"):
        await coordinator.check_access()
    assert answers == []


async def test_an_etcd_still_unavailable_is_logged_and_the_server_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    answers: list[Exception | None] = [
        CoordinatorUnavailable(f"refused {n}") for n in range(CHECK_ACCESS_TRIES + 1)]
    coordinator = _coordinator(tmp_path, answers, monkeypatch)
    with trio.fail_after(5):
        await coordinator.check_access()
    assert len(answers) == 1  # asked CHECK_ACCESS_TRIES times, no more
    assert f"cannot check the etcd credentials yet: refused {CHECK_ACCESS_TRIES - 1}" in \
        caplog.text


async def test_a_hung_etcd_is_asked_once_within_the_authenticate_timeout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(etcd_coordinator, "AUTHENTICATE_TIMEOUT", 0.0)  # the window is spent
    answers: list[Exception | None] = [CoordinatorUnavailable("no answer within 5s"), None]
    coordinator = _coordinator(tmp_path, answers, monkeypatch)
    with trio.fail_after(5):
        await coordinator.check_access()
    assert answers == [None]
