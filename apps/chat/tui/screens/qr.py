"""Own address as a QR code drawn with half blocks (two modules per character)."""

from __future__ import annotations

import segno
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

__all__ = ["QrScreen", "qr_lines"]


def qr_lines(text: str, border: int = 2) -> list[str]:
    """Dark modules drawn as spaces on a light field, so phones read it on dark themes."""
    rows = [list(row) for row in segno.make(text, error="m").matrix_iter(border=border)]
    if len(rows) % 2:
        rows.append([0] * len(rows[0]))
    glyph = {(0, 0): "█", (0, 1): "▀", (1, 0): "▄", (1, 1): " "}
    return [
        "".join(glyph[(bool(a), bool(b))] for a, b in zip(top, bottom, strict=True))
        for top, bottom in zip(rows[::2], rows[1::2], strict=True)
    ]


class QrScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q", "dismiss", "Close")]

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address

    def compose(self) -> ComposeResult:
        with Vertical(id="qr"):
            yield Static("\n".join(qr_lines(self.address)), id="qr-code", markup=False)
            yield Static(self.address, id="qr-address", markup=False)
            yield Static("escape closes", id="qr-hint")
