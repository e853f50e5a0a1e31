"""Self-signed Ed25519 certificates made from a node key, as yggquic makes and checks them.

yggquic (and so Yggmail) presents an X.509 certificate signed by the node's own Ed25519
key: subject CN = the 64-hex public key, no SAN, valid until 9999-12-31, key usage
digitalSignature + keyEncipherment, extended key usage serverAuth + clientAuth,
basic constraints present (not a CA). Nothing is chained or verified: what a peer checks
is that the certificate's public key *is* the key the datagrams came from
(:func:`certificate_key`). ``cryptography`` is imported when a certificate is made, not
with this module.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["certificate_key", "node_certificate"]

NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)


def node_certificate(seed: bytes) -> tuple[x509.Certificate, Ed25519PrivateKey]:
    """The certificate and private key for the node whose Ed25519 seed is ``seed``."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    private = Ed25519PrivateKey.from_private_bytes(seed)
    public = private.public_key()
    name = x509.Name(
        [
            x509.NameAttribute(
                NameOID.COMMON_NAME, public.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
            )
        ]
    )
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=True,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(int(now.timestamp()))
        .not_valid_before(now)
        .not_valid_after(NOT_AFTER)
        .add_extension(usage, critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(private, algorithm=None)
    )
    return cert, private


def certificate_key(cert: Any) -> bytes | None:
    """The raw 32-byte Ed25519 public key of ``cert``, or None if it is not Ed25519."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    if cert is None:
        return None
    try:
        public = cert.public_key()
    except (ValueError, TypeError):
        return None
    if not isinstance(public, Ed25519PublicKey):
        return None
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)
