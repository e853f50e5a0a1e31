"""The node identity: an Ed25519 key kept in the data directory.

The key file is PEM PKCS#8 (``node.key``, mode 0600), the same format yggdrasil 0.5
reads from ``PrivateKeyPath``, so one file can serve both. It is created atomically
on first run and loaded afterwards; a file with group/other permissions or bad
content is refused with a clear message and never replaced.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from core.address import address_for_key, subnet_for_key
from core.errors import IdentityError
from core.mailaddr import MailAddress

__all__ = [
    "KEY_FILE_NAME",
    "Identity",
    "load_identity",
    "load_or_create_identity",
    "parse_yggdrasil_key",
    "write_key_file",
]

KEY_FILE_NAME = "node.key"
_PEM_RE = re.compile(rb"-----BEGIN PRIVATE KEY-----.+?-----END PRIVATE KEY-----", re.S)
_HJSON_KEY_RE = re.compile(r"""\bPrivateKey"?\s*:\s*"?([0-9A-Fa-f]*)""")
_HJSON_PATH_RE = re.compile(r"""\bPrivateKeyPath"?\s*:\s*(?:"([^"\n]*)"|([^\s,}"]+))""")


@dataclass(frozen=True)
class Identity:
    """An Ed25519 signing key and everything derived from it."""

    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        if len(seed) != 32:
            raise IdentityError(f"an Ed25519 seed is 32 bytes, got {len(seed)}")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def seed(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    @property
    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def verify_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def address(self) -> ipaddress.IPv6Address:
        return address_for_key(self.public_key)

    @property
    def subnet(self) -> ipaddress.IPv6Network:
        return subnet_for_key(self.public_key)

    @property
    def mail_address(self) -> MailAddress:
        return MailAddress(self.public_key)

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    def to_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def to_yggdrasil_hex(self) -> str:
        """``PrivateKey`` as yggdrasil 0.4/0.5 configs write it: seed then public key."""
        return (self.seed + self.public_key).hex()

    def to_yggdrasil_config(self) -> str:
        return json.dumps({"PrivateKey": self.to_yggdrasil_hex()}, indent=2) + "\n"

    def describe(self) -> dict[str, str]:
        return {
            "key": self.public_key.hex(),
            "address": str(self.address),
            "subnet": str(self.subnet),
            "mail_address": str(self.mail_address),
        }


def _from_pem(data: bytes, origin: str) -> Identity:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"{origin}: not a readable PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"{origin}: the PEM key is not an Ed25519 key")
    return Identity(key)


def _from_hex(text: str, origin: str) -> Identity:
    if len(text) != 128:
        raise IdentityError(
            f"{origin}: PrivateKey must be 128 hex characters (seed + public key), got {len(text)}"
        )
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise IdentityError(f"{origin}: PrivateKey is not hex") from None
    ident = Identity.from_seed(raw[:32])
    if ident.public_key != raw[32:]:
        raise IdentityError(
            f"{origin}: PrivateKey's public half does not match its seed; the key is corrupt"
        )
    return ident


def parse_yggdrasil_key(data: bytes, origin: str, base_dir: Path | None = None) -> Identity:
    """An identity from a yggdrasil config (HJSON/JSON, 0.4 or 0.5) or a PEM key file.

    Understands ``PrivateKey`` (128 hex chars) and 0.5's ``PrivateKeyPath`` (PEM PKCS#8).
    """
    pem = _PEM_RE.search(data)
    if pem:
        return _from_pem(pem.group(0), origin)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise IdentityError(f"{origin}: neither a yggdrasil config nor a PEM key") from None
    match = _HJSON_KEY_RE.search(text)
    if match:
        return _from_hex(match.group(1), origin)
    path_match = _HJSON_PATH_RE.search(text)
    key_text = (path_match.group(1) or path_match.group(2) or "").strip() if path_match else ""
    if key_text:
        key_path = Path(key_text)
        if not key_path.is_absolute() and base_dir is not None:
            key_path = base_dir / key_path
        try:
            return _from_pem(key_path.read_bytes(), str(key_path))
        except OSError as exc:
            raise IdentityError(f"{origin}: cannot read PrivateKeyPath {key_path}: {exc}") from None
    raise IdentityError(f"{origin}: no PrivateKey or PrivateKeyPath found")


def write_key_file(path: Path, identity: Identity, *, overwrite: bool = False) -> None:
    """Write ``identity`` as PEM with mode 0600, atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists() and not overwrite:
        raise IdentityError(f"{path} already exists; refusing to replace a node key")
    fd, tmp = tempfile.mkstemp(prefix=".node.key.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(identity.to_pem())
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if another process created it meanwhile
            os.unlink(tmp)
    except BaseException:
        with _suppress_os_error():
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class _suppress_os_error:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return isinstance(exc[1], OSError)


def load_identity(path: Path) -> Identity:
    """Load a key file, refusing bad permissions or content (never repairs it)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise IdentityError(f"no node key at {path}; run `mesh init` to create one") from None
    if not stat.S_ISREG(st.st_mode):
        raise IdentityError(f"{path} is not a regular file")
    if st.st_mode & 0o077:
        raise IdentityError(
            f"{path} has mode {stat.S_IMODE(st.st_mode):04o}; a node key must be readable "
            f"by its owner only. Fix it with: chmod 600 {path}"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IdentityError(f"cannot read {path}: {exc}") from None
    if not _PEM_RE.search(data):
        raise IdentityError(
            f"{path} is not a PEM private key; it was left untouched. Move it away and run "
            "`mesh init` for a new identity, or `mesh key import` to restore one"
        )
    return _from_pem(data, str(path))


def load_or_create_identity(data_dir: Path) -> tuple[Identity, bool]:
    """Load ``data_dir/node.key``, creating it first if absent. Returns (identity, created)."""
    path = data_dir / KEY_FILE_NAME
    if path.exists() or path.is_symlink():
        return load_identity(path), False
    identity = Identity.generate()
    try:
        write_key_file(path, identity)
    except IdentityError:
        return load_identity(path), False  # lost a creation race: use the winner's key
    return identity, True
