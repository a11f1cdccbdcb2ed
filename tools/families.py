"""The real image families used to train and judge the learned segmenter, read from ``../shared/data``.

Never copied into the repository (each folder's SOURCE.md gives licence and credit); every loader
returns ``[]`` where its folder is absent, so the tools and tests skip cleanly.

=========  ==============================================  =================================  ======
family     images                                          truth                              folds
=========  ==============================================  =================================  ======
``msa``    20 BF-TEM, sintering Pt/Pd on carbon, 512²      binary masks -> 8-connected        0: 0-9
           (msa-sintering-train, CC-BY-4.0)                instances                          1: 10-19
``emps``   366 EM figure crops, TEM and SEM, ~512x620      instance maps                      sorted
           (emps-train, MIT; Yildirim & Cole 2021)                                            ids, alternate
``genc``   18 HAADF-STEM / BF-TEM supported catalysts,     boxes (YOLO) only: weak labels     sorted
           640²-2048² (genc-catalysts-train, MIT)          (inscribed ellipses) + ignore      names, alternate
=========  ==============================================  =================================  ======

Every item is a dict: ``family``, ``name``, ``raw`` (uint8 2-D), ``labels`` (int32 instances; for
``genc`` the ellipse inscribed in each box), ``ignore`` (uint8, 1 where training gives no weight:
for ``genc`` the part of each box outside the inner 70 % of its ellipse, where the true outline
may lie; ``None`` for the mask families), ``has_masks`` (whether ``labels`` are real outlines),
``centres`` (N x 3: y, x, diameter px of each true particle; for boxes the centre and
sqrt(w*h), which is the equivalent diameter of the inscribed ellipse), ``median_d`` (px) and
``fold`` (0 or 1).

:func:`detection_score` is the issue's detection measure: predicted and true particle centres
matched one-to-one (Hungarian assignment on distance), a pair counts when the centres lie within
max(3 px, 1/4 of the true diameter); it needs no outlines, so it scores the box-labelled family
and the masked ones alike.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data"
DIRS = {"msa": DATA / "msa-sintering-train", "emps": DATA / "emps-train",
        "genc": DATA / "genc-catalysts-train"}
FAMILIES = tuple(DIRS)
#: weak labels of boxes: pixels within this fraction of the inscribed ellipse's axes are particle
BOX_CORE = 0.7


def _imread(path: Path, flags=None):
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if flags is None else flags)
    if img is None:
        raise FileNotFoundError(path)
    return img


def centres_of(labels: np.ndarray) -> np.ndarray:
    """(y, x, equivalent diameter) of every instance of a label image, N x 3 float."""
    lab = np.asarray(labels)
    ids = np.unique(lab)
    ids = ids[ids > 0]
    if ids.size == 0:
        return np.zeros((0, 3))
    idx = np.searchsorted(ids, lab[lab > 0])
    ys, xs = np.nonzero(lab > 0)
    n = np.bincount(idx, minlength=ids.size).astype(float)
    cy = np.bincount(idx, ys, minlength=ids.size) / n
    cx = np.bincount(idx, xs, minlength=ids.size) / n
    return np.stack([cy, cx, np.sqrt(4 * n / np.pi)], axis=1)


def _item(family, name, raw, labels, fold, ignore=None, centres=None, has_masks=True):
    labels = np.asarray(labels, np.int32)
    c = centres_of(labels) if centres is None else centres
    return {"family": family, "name": name, "raw": raw, "labels": labels, "ignore": ignore,
            "has_masks": has_masks, "centres": c, "fold": fold,
            "median_d": float(np.median(c[:, 2])) if len(c) else 0.0}


def load_msa(directory: Path | None = None) -> list[dict]:
    d = Path(directory or DIRS["msa"])
    out = []
    for i in range(20):
        img, lab = d / "images" / f"image_{i}.png", d / "labels" / f"label_{i}.png"
        if not img.is_file() or not lab.is_file():
            continue
        labels, _ = ndi.label(_imread(lab) > 127, structure=np.ones((3, 3), bool))
        out.append(_item("msa", f"msa-{i}", _imread(img), labels, 0 if i < 10 else 1))
    return out


def load_emps(directory: Path | None = None) -> list[dict]:
    import cv2

    d = Path(directory or DIRS["emps"])
    if not (d / "segmaps").is_dir():
        return []
    out = []
    for k, seg in enumerate(sorted((d / "segmaps").glob("*.png"))):
        img = d / "images" / seg.name
        if not img.is_file():
            continue
        labels = _imread(seg, cv2.IMREAD_UNCHANGED)
        out.append(_item("emps", f"emps-{seg.stem}", _imread(img), labels, k % 2))
    return out


def boxes_to_labels(boxes: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """Weak labels from boxes (N x 4: y0, x0, y1, x1 px): the inscribed ellipses as instances
    (smaller boxes drawn last, so a small particle in front of a large one keeps its pixels), and
    the ignore mask: pixels inside a box but outside the inner ``BOX_CORE`` of its ellipse."""
    import cv2

    labels = np.zeros(shape, np.int32)
    core = np.zeros(shape, np.uint8)
    inbox = np.zeros(shape, np.uint8)
    order = np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    for k in order:
        y0, x0, y1, x1 = boxes[k]
        c = (int(round((x0 + x1) / 2 * 16)), int(round((y0 + y1) / 2 * 16)))
        ax = (max(1, int(round((x1 - x0) / 2 * 16))), max(1, int(round((y1 - y0) / 2 * 16))))
        cv2.ellipse(labels, c, ax, 0, 0, 360, int(k) + 1, -1, cv2.LINE_8, 4)
        cv2.ellipse(core, c, tuple(max(1, int(a * BOX_CORE)) for a in ax), 0, 0, 360, 1, -1,
                    cv2.LINE_8, 4)
        cv2.rectangle(inbox, (int(x0), int(y0)), (int(np.ceil(x1)), int(np.ceil(y1))), 1, -1)
    ignore = (inbox.astype(bool) & ~core.astype(bool)).astype(np.uint8)
    return labels, ignore


def load_genc(directory: Path | None = None) -> list[dict]:
    d = Path(directory or DIRS["genc"])
    if not (d / "images").is_dir():
        return []
    out = []
    for k, img in enumerate(sorted((d / "images").glob("*.jpg"))):
        lab = d / "labels" / f"{img.stem}.txt"
        if not lab.is_file():
            continue
        raw = _imread(img)
        h, w = raw.shape
        rows = np.loadtxt(lab, ndmin=2)
        cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
        boxes = np.stack([cy - bh / 2, cx - bw / 2, cy + bh / 2, cx + bw / 2], axis=1)
        labels, ignore = boxes_to_labels(boxes, raw.shape)
        centres = np.stack([cy, cx, np.sqrt(bw * bh)], axis=1)
        out.append(_item("genc", f"genc-{img.stem}", raw, labels, k % 2, ignore, centres,
                         has_masks=False))
    return out


LOADERS = {"msa": load_msa, "emps": load_emps, "genc": load_genc}


def load(family: str, folds=(0, 1)) -> list[dict]:
    return [it for it in LOADERS[family]() if it["fold"] in folds]


# ----------------------------------------------------------------------------- scoring
def match_centres(true: np.ndarray, pred: np.ndarray) -> list[tuple[int, int]]:
    """One-to-one matches (i_true, j_pred) of centres within max(3 px, d_true / 4)."""
    if len(true) == 0 or len(pred) == 0:
        return []
    from scipy.spatial import cKDTree

    tol = np.maximum(3.0, true[:, 2] / 4)
    tree = cKDTree(pred[:, :2])
    big = 1e9
    cand = tree.query_ball_point(true[:, :2], tol)
    rows = [i for i, c in enumerate(cand) if c]
    if not rows:
        return []
    cols = sorted({j for i in rows for j in cand[i]})
    col_of = {j: k for k, j in enumerate(cols)}
    cost = np.full((len(rows), len(cols)), big)
    for r, i in enumerate(rows):
        for j in cand[i]:
            cost[r, col_of[j]] = np.hypot(*(true[i, :2] - pred[j, :2]))
    r, c = linear_sum_assignment(cost)
    return [(rows[a], cols[b]) for a, b in zip(r, c, strict=True) if cost[a, b] < big]


class DetectionScore:
    """Pooled centre-matching scores (precision, recall, F1, median |d - d_true| / d_true)."""

    def __init__(self):
        self.tp = self.n_true = self.n_pred = self.frames = 0
        self.rel_err: list[float] = []

    def add(self, true: np.ndarray, pred: np.ndarray) -> None:
        pairs = match_centres(true, pred)
        self.tp += len(pairs)
        self.n_true += len(true)
        self.n_pred += len(pred)
        self.frames += 1
        self.rel_err += [abs(pred[j, 2] - true[i, 2]) / true[i, 2] for i, j in pairs]

    def result(self) -> dict:
        p = self.tp / self.n_pred if self.n_pred else 0.0
        r = self.tp / self.n_true if self.n_true else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        return {"frames": self.frames, "true": self.n_true, "predicted": self.n_pred,
                "tp": self.tp, "precision": round(p, 4), "recall": round(r, 4), "f1": round(f1, 4),
                "median_rel_diameter_error": round(float(np.median(self.rel_err)), 4)
                if self.rel_err else None}
