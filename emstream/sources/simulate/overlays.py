"""Burned-in annotations: a data bar with text-like glyphs and a scale bar with its label.

They are drawn after the noise, as acquisition software does; their pixels (and the rectangle
around a scale bar and its label) are background in the truth labels and are returned as an
invalid mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Overlays", "burn_overlays"]


@dataclass
class Overlays:
    """Burned-in annotations.

    banner : data-bar height in px (0 = none); drawn at the bottom.
    banner_value : fill of the bar (counts; text blocks get ``text_value``).
    scale_bar : ``(y, x, length, thickness)`` of a solid scale bar, or ``None``.
    text_value : value of text blocks and of a free-standing scale bar.
    label_box : a free-standing scale bar sits on an opaque box of ``banner_value``.

    The rectangle around the scale bar and its label is not data (``valid`` False), whether
    or not it has a box.
    """

    banner: int = 0
    banner_value: float = 0.0
    scale_bar: tuple[int, int, int, int] | None = None
    text_value: float = 1000.0
    label_box: bool = False


def _text_blocks(img, valid, rng, y0, x0, height, width_max, value) -> int:
    """Draw a line of text-like glyph blocks starting at (y0, x0); returns the end column."""
    x = x0
    H, W = img.shape
    end = min(x0 + width_max, W)
    ch = max(height, 3)
    while x < end - 2:
        n_chars = int(rng.integers(2, 8))
        for _ in range(n_chars):
            cw = int(rng.integers(max(ch // 3, 1), max(ch * 2 // 3, 2) + 1))
            if x + cw >= end:
                break
            # a glyph: a few strokes in a ch x cw cell
            cell = np.zeros((ch, cw), bool)
            cell[:, : max(cw // 3, 1)] = rng.random() < 0.7
            cell[: max(ch // 5, 1), :] |= rng.random() < 0.5
            cell[ch // 2: ch // 2 + max(ch // 6, 1), :] |= rng.random() < 0.5
            cell[-max(ch // 5, 1):, :] |= rng.random() < 0.5
            cell[:, -max(cw // 3, 1):] |= rng.random() < 0.5
            ys, xs = slice(y0, min(y0 + ch, H)), slice(x, x + cw)
            img[ys, xs][cell[: ys.stop - ys.start]] = value
            valid[ys, xs] = False
            x += cw + max(ch // 5, 1)
        x += ch  # word space
    return x


def burn_overlays(
    image: np.ndarray, labels: np.ndarray, overlays: Overlays, rng: np.random.Generator
) -> np.ndarray:
    """Burn the data bar / scale bar into ``image`` and clear them from ``labels`` (in place).

    Returns the valid mask (False where an overlay was drawn).
    """
    H, W = image.shape
    valid = np.ones((H, W), bool)
    if overlays.banner > 0:
        b = int(overlays.banner)
        image[H - b:, :] = overlays.banner_value
        valid[H - b:, :] = False
        ch = max(int(b * 0.35), 3)
        _text_blocks(image, valid, rng, H - b + max((b - ch) // 2, 1), int(W * 0.35),
                     ch, int(W * 0.6), overlays.text_value)
    if overlays.scale_bar is not None:
        y, x, length, thick = overlays.scale_bar
        y, x = int(np.clip(y, 0, H - 1)), int(np.clip(x, 0, W - 1))
        bar = np.ones((H, W), bool)
        if overlays.label_box and overlays.banner == 0:
            pad = max(thick, 3)
            ch = max(thick * 2, 4)
            by0 = max(y - ch - max(thick, 2) - pad, 0)
            image[by0:y + thick + pad, max(x - pad, 0):x + length + pad] = overlays.banner_value
        image[y:y + thick, x:x + length] = overlays.text_value
        bar[y:y + thick, x:x + length] = False
        ch = max(thick * 2, 4)
        ty = y - ch - max(thick, 2)
        if ty >= (H - overlays.banner if overlays.banner else 0):
            _text_blocks(image, bar, rng, ty, x + length // 4, ch, max(length // 2, ch * 2),
                         overlays.text_value)
        else:  # no room above (inside a thin data bar): label to the right of the bar
            _text_blocks(image, bar, rng, max(y + thick // 2 - ch // 2, 0), x + length + ch,
                         ch, ch * 6, overlays.text_value)
        # the bar, its label and the gaps between glyphs are not data (1 px margin: real
        # software anti-aliases its text)
        ys, xs = np.nonzero(~bar)
        y0, y1 = max(ys.min() - 1, 0), ys.max() + 2
        x0, x1 = max(xs.min() - 1, 0), xs.max() + 2
        if overlays.label_box and overlays.banner == 0:
            y0, x0 = max(y0 - 2, 0), max(x0 - 2, 0)
            y1, x1 = y1 + 2, x1 + 2
        valid[y0:y1, x0:x1] = False
    labels[~valid] = 0
    return valid
