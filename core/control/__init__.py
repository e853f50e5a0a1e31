"""The local control API: JSON lines over a 0600 Unix socket in the data dir."""
