"""Snapshot browser for review mode: the session's saved PNGs shown in the frame view."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6 import QtGui, QtWidgets

from emstream.gui.frame_view import FrameView

__all__ = ["SnapshotBrowser", "read_picture"]


def read_picture(path: Path) -> np.ndarray | None:
    """An RGB(A) uint8 array (rows, cols, channels) of an image file, via Qt; None if unreadable."""
    img = QtGui.QImage(str(path))
    if img.isNull():
        return None
    img = img.convertToFormat(QtGui.QImage.Format.Format_RGBA8888)
    h, w = img.height(), img.width()
    buf = np.frombuffer(img.constBits(), np.uint8, count=img.sizeInBytes())
    return buf.reshape(h, img.bytesPerLine())[:, : w * 4].reshape(h, w, 4).copy()


class SnapshotBrowser(QtWidgets.QWidget):
    """A row with a snapshot chooser; the chosen picture is shown in ``frame_view``."""

    def __init__(self, frame_view: FrameView, snapshots: list[Path]) -> None:
        super().__init__()
        self.frame_view = frame_view
        self.snapshots = list(snapshots)
        self.combo = QtWidgets.QComboBox()
        for p in self.snapshots:
            self.combo.addItem(p.name, str(p))
        self.combo.currentIndexChanged.connect(self.show_index)
        lay = QtWidgets.QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        label = QtWidgets.QLabel(
            f"Snapshots ({len(self.snapshots)}):"
            if self.snapshots
            else "Frames are not stored in the ledger and this session saved no snapshots; "
            "the statistics below cover every processed frame."
        )
        lay.addWidget(label)
        if self.snapshots:
            lay.addWidget(self.combo, 1)
            self.show_index(0)
        else:
            lay.addStretch(1)

    def show_index(self, i: int) -> None:
        if not (0 <= i < len(self.snapshots)):
            return
        p = self.snapshots[i]
        pic = read_picture(p)
        if pic is not None:
            self.frame_view.show_picture(pic, f"<b>Snapshot</b> · {p.name}")
