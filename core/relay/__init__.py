"""Relays: store-and-forward for people who are never online at the same time.

- :mod:`core.relay.wire`     the protocol's frames (sans-IO)
- :mod:`core.relay.sealing`  sealed items and signed records
- :mod:`core.relay.store`    ``relay.db``: what is held, which relays are used
- :mod:`core.relay.service`  the service in the node process (``node.relay``)

See docs/relays.md.
"""
