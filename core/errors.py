"""Errors a person can act on. ``MeshError`` carries the message shown by the CLI."""

from __future__ import annotations


class MeshError(Exception):
    """A runtime failure with a message that says what was wrong and what to do."""


class UsageError(MeshError):
    """The caller asked for something malformed (bad argument, bad address)."""


class IdentityError(MeshError):
    """The node key file is missing, unreadable, badly protected or malformed."""


class NeedsSetup(MeshError):
    """A service cannot start until the person does something; the message says what
    (``mail needs a password: run `mesh mail passwd```). Not an error of the node."""
