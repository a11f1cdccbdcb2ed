"""Particle instances from the learned segmenter's two output maps (pure: numpy/scipy/skimage).

The network predicts, per pixel, the probability of being on a particle (``foreground``) and a
normalised distance to the particle's own edge (``distance``: 0 at the edge, 1 at the particle's
deepest point). Touching or sintering particles meet at a neck where the distance is low, so

1. particle pixels are ``foreground > threshold`` (and inside ``valid``); enclosed holes of at
   most ``fill_holes_px`` pixels are filled (noise specks inside a particle's projection);
2. one marker per particle is a connected region of ``distance > marker_threshold``;
3. a connected blob of particle pixels (8-connected) with at most one marker is one particle
   (small or faint particles whose distance map never crossed the marker threshold included);
4. a blob with several markers (touching / sintering particles) is split by a marker-controlled
   watershed on ``-distance`` (8-connected) restricted to the blob, along the distance valleys.
   Running the watershed only on such clusters gives the same result as one watershed over the
   whole frame, several times faster. With ``marker_dynamics`` = h > 0, the markers of every
   blob that holds several markers (of the separation map, or of the network's distance map
   alone) are instead its **h-maxima**: peaks that rise at least h above every path to a higher
   one. A close-packed layer of particles is one blob whose shape distance is a single hill as
   wide as the layer, with the network's per-particle peaks on it: a threshold finds one marker
   there, while each peak's height above its saddles still tells the particles apart;
5. particles smaller than ``min_area_px`` are dropped, and so are particles whose mean
   ``foreground`` value is below ``min_mean`` (faint, texture-like detections the network was
   unsure of); labels are renumbered 1..N in raster order of their first pixel, so the result
   is deterministic.

Only the *order* of the map values matters beyond the two thresholds, so the network's logits can
be passed directly with thresholds in logit space (``threshold=0.0`` for p = 0.5, ``min_mean``
then compares the particle's mean logit); the learned segmenter does this and skips computing
sigmoids on every pixel.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed


def instances_from_maps(
    fg: np.ndarray,
    sep: np.ndarray,
    *,
    valid: np.ndarray | None = None,
    threshold: float = 0.5,
    marker_threshold: float = 0.5,
    min_area_px: int = 4,
    sep_sigma: float = 0.0,
    split: str = "map",
    fill_holes_px: int = 0,
    min_mean: float | None = None,
    marker_dynamics: float = 0.0,
) -> np.ndarray:
    """Turn foreground and normalised-distance maps into an int32 instance label image.

    Parameters
    ----------
    fg : 2-D float array, particle probability in [0, 1].
    sep : 2-D float array of the same shape, normalised distance to the particle edge in [0, 1]
        (the separation map: low at necks between touching particles).
    valid : optional bool mask; pixels where it is False are never particles.
    threshold : foreground probability above which a pixel is on a particle.
    marker_threshold : normalised distance above which a pixel belongs to a particle's core
        (one connected core = one particle).
    min_area_px : particles with fewer pixels are dropped.
    sep_sigma : Gaussian smoothing (px) of the separation map before markers are taken, so that
        noise in a particle's core does not split it into several markers (0 = none). With
        ``marker_dynamics``, the most smoothing: each blob's map is smoothed by 1/16 of the
        diameter of the particles it holds (its area over its markers), at most this much, since
        a fixed blur fills the necks between particles of a few px.
    split : where the markers come from: ``"map"`` = ``sep`` as given; ``"shape"`` = the
        particle mask's own Euclidean distance transform divided by its maximum in each blob
        (``sep`` ignored; touching round particles split at their neck, as in classical
        watershed); ``"both"`` = the mean of ``sep`` (a probability, 0..1) and the shape map.
    fill_holes_px : enclosed background regions (4-connected) of at most this many pixels inside
        the particle mask become particle pixels (0 = none).
    min_mean : particles whose mean ``fg`` value (same space as ``threshold``) is below this are
        dropped (None = keep all).
    marker_dynamics : h > 0: markers of the blobs with several markers are the h-maxima of the
        (smoothed) separation map, peaks above ``MARKER_FLOOR`` (step 4 of the module
        docstring; ``sep`` must then be a probability, 0..1); 0 = threshold markers only.

    Returns
    -------
    int32 array of ``fg.shape``: 0 = background, 1..N = particles.
    """
    fg = np.asarray(fg)
    sep = np.asarray(sep)
    if fg.ndim != 2 or fg.shape != sep.shape:
        raise ValueError(f"fg and sep must be 2-D arrays of one shape, got {fg.shape} and {sep.shape}")
    mask = fg > threshold
    if valid is not None:
        if valid.shape != fg.shape:
            raise ValueError(f"valid has shape {valid.shape}, maps have {fg.shape}")
        mask &= valid.astype(bool, copy=False)
    out = np.zeros(fg.shape, dtype=np.int32)
    if not mask.any():
        return out

    box = bounding_box(mask)  # work only there: sparse frames are cheap
    m = mask[box]
    if fill_holes_px > 0:
        m = fill_small_holes(m, fill_holes_px)
        if valid is not None:  # a hole over a banner or scale bar stays out
            m &= valid[box].astype(bool, copy=False)
    s = sep[box].astype(np.float32, copy=False)
    if split not in ("map", "shape", "both"):
        raise ValueError(f"split must be 'map', 'shape' or 'both', got {split!r}")
    blobs, n_blobs = label_blobs(m)
    # per-particle sums and extremes over the particle pixels only (a fraction of the frame):
    # their flat indices in raster order, once
    nz = np.flatnonzero(m)
    net = s if split == "both" and marker_dynamics > 0 else None
    if split != "map":
        shape_map = blob_normalised_distance(m, (blobs, n_blobs), nz)
        s = shape_map if split == "shape" else 0.5 * (s + shape_map)
    if sep_sigma > 0 and marker_dynamics <= 0:
        s = _smooth(s, sep_sigma)

    labels = _split_touching(m, s, marker_threshold, (blobs, n_blobs), nz,
                             dynamics=marker_dynamics, net=net, sigma_max=sep_sigma)
    on = labels.ravel()[nz]
    n = int(on.max()) if on.size else 0
    area = np.bincount(on, minlength=n + 1)
    keep = area >= max(int(min_area_px), 1)
    if min_mean is not None:  # faint, texture-like detections the network was unsure of
        total = np.bincount(on, weights=fg[box].ravel()[nz].astype(np.float64), minlength=n + 1)
        keep &= total / np.maximum(area, 1) >= min_mean
    keep[0] = False
    # renumber 1..N in raster order of each particle's first pixel: deterministic
    first = np.full(n + 1, m.size, dtype=np.int64)
    np.minimum.at(first, on, nz)
    ids = np.flatnonzero(keep)
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[ids[np.argsort(first[ids], kind="stable")]] = np.arange(1, ids.size + 1, dtype=np.int32)
    final = np.zeros(m.shape, np.int32)
    final.ravel()[nz] = lut[on]
    out[box] = final
    return out


def _smooth(a: np.ndarray, sigma: float) -> np.ndarray:
    k = 2 * int(np.ceil(3.0 * sigma)) + 1  # as ndi.gaussian_filter(truncate=3), faster
    return cv2.GaussianBlur(np.ascontiguousarray(a, np.float32), (k, k), sigma,
                            borderType=cv2.BORDER_REPLICATE)


def bounding_box(mask: np.ndarray) -> tuple[slice, slice]:
    """``(rows, cols)`` slices of the smallest box holding every True pixel of a non-empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def label_blobs(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """``(labels, n)``: connected regions of a bool mask, int32, 1..n (as ``ndi.label`` with
    8- or 4-connectivity; OpenCV's labelling, several times faster on large frames)."""
    n, labels = cv2.connectedComponents(mask.view(np.uint8) if mask.dtype == bool
                                        else mask.astype(np.uint8), connectivity=connectivity,
                                        ltype=cv2.CV_32S)
    return labels, n - 1


def fill_small_holes(mask: np.ndarray, max_area: int) -> np.ndarray:
    """``mask`` with enclosed background regions (4-connected) of <= ``max_area`` px filled.

    A region touching the array border is never a hole."""
    inv = ~mask
    n, bg, stats, _ = cv2.connectedComponentsWithStats(inv.view(np.uint8), connectivity=4,
                                                       ltype=cv2.CV_32S)
    if n <= 1:
        return mask
    h, w = mask.shape
    x, y, bw, bh, area = (stats[:, k] for k in range(5))
    fill = (area <= max_area) & (x > 0) & (y > 0) & (x + bw < w) & (y + bh < h)
    fill[0] = False  # label 0: the mask itself
    holes = np.flatnonzero(fill)
    if holes.size == 0:
        return mask
    if holes.size > 256:  # many: one lookup over the frame
        return mask | fill[bg]
    out = mask.copy()
    for i in holes.tolist():  # few: each in its own box
        sl = (slice(y[i], y[i] + bh[i]), slice(x[i], x[i] + bw[i]))
        out[sl] |= bg[sl] == i
    return out


def blob_normalised_distance(mask: np.ndarray, blobs: tuple[np.ndarray, int],
                             nz: np.ndarray) -> np.ndarray:
    """Euclidean distance to the background divided by its maximum within each 8-connected blob
    (``blobs``: the mask's ``label_blobs``; ``nz``: the mask's flat nonzero indices).

    OpenCV's 5x5-mask distance (within 2 % of the exact Euclidean one, 6x faster: 2048², 78 ->
    13 ms): it only places the markers that split touching particles, whose outlines come
    from the mask itself."""
    edt = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)
    blobs, n = blobs
    if n == 0:
        return edt
    # per-blob maximum over the blob pixels, without ndi.maximum's full-frame argsort
    peak = np.zeros(n + 1, np.float32)
    np.maximum.at(peak, blobs.ravel()[nz], edt.ravel()[nz])
    scale = 1.0 / np.maximum(peak, 1e-6)
    scale[0] = 0.0
    return edt * scale[blobs]


#: h-maxima markers (``marker_dynamics``) must also reach this separation value: a dip in the
#: rim of a particle is no particle
MARKER_FLOOR = 0.2
#: ... and are taken on the separation map smoothed by the blob's particle diameter / this
#: (chosen with ``marker_dynamics`` on the real families' training images; engines/MODEL_CARD.md)
SMOOTH_PER_D = 16.0


def _markers_per_blob(markers: tuple[np.ndarray, int], blobs: np.ndarray, n_blobs: int,
                      nz: np.ndarray) -> np.ndarray:
    """How many markers each blob holds (a marker lies inside exactly one blob, so any of its
    pixels says which)."""
    markers, n_markers = markers
    blob_of_marker = np.zeros(n_markers + 1, np.int32)
    blob_of_marker[markers.ravel()[nz]] = blobs.ravel()[nz]
    return np.bincount(blob_of_marker[1:], minlength=n_blobs + 1)


def _h_maxima_markers(sep: np.ndarray, region: np.ndarray, h: float) -> np.ndarray:
    """Labelled regional maxima of the h-maxima transform of ``sep`` (0..1) inside ``region``:
    one marker per peak that rises at least ``h`` above the highest saddle to a higher peak,
    a dip shallower than ``h`` on its top included (``skimage.morphology.h_maxima`` would cut
    the top at such a dip into two markers). Quantised to 1/1000, so that the result does not
    depend on float rounding."""
    from skimage.morphology import reconstruction

    q = np.where(region, np.round(np.clip(sep, 0.0, 1.0) * 1000.0), 0.0)
    hq = max(round(h * 1000.0), 1)
    residue = q - reconstruction(np.maximum(q - hq, 0.0), q, method="dilation")
    tops, n = label_blobs(residue > 0)
    if n == 0:
        return tops
    height = np.zeros(n + 1)
    np.maximum.at(height, tops.ravel(), residue.ravel())
    peak = np.zeros(n + 1)
    np.maximum.at(peak, tops.ravel(), q.ravel())
    keep = (height >= hq) & (peak > MARKER_FLOOR * 1000.0)
    keep[0] = False
    lut = np.zeros(n + 1, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[tops]


def _split_touching(mask: np.ndarray, sep: np.ndarray, marker_threshold: float,
                    blobs: tuple[np.ndarray, int], nz: np.ndarray, *, dynamics: float = 0.0,
                    net: np.ndarray | None = None, sigma_max: float = 0.0) -> np.ndarray:
    """Label particle pixels; watershed only the connected blobs that hold several markers.

    Equivalent to one marker-controlled watershed (8-connected) over the whole mask, followed by
    connected-component labelling of unreached pixels, but a blob with at most one marker is
    simply one particle, so the (comparatively slow) watershed runs only on touching clusters.
    With ``dynamics`` > 0, a blob with several threshold markers of ``sep`` or of ``net`` (the
    network's own distance map, when ``sep`` mixes it with the shape) gets the h-maxima of
    ``sep`` as its markers instead (module docstring, step 4), ``sep`` smoothed there by
    1/``SMOOTH_PER_D`` of the blob's particle diameter, at most ``sigma_max``.
    """
    blobs, n_blobs = blobs  # the mask's label_blobs; nz: the mask's flat nonzero indices
    markers = label_blobs((sep > marker_threshold) & mask)
    if n_blobs == 0:
        return blobs
    per_blob = _markers_per_blob(markers, blobs, n_blobs, nz)
    if dynamics > 0 and net is not None:
        per_blob = np.maximum(per_blob, _markers_per_blob(
            label_blobs((net > marker_threshold) & mask), blobs, n_blobs, nz))
    sigma = np.zeros(n_blobs + 1)  # each blob's smoothing (h-maxima markers only)
    if dynamics > 0 and sigma_max > 0:  # the diameter of a blob's particles: its area / markers
        blob_area = np.bincount(blobs.ravel()[nz], minlength=n_blobs + 1)
        d_blob = np.sqrt(4.0 * blob_area / (np.pi * np.maximum(per_blob, 1)))
        sigma = np.minimum(sigma_max, d_blob / SMOOTH_PER_D)
    markers = markers[0]
    out = blobs.astype(np.int32, copy=True)
    next_id = n_blobs + 1
    clusters = np.flatnonzero(per_blob >= 2)
    slices = ndi.find_objects(blobs) if clusters.size else []
    for b in clusters:
        sl = slices[b - 1]
        region = blobs[sl] == b
        surface = sep[sl]
        if dynamics > 0:
            if sigma[b] >= 0.3:  # below that a blur changes nothing on a pixel grid
                surface = _smooth(surface, float(sigma[b]))
            mk = _h_maxima_markers(surface, region, dynamics)
            if mk.max() < 2:
                continue  # one peak: one particle (the blob keeps its label)
        else:
            mk = np.where(region, markers[sl], 0)
        ws = watershed(-surface, mk, mask=region, connectivity=2)
        ids = np.unique(ws[ws > 0])
        lut = np.zeros(int(ws.max()) + 1, dtype=np.int32)
        lut[ids] = np.arange(next_id, next_id + ids.size, dtype=np.int32)
        next_id += ids.size
        sub = out[sl]
        sub[region] = lut[ws[region]]
        rest = region & (ws == 0)  # pixels no marker reached (should not happen when connected)
        if rest.any():
            sub[rest] = next_id
            next_id += 1
    return out
