"""Build the learned segmenter's training/validation caches and load the real BF-TEM images.

Synthetic samples come from the simulator's training-data generator,
``emstream.sources.simulate.training.training_sample(rng, size)`` (wide domain randomisation,
issue 3 item 1). If that module cannot be imported (older checkout), a small built-in renderer
(:func:`fallback_sample`) stands in and the cache's ``meta.json`` says so.

Each cache is a directory of ``.npz`` shards with, per sample (``size x size``):

- ``image``: float16, the robustly normalised image (:func:`emstream.backends.normalize.normalize_image`);
- ``fg``: uint8 particle mask; ``dist``: uint8 per-particle normalised distance to the edge x 255;
- ``labels``: int32 instance truth; ``valid``: uint8 (0 over burned-in banners / scale bars);
- ``contact``: uint8, 1 within two pixels of where two true particles touch (training weights the
  distance map more there, so the network draws the neck between touching particles);
- ``invisible``: uint8, 1 on true particles an observer could not see (detectability
  d' < ``VISIBLE_D``, see :func:`detectability`): training gives their pixels no weight, so the
  network is not taught to call carbon texture a particle. ``--add-visibility DIR`` adds it to
  a cache built without it (8-connected blobs of ``fg`` stand in for the instances there).

Real images (``../shared/data/msa-sintering-train``, CC-BY-4.0, Elemental Microscopy
doi 10.69761/HDTA8338, GitHub msa-em/microscopy-seg-track) are read from their folder, never
copied: :func:`load_real` turns each binary mask into instances by connected components.

Usage::

    python tools/make_dataset.py OUT_DIR --n 2000 --seed 1 --size 256
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from emstream.backends.normalize import fill_invalid_with_background, normalize_image  # noqa: E402
from emstream.process.visibility import SCALES, matched_scale  # noqa: E402

REAL_DIR = REPO.parent / "shared" / "data" / "msa-sintering-train"


def parse_indices_text(text: str) -> list[int]:
    """``"10-19"`` / ``"0,2,5-7"`` -> list of ints; ``""`` -> []."""
    out: list[int] = []
    for part in filter(None, (t.strip() for t in str(text).split(","))):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


# ----------------------------------------------------------------------------- targets
def distance_target(labels: np.ndarray) -> np.ndarray:
    """Per-particle Euclidean distance to the particle's edge, divided by its maximum (0..1)."""
    out = np.zeros(labels.shape, np.float32)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        m = labels[sl] == i
        d = ndi.distance_transform_edt(m)
        mx = d.max()
        if mx > 0:
            out[sl][m] = d[m] / mx
    return out


def contact_mask(labels: np.ndarray) -> np.ndarray:
    """uint8, 1 on particle pixels within two pixels (8-neighbourhood) of a pixel of *another*
    particle: the necks the instance split has to find."""
    lab = np.asarray(labels, np.int32)
    on = lab > 0
    hi = ndi.maximum_filter(lab, size=3, mode="nearest")
    lo = ndi.minimum_filter(np.where(on, lab, np.iinfo(np.int32).max), size=3, mode="nearest")
    touching = on & ((hi > lab) | (lo < lab))  # a neighbour belongs to a different particle
    return (ndi.binary_dilation(touching, np.ones((3, 3), bool)) & on).astype(np.uint8)


def targets(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fg = (labels > 0).astype(np.uint8)
    dist = np.round(distance_target(labels) * 255).astype(np.uint8)
    return fg, dist


#: True particles with a detectability index d' (``detectability``) below this are "not visible":
#: evaluation's ``visible`` rows ignore them and training gives their pixels no weight.
#: Set by eye: particles an observer sees on the screen have d' >= 3 (real BF images: median
#: 6.5; 90 % of the annotated particles over 100 px² above 4; 6 % of all annotated ones below 3),
#: fields an observer cannot tell from the carbon have d' 1-2. A. Rose's detection criterion
#: (k ~ 5) is the same idea on a different scale.
VISIBLE_D = 3.0


def detectability(raw: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Detectability index d' of every true particle (array indexed by label id; [0] unused).

    d' = |mean of the smoothed image over the particle - mean over a ring of background around
    it| / the noise of the smoothed image, where the smoothing scale follows the particle
    (Gaussian sigma = 0.3 x its equivalent diameter, snapped to 1, 2, 4 or 8 px: a matched
    filter) and the noise is the robust (MAD) standard deviation of the band-passed background
    (smoothed at sigma minus smoothed at 4 sigma, so illumination gradients do not count) over
    all background pixels at least 2 px from any particle. Shot noise, read noise, carbon grain
    and mottle at the particle's own scale all count as noise; the particle's contrast after the
    optics' blur counts as signal.
    """
    from skimage.segmentation import expand_labels

    x = np.asarray(raw[..., 0] if raw.ndim == 3 else raw, np.float64)
    labels = np.asarray(labels, np.int64)
    n = int(labels.max())
    out = np.zeros(n + 1)
    if n == 0:
        return out
    area = np.bincount(labels.ravel(), minlength=n + 1)
    scale = matched_scale(area)
    far_bg = ~ndi.binary_dilation(labels > 0, iterations=2)
    ids = np.arange(n + 1)
    for sigma in SCALES:
        group = (scale == sigma) & (area > 0)
        group[0] = False
        if not group.any():
            continue
        sm = ndi.gaussian_filter(x, sigma)
        band = sm - ndi.gaussian_filter(x, 4 * sigma)
        bg = band[far_bg]
        noise = 1.4826 * np.median(np.abs(bg - np.median(bg))) if bg.size > 50 else np.std(band)
        ring_labels = expand_labels(labels, distance=max(2.0, 2 * sigma))
        ring = np.where(labels == 0, ring_labels, 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            inside = ndi.mean(sm, labels, ids)
            around = ndi.mean(sm, ring, ids)
        ok = group & np.isfinite(around)
        out[ok] = np.abs(np.asarray(inside)[ok] - np.asarray(around)[ok]) / max(noise, 1e-12)
    return out


def invisible_mask(image: np.ndarray, labels: np.ndarray, below: float = VISIBLE_D) -> np.ndarray:
    """uint8 mask of the pixels of true particles with d' < ``below`` (1 = not visible)."""
    d = detectability(np.asarray(image, np.float32), labels)
    return (d < below)[labels].astype(np.uint8) * (labels > 0)


# ----------------------------------------------------------------------------- generators
def fallback_sample(rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, np.ndarray, dict]:
    """Minimal stand-in renderer: BF/HAADF, ellipses and polygons, blur, gradient, Poisson noise."""
    from skimage.draw import ellipse, polygon

    h = w = size
    labels = np.zeros((h, w), np.int32)
    thick = np.zeros((h, w), np.float32)
    dmin, dmax = 4.0, min(200.0, size * 0.6)
    n = int(rng.integers(1, 60))
    k = 0
    for _ in range(n):
        d = float(np.exp(rng.uniform(np.log(dmin), np.log(dmax))))
        if k and rng.random() < 0.3:  # touching a previous particle
            j = int(rng.integers(1, k + 1))
            yy, xx = np.nonzero(labels == j)
            if yy.size == 0:
                continue
            a = rng.uniform(0, 2 * np.pi)
            cy = yy.mean() + np.sin(a) * (np.sqrt(yy.size / np.pi) + d / 2) * 0.95
            cx = xx.mean() + np.cos(a) * (np.sqrt(yy.size / np.pi) + d / 2) * 0.95
        else:
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = d / 2
        if rng.random() < 0.6:
            asp = rng.uniform(1.0, 1.6) if rng.random() < 0.7 else rng.uniform(2, 4)
            rr, cc = ellipse(cy, cx, r * np.sqrt(asp), r / np.sqrt(asp), (h, w),
                             rotation=rng.uniform(0, np.pi))
        else:
            ns = int(rng.integers(3, 8))
            t = rng.uniform(0, 2 * np.pi) + np.arange(ns) * 2 * np.pi / ns
            rr, cc = polygon(cy + r * 1.1 * np.sin(t), cx + r * 1.1 * np.cos(t), (h, w))
        if rr.size < 3 or (labels[rr, cc] > 0).mean() > 0.1:  # touching yes, piling up no
            continue
        k += 1
        labels[rr, cc] = k
        dd = np.hypot(rr - cy, cc - cx) / max(r, 1)
        thick[rr, cc] = np.sqrt(np.clip(1 - 0.8 * dd**2, 0.05, 1)) * rng.uniform(0.5, 1.5)
    labels = _relabel_connected(labels)
    grain = ndi.gaussian_filter(rng.normal(size=(h, w)).astype(np.float32), rng.uniform(0.7, 3))
    carbon = 1 + rng.uniform(0.02, 0.15) * grain / (grain.std() + 1e-6)
    yy, xx = np.mgrid[0:h, 0:w] / size
    illum = 1 + rng.uniform(-0.3, 0.3) * yy + rng.uniform(-0.3, 0.3) * xx
    mode = "bf" if rng.random() < 0.6 else "haadf"
    contrast = rng.uniform(0.15, 0.8)
    if mode == "bf":
        img = illum * carbon * np.exp(-contrast * thick)
        halo = ndi.gaussian_filter(thick, 2) - ndi.gaussian_filter(thick, 4)
        img = img * (1 - rng.uniform(0, 0.5) * halo)
    else:
        img = illum * (0.3 * carbon + contrast * thick)
    img = ndi.gaussian_filter(img, rng.uniform(0.3, 2.0))
    dose = float(np.exp(rng.uniform(np.log(10), np.log(1000))))
    img = rng.poisson(np.clip(img, 0, None) * dose).astype(np.float32) + 100
    meta = {"mode": mode, "dose": dose, "generator": "fallback"}
    return img, labels, meta


def _relabel_connected(labels: np.ndarray) -> np.ndarray:
    out = np.zeros_like(labels)
    k = 0
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        cc, n = ndi.label(labels[sl] == i)
        if n == 0:
            continue
        big = np.argmax(np.bincount(cc.ravel())[1:]) + 1
        k += 1
        out[sl][cc == big] = k
    return out


def scene_sample(rng: np.random.Generator, size: int = 256, bf_fraction: float = 0.5,
                 nm_per_px: tuple[float, float] = (0.5, 0.5)) -> tuple[np.ndarray, np.ndarray, dict]:
    """One frame of the time-series microscope (``Microscope(SceneConfig)``, what the demo
    streams) with randomised mode (bright-field with probability ``bf_fraction``, else HAADF),
    dose, size, contrast, blur and coverage; the pixel size is drawn log-uniformly from the
    ``nm_per_px`` range (a single value draws nothing, so the default keeps old caches' stream)."""
    from emstream.sources.simulate.scene import Microscope, SceneConfig

    mode = "bf" if rng.random() < bf_fraction else "haadf"
    cfg = SceneConfig(
        shape=(size, size), mode=mode, nm_per_px=nm_per_px[0],
        dose=float(np.exp(rng.uniform(np.log(20), np.log(1000)))),
        median_diameter_nm=float(np.exp(rng.uniform(np.log(2.5), np.log(30)))),
        size_sigma=float(rng.uniform(0.1, 0.4)),
        coverage_start=float(rng.uniform(0.01, 0.3)), coverage_end=float(rng.uniform(0.05, 0.4)),
        ramp_frames=4, touching_fraction=float(rng.uniform(0, 0.4)),
        contrast=float(rng.uniform(0.15, 0.6)) if mode == "bf" else float(rng.uniform(0.5, 4)),
        blur_sigma_px=float(rng.uniform(0.5, 2.0)), banner=bool(rng.random() < 0.3),
        scale_bar=bool(rng.random() < 0.3), hole=bool(rng.random() < 0.15))
    if nm_per_px[1] != nm_per_px[0]:
        cfg.nm_per_px = float(np.exp(rng.uniform(np.log(nm_per_px[0]), np.log(nm_per_px[1]))))
    mic = Microscope(cfg, seed=int(rng.integers(1 << 30)))
    frame = mic.next_frame()
    for _ in range(int(rng.integers(0, 3))):
        frame = mic.next_frame()
    valid = frame.valid if frame.valid is not None else np.ones(frame.image.shape, bool)
    return frame.image, np.asarray(frame.labels, np.int32), {"mode": mode, "valid": valid,
                                                      "nm_per_px": cfg.nm_per_px}


def get_sampler(name: str = "auto", bf_fraction: float = 0.5,
                nm_per_px: tuple[float, float] = (0.5, 0.5)):
    """``(callable(rng, size) -> (image, labels, meta), name)``: the simulator's, else fallback.
    ``bf_fraction`` and ``nm_per_px`` apply to the ``scene`` generator only."""
    if name == "scene":
        return (functools.partial(scene_sample, bf_fraction=bf_fraction, nm_per_px=nm_per_px),
                "tools.make_dataset.scene_sample")
    if name in ("auto", "simulator"):
        try:
            from emstream.sources.simulate.training import training_sample

            return training_sample, "emstream.sources.simulate.training"
        except ImportError:
            if name == "simulator":
                raise
    return fallback_sample, "tools.make_dataset.fallback_sample"


# ----------------------------------------------------------------------------- caches
BAR_FILLS = ("median", "zero")


def make_sample(sampler, rng, size, ignore_below: float = VISIBLE_D, bar_fill: str = "median"):
    """One cached sample; ``bar_fill``: what a masked bar reads as (``"median"``: the background
    level, as ``LearnedSegmenter.logits`` does at inference; ``"zero"``: 0, as the caches of
    unet-s v3 and earlier)."""
    if bar_fill not in BAR_FILLS:
        raise ValueError(f"bar_fill must be one of {BAR_FILLS}, got {bar_fill!r}")
    image, labels, meta = sampler(rng, size)
    labels = np.asarray(labels, np.int32)
    valid = overlay_valid(meta, labels.shape)
    # half the time normalise as if the banner had not been detected: the network itself must
    # learn that data bars and scale bars are not particles
    masked = rng.random() < 0.5
    norm = normalize_image(np.asarray(image), valid=valid if masked else None)
    if bar_fill == "median" and masked and not valid.all():
        fill_invalid_with_background(norm, valid)  # as LearnedSegmenter.logits does
    fg, dist = targets(labels)
    return (norm.astype(np.float16), fg, dist, labels, np.asarray(valid, np.uint8),
            invisible_mask(image, labels, ignore_below), contact_mask(labels))


def overlay_valid(meta: dict, shape) -> np.ndarray:
    """Valid mask from the simulator's ``banner_rows`` / ``scale_bar`` boxes (False over them)."""
    valid = np.ones(shape, bool)
    if isinstance(meta, dict):
        if meta.get("valid") is not None:
            return np.asarray(meta["valid"], bool)
        if meta.get("banner_rows"):
            a, b = meta["banner_rows"]
            valid[a:b] = False
        if meta.get("scale_bar"):
            y0, y1, x0, x1 = meta["scale_bar"]
            valid[y0:y1, x0:x1] = False
    return valid


def build_cache(out: Path, n: int, seed: int, size: int, generator: str = "auto",
                shard: int = 250, keep_labels: bool = True,
                ignore_below: float = VISIBLE_D, bar_fill: str = "median",
                bf_fraction: float = 0.5, nm_per_px: tuple[float, float] = (0.5, 0.5)) -> Path:
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not 0.0 <= bf_fraction <= 1.0:
        raise ValueError(f"bf_fraction must be within [0, 1], got {bf_fraction}")
    if not 0 < nm_per_px[0] <= nm_per_px[1]:
        raise ValueError(f"nm_per_px must be a range 0 < lo <= hi, got {nm_per_px}")
    sampler, gen_name = get_sampler(generator, bf_fraction, tuple(nm_per_px))
    rng = np.random.default_rng(seed)
    buf: dict[str, list] = {k: [] for k in ("image", "fg", "dist", "labels", "valid", "invisible",
                                                 "contact")}
    k = 0
    t0 = time.time()
    for i in tqdm(range(n), desc=f"cache {out.name}", mininterval=5):
        for key, v in zip(buf, make_sample(sampler, rng, size, ignore_below, bar_fill),
                          strict=True):
            buf[key].append(v)
        if len(buf["image"]) == shard or i == n - 1:
            keys = [kk for kk in buf if keep_labels or kk not in ("labels", "valid")]
            np.savez(out / f"shard_{k:03d}.npz", **{kk: np.stack(buf[kk]) for kk in keys})
            buf = {kk: [] for kk in buf}
            k += 1
    meta = {"n": n, "seed": seed, "size": size, "generator": gen_name, "labels": keep_labels,
            "ignore_below": ignore_below, "bar_fill": bar_fill,
            **({"bf_fraction": bf_fraction, "nm_per_px": list(nm_per_px)}
               if generator == "scene" else {}),
            "seconds": round(time.time() - t0, 1)}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return out


def add_visibility(path: Path) -> int:
    """Add ``invisible`` to every shard of a cache that lacks it; returns the samples updated."""
    n = 0
    for shard in sorted(Path(path).glob("shard_*.npz")):
        data = dict(np.load(shard))
        if "invisible" in data:
            continue
        inv = []
        for img, fg in zip(data["image"], data["fg"], strict=True):
            labels = data["labels"][len(inv)] if "labels" in data else \
                ndi.label(fg > 0, structure=np.ones((3, 3), bool))[0]
            inv.append(invisible_mask(img, labels))
        data["invisible"] = np.stack(inv)
        tmp = shard.with_name(shard.stem + ".tmp.npz")
        np.savez(tmp, **data)
        tmp.replace(shard)
        n += len(inv)
    return n


def load_cache(path: Path) -> dict[str, np.ndarray]:
    shards = sorted(Path(path).glob("shard_*.npz"))
    if not shards:
        raise FileNotFoundError(f"no shard_*.npz in {path}")
    parts = [dict(np.load(s)) for s in shards]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def load_real(indices, real_dir: Path = REAL_DIR):
    """Real BF-TEM images ``image_i.png`` with instance labels from their binary masks.

    Returns a list of dicts (``image`` normalised float32, ``raw`` uint8, ``labels`` int32
    from 8-connected components of the mask, ``fg``, ``dist``, ``index``).
    """
    import cv2

    out = []
    for i in indices:
        raw = cv2.imread(str(Path(real_dir) / "images" / f"image_{i}.png"), cv2.IMREAD_GRAYSCALE)
        mask = cv2.imread(str(Path(real_dir) / "labels" / f"label_{i}.png"), cv2.IMREAD_GRAYSCALE)
        if raw is None or mask is None:
            raise FileNotFoundError(f"real image {i} not found under {real_dir}")
        labels, _ = ndi.label(mask > 127, structure=np.ones((3, 3), bool))
        fg, dist = targets(labels.astype(np.int32))
        out.append({"index": i, "raw": raw, "image": normalize_image(raw), "labels":
                    labels.astype(np.int32), "fg": fg, "dist": dist})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--generator", default="auto", choices=["auto", "simulator", "scene", "fallback"])
    ap.add_argument("--no-labels", action="store_true",
                    help="store only image/fg/dist (training caches: less memory)")
    ap.add_argument("--ignore-below", type=float, default=VISIBLE_D,
                    help="true particles with detectability d' below this get the 'invisible' "
                         f"mask (no training weight; default {VISIBLE_D})")
    ap.add_argument("--bar-fill", choices=BAR_FILLS, default="median",
                    help="value of a masked data bar / scale bar in the normalised image: the "
                         "background level (default, as at inference) or 0 (caches of unet-s v3)")
    ap.add_argument("--bf-fraction", type=float, default=0.5,
                    help="--generator scene: fraction of bright-field samples (the rest HAADF)")
    ap.add_argument("--nm-per-px", type=float, nargs=2, default=(0.5, 0.5), metavar=("LO", "HI"),
                    help="--generator scene: pixel size range, drawn log-uniformly (default 0.5 0.5)")
    ap.add_argument("--add-visibility", action="store_true",
                    help="add the 'invisible' mask to the existing cache OUT and exit")
    a = ap.parse_args(argv)
    if a.add_visibility:
        print(f"{add_visibility(a.out)} samples updated")
        return 0
    p = build_cache(a.out, a.n, a.seed, a.size, a.generator, keep_labels=not a.no_labels,
                    ignore_below=a.ignore_below, bar_fill=a.bar_fill, bf_fraction=a.bf_fraction,
                    nm_per_px=tuple(a.nm_per_px))
    print(json.loads((p / "meta.json").read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
