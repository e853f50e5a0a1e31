"""`mesh chat`: the Textual terminal UI over the node's control API (issue 11)."""
