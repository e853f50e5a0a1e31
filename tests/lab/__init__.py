"""The real-daemon lab: namespaces, veth links, yggdrasil daemons, nodes inside hosts."""
