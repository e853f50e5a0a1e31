"""`mesh contacts` against a running node (`mesh up`), as a person types it."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.node.test_node_process_cli import Up, mesh

pytestmark = pytest.mark.timeout(120)

ALICE = "a1" * 32
BOB = "b0" * 32


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    up = Up(tmp_path_factory.mktemp("contacts") / "n")
    try:
        yield up
    finally:
        up.stop()


def listed(node: Up) -> list[dict[str, object]]:
    out = mesh(node.data, "contacts", "list", "--json")
    assert out.returncode == 0, out.stderr
    result: list[dict[str, object]] = json.loads(out.stdout)
    return result


def test_contacts_lifecycle_through_the_cli(node: Up) -> None:
    out = mesh(node.data, "contacts", "add", ALICE, "--alias", "alice")
    assert out.returncode == 0, out.stderr
    assert "alice" in out.stdout and "trusted" in out.stdout
    [alice] = [c for c in listed(node) if c["key"] == ALICE]
    assert alice["alias"] == "alice" and alice["trust"] == "trusted"

    assert mesh(node.data, "contacts", "rename", "alice", "Al").returncode == 0
    out = mesh(node.data, "contacts", "block", f"{ALICE}@mesh", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["trust"] == "blocked"
    assert [c["trust"] for c in listed(node) if c["key"] == ALICE] == ["blocked"]
    assert mesh(node.data, "contacts", "unblock", "al").returncode == 0
    people = mesh(node.data, "contacts", "list").stdout
    assert "Al" in people and ALICE in people and "trusted" in people
    assert mesh(node.data, "contacts", "remove", ALICE[:10]).returncode == 0
    assert all(c["key"] != ALICE for c in listed(node))


@pytest.mark.parametrize("bad", ["a1" * 31, "zz" * 32, f"{'a1' * 32}@example.org", "alice"])
def test_a_malformed_key_exits_2_and_changes_nothing(node: Up, bad: str) -> None:
    before = listed(node)
    out = mesh(node.data, "contacts", "add", bad, "--alias", "x")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "mesh:" in out.stderr
    assert listed(node) == before


def test_a_taken_alias_or_unknown_name_exits_2(node: Up) -> None:
    assert mesh(node.data, "contacts", "add", BOB, "--alias", "bob").returncode == 0
    out = mesh(node.data, "contacts", "add", "b1" * 32, "--alias", "BOB")
    assert out.returncode == 2 and "already" in out.stderr
    out = mesh(node.data, "contacts", "rename", "nobody", "x")
    assert out.returncode == 2 and "no contact" in out.stderr
    assert mesh(node.data, "contacts", "add", BOB, "--alias", " padded").returncode == 2


def test_an_ambiguous_name_exits_2_listing_the_matches(node: Up) -> None:
    one, two = "cafe1234" + "01" * 28, "cafe1234" + "02" * 28
    assert mesh(node.data, "contacts", "add", one, "--alias", "one").returncode == 0
    assert mesh(node.data, "contacts", "add", two, "--alias", "two").returncode == 0
    out = mesh(node.data, "contacts", "block", "cafe1234")
    assert out.returncode == 2
    assert one in out.stderr and two in out.stderr
    assert {c["trust"] for c in listed(node) if c["key"] in (one, two)} == {"trusted"}


def test_without_a_running_node_contacts_says_so(tmp_path: Path) -> None:
    out = mesh(tmp_path / "none", "contacts", "list")
    assert out.returncode == 1 and "mesh up" in out.stderr


def test_adding_a_known_key_says_it_renamed_or_that_it_is_already_a_contact(node: Up) -> None:
    carol = "c0" * 32
    out = mesh(node.data, "contacts", "add", carol, "--alias", "carol")
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"added carol: trusted {carol}\n"
    out = mesh(node.data, "contacts", "add", carol, "--alias", "carol2")
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"renamed carol to carol2: trusted {carol}\n"
    for again in (("--alias", "carol2"), ()):
        out = mesh(node.data, "contacts", "add", carol, *again)
        assert out.returncode == 0, out.stderr
        assert out.stdout == f"carol2 is already a contact: trusted {carol}\n"
    assert mesh(node.data, "contacts", "block", "carol2").returncode == 0
    out = mesh(node.data, "contacts", "add", carol)
    assert out.stdout == f"unblocked carol2: trusted {carol}\n"
    out = mesh(node.data, "contacts", "unblock", "carol2")
    assert out.stdout == f"unblocked carol2: trusted {carol}\n"
    out = mesh(node.data, "contacts", "rename", "carol2", "carol")
    assert out.stdout == f"renamed carol2 to carol: trusted {carol}\n"
    assert [c["alias"] for c in listed(node) if c["key"] == carol] == ["carol"]


def test_the_nodes_own_key_is_refused_as_a_contact(node: Up) -> None:
    own = str(node.status["key"])
    before = listed(node)
    for how in ((own, "--alias", "me"), (f"{own}@mesh",)):
        out = mesh(node.data, "contacts", "add", *how)
        assert out.returncode == 2, out.stdout + out.stderr
        assert "own key" in out.stderr and out.stdout == ""
    assert mesh(node.data, "contacts", "block", own).returncode == 2
    assert listed(node) == before


def test_look_alike_aliases_are_refused_and_stored_nfkc(node: Up) -> None:
    dave, other = "d0" * 32, "d1" * 32
    assert mesh(node.data, "contacts", "add", dave, "--alias", "dave").returncode == 0
    for twin, why in (
        ("\uff24\uff41\uff56\uff45", "already"),  # fullwidth "Dave" is "Dave" under NFKC
        ("d\u0430ve", "mixes Cyrillic and Latin"),  # a Cyrillic a among Latin letters
        ("D\u0410\u0412\u0415", "mixes"),  # Latin D, then Cyrillic capitals that read ABE
    ):
        out = mesh(node.data, "contacts", "add", other, "--alias", twin)
        assert out.returncode == 2 and why in out.stderr, out.stdout + out.stderr
    assert all(c["key"] != other for c in listed(node))
    out = mesh(node.data, "contacts", "rename", dave, "\uff44\uff41\uff56\uff45\uff12")
    assert out.returncode == 0 and "renamed dave to dave2" in out.stdout, out.stderr


def test_contacts_list_aligns_columns_with_wide_characters(node: Up) -> None:
    wide = "e0" * 32
    out = mesh(node.data, "contacts", "add", wide, "--alias", "\u738b\u5c0f\u660e")  # 3 wide
    assert out.returncode == 0, out.stderr
    lines = mesh(node.data, "contacts", "list").stdout.splitlines()
    assert len(lines) == len(listed(node)) >= 2
    starts = {display_width(line[: line.index(key)]) for line in lines for key in keys(line)}
    assert len(starts) == 1, lines  # every key begins in the same terminal column
    trust_at = {display_width(line[: line.index(t)]) for line in lines for t in trusts(line)}
    assert len(trust_at) == 1, lines


def keys(line: str) -> list[str]:
    return [word for word in line.split() if len(word) == 64]


def trusts(line: str) -> list[str]:
    return [word for word in line.split() if word in ("trusted", "unknown", "blocked")][:1]


def display_width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)
