"""Screenshots of the page, read without numpy or Pillow (PyAV decodes the PNG)."""

from __future__ import annotations

import io
import statistics
from dataclasses import dataclass

import av

from tests.video.page.cdp import Tab

__all__ = ["Gray", "boxes", "decode"]

# Bounding boxes of the in-call page's parts, from the DOM.
BOXES = """(() => {
  const out = {};
  for (const id of ["remote", "local", "mute", "camera", "source", "hangup", "stats"]) {
    const r = document.getElementById(id).getBoundingClientRect();
    out[id] = [Math.round(r.x), Math.round(r.y), Math.round(r.width), Math.round(r.height)];
  }
  return out;
})()"""


@dataclass
class Gray:
    width: int
    height: int
    pixels: bytes  # width * height luma bytes

    def region(self, box: list[int]) -> list[int]:
        x, y, w, h = (max(0, v) for v in box)
        out: list[int] = []
        for row in range(y, min(y + h, self.height)):
            start = row * self.width
            out.extend(self.pixels[start + x : start + min(x + w, self.width)])
        return out

    def mean(self, box: list[int]) -> float:
        values = self.region(box)
        return statistics.fmean(values) if values else 0.0

    def spread(self, box: list[int]) -> float:
        values = self.region(box)[::7]
        return statistics.pstdev(values) if len(values) > 1 else 0.0


def decode(png: bytes) -> Gray:
    with av.open(io.BytesIO(png), format="png_pipe") as container:
        frame = next(container.decode(video=0)).reformat(format="gray")
    plane = frame.planes[0]
    raw = bytes(plane)
    stride = plane.line_size
    rows = b"".join(raw[r * stride : r * stride + frame.width] for r in range(frame.height))
    return Gray(frame.width, frame.height, rows)


async def boxes(tab: Tab) -> dict[str, list[int]]:
    found: dict[str, list[int]] = await tab.evaluate(BOXES)
    return found
