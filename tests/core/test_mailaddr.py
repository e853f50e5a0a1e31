from __future__ import annotations

import pytest

from core.address import address_for_key
from core.errors import UsageError
from core.mailaddr import parse_mail_address

KEY = "AB" * 32


def test_parses_case_insensitively_and_prints_lowercase() -> None:
    addr = parse_mail_address(f"<{KEY}@MESH>")
    assert str(addr) == f"{KEY.lower()}@mesh"
    assert addr.node_address == address_for_key(bytes.fromhex(KEY))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"{KEY}@example.org", "not on the mesh"),
        (f"{KEY[:-2]}@mesh", "64 hex characters"),
        (f"{KEY[:-2]}zz@mesh", "non-hex"),
        ("nobody", "not a mail address"),
        (f"{KEY}@mesh@mesh", "not a mail address"),
    ],
)
def test_rejects_bad_addresses_saying_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_mail_address(text)
