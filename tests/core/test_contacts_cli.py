"""`mesh contacts` against a running node (`mesh up`), as a person types it."""

from __future__ import annotations

import json
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
