"""HOST:PORT parsing, one rule for every program: only a listen address may omit the host."""

import pytest

from memring.netio.settings import SettingsError, split_address

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("text", "listen", "expected"), [
    ("127.0.0.1:11211", False, ("127.0.0.1", 11211)),
    ("[::1]:11311", False, ("::1", 11311)),
    ("node-1:0", True, ("node-1", 0)),
    (":11211", True, ("0.0.0.0", 11211)),
])
def test_good_addresses(text: str, listen: bool, expected: tuple[str, int]) -> None:
    assert split_address(text, listen=listen) == expected


@pytest.mark.parametrize(("text", "listen"), [
    (":11211", False),       # a node to connect to must name a host
    ("[]:11211", False),
    ("127.0.0.1", True),
    ("127.0.0.1:", True),
    ("127.0.0.1:65536", True),
    ("127.0.0.1:-1", False),
])
def test_bad_addresses_name_the_problem(text: str, listen: bool) -> None:
    with pytest.raises(SettingsError, match="expected HOST:PORT"):
        split_address(text, listen=listen)
