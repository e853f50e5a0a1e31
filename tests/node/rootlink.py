"""Kept only for ``tests/bench/bench_embedded.py`` (not part of this test tree's owner):
the link is :meth:`tests.lab.lab.Host.link_root`. Delete once the bench calls that."""

from __future__ import annotations

from tests.lab.lab import Host, RootLink

__all__ = ["RootLink", "link_root"]


def link_root(host: Host, subnet: int) -> RootLink:
    return host.link_root(subnet)
