"""``LearnedSegmenter``: the network (through any backend) + watershed post-processing.

Per frame:

1. **Normalise** the frame's native pixels (``prepared.raw``, first channel if RGB) with
   :func:`emstream.backends.normalize.normalize_image`, percentiles over ``prepared.valid``
   pixels only -- the exact transform used in training. **Banners**: the network sees only the
   bounding box of the valid pixels (a full-width data bar is cut off, its logits are set to
   "background"), and invalid pixels left inside that box (a scale bar) are set to the median of
   the valid ones, i.e. to the background level. A flat block at any other level has an edge
   the network reads as particle contrast: filling a data bar with 0 produced a row of false
   particles along it on the demo's bright-field frames (BF precision 0.60 -> 0.79).
2. **Large-frame policy.** The network is fully convolutional and runs at the frame's *native*
   pixel size unless the scale policy below shrinks a frame of large particles (a 4 px particle
   on a 4096² frame stays 4 px). Frames whose longer side is at most ``max_side`` (2048 on the
   CPU, 4096 on CUDA) run in one piece, padded (reflect) to a multiple of 16. Larger frames are
   cut into ``tile`` x ``tile`` tiles (default 1024) that overlap by ``2 * margin`` px (default
   margin 128, about half the network's receptive field); each tile contributes only its
   interior (the outer ``margin`` px are discarded, except at the frame edge), and the *maps* --
   not labels -- are stitched, so the watershed runs once on the whole frame and particles
   crossing tile borders are never cut or duplicated. **Scale policy**: ``scale="auto"`` (the
   shipped sidecar's) resamples a frame whose particles are larger than the network's size band
   into it (:meth:`LearnedSegmenter.estimate_scale`; small particles are never shrunk); a
   number fixes the factor. Maps are resampled back to full size before post-processing, so
   outlines and sizes are in the frame's own pixels.
3. **Instances** from the two maps with
   :func:`emstream.process.instances.instances_from_maps` (markers from the normalised distance,
   watershed inside the particle mask), pixels outside ``prepared.valid`` are 0.

Thresholds and the marker source come from the model's ``.json`` sidecar (``threshold``,
``marker_threshold``, ``min_area_px``, ``split``, ``sep_sigma``, ``fill_holes_px``,
``min_score``: the lowest mean particle probability kept, compared as a mean logit;
``marker_dynamics``: touching particles are split at the h-maxima of the separation map;
``min_detectability``: small particles (<= 24 px) whose contrast in the frame an observer could
not see (d' below it, :mod:`emstream.process.visibility`) are dropped; ``views``:
1, 2 or 4 mirror images of the frame whose logits are averaged, test-time augmentation that
costs one network pass each; ``local_background_sigma`` and ``coarse_looks``: the second looks
at unsure frames, :meth:`LearnedSegmenter.logits`) and can be overridden.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from emstream.backends.base import InferenceBackend, input_channels
from emstream.backends.normalize import (
    fill_invalid_with_background,
    local_contrast,
    normalize_image,
)
from emstream.frame import Prepared
from emstream.process.confidence import CONFIDENCE_LOW
from emstream.process.instances import bounding_box, instances_from_maps
from emstream.process.visibility import drop_faint

SIZE_MULTIPLE = 16
#: Test-time augmentation: the mirror images averaged for ``views`` = 1, 2 or 4.
_VIEWS = {1: ((),), 2: ((), (1,)), 4: ((), (1,), (0,), (0, 1))}
#: Logits given to pixels outside the valid box (far below any threshold).
_BACKGROUND_LOGIT = -20.0
#: Scale policy (``scale="auto"``): particles whose median equivalent diameter exceeds this many
#: px are resampled to ``SCALE_TARGET_D`` px before the network sees them (training resamples the
#: real images' large particles into the same band, ``tools/train.py: TRAIN_D_RANGE``).
SCALE_MAX_D = 64.0
SCALE_TARGET_D = 40.0
#: The scale estimate's coarse pass sees the frame with its longer side at most this many px.
SCALE_PROBE_SIDE = 256
#: ... and acts only on what it is sure of: at least ``SCALE_PROBE_MIN_COUNT`` large objects
#: covering at least ``SCALE_PROBE_COVERAGE`` of the frame, found with a confidence (mean margin,
#: :func:`confidence`) of at least ``SCALE_PROBE_CONFIDENCE``. A thick textured support under
#: small particles looks like a few large, unsure objects in the probe (supported catalysts:
#: margin 0.33-0.65, coverage <= 3 %; large particles in figures: 0.65-0.96).
SCALE_PROBE_COVERAGE = 0.05
SCALE_PROBE_MIN_COUNT = 3
SCALE_PROBE_CONFIDENCE = 0.7
#: The network never sees a frame whose shorter side is below this many px.
SCALE_MIN_SIDE = 96
#: An unsure frame's second look replaces the look kept so far only when the network is surer
#: of it by this much (and trusts it: ``CONFIDENCE_LOW``); model card, "Second looks".
SECOND_LOOK_MARGIN = 0.05


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def confidence(logit_fg: np.ndarray, threshold_logit: float,
               agree: list[int] | tuple[int, int] | None = None) -> float:
    """A frame's segmentation confidence, 0..1 (1 = sure).

    With mirror views (``agree`` = particle pixels every view called particle, pixels any view
    did): their agreement, intersection over union. A network on familiar images gives the same
    answer for a frame and its mirror image (0.9 and more); on images unlike its training the
    views disagree. With one view: the mean margin ``|2p - 1|`` of the particle probability over
    the pixels near the decision (``p`` above half the threshold), which falls when the map is
    undecided. A frame with no candidate particle pixels scores 1 (sure it is empty).
    """
    if agree is not None:
        inter, union = agree
        return round(float(inter) / union, 4) if union else 1.0
    near = logit_fg > threshold_logit - math.log(2.0)
    if not near.any():
        return 1.0
    p = 1.0 / (1.0 + np.exp(-np.clip(logit_fg[near], -30, 30)))
    return round(float(np.mean(np.abs(2 * p - 1))), 4)


def tile_starts(length: int, tile: int, margin: int) -> list[int]:
    """Start offsets of tiles of ``tile`` px covering ``length`` px, overlapping by ``2*margin``."""
    if length <= tile:
        return [0]
    step = tile - 2 * margin
    if step <= 0:
        raise ValueError(f"tile ({tile}) must exceed twice the margin ({margin})")
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


class LearnedSegmenter:
    """A :class:`~emstream.process.segmenter.Segmenter` running the learned network.

    Parameters
    ----------
    backend : an :class:`~emstream.backends.base.InferenceBackend`.
    model_card_info : the model's sidecar facts (``arch``, ``threshold``, ``marker_threshold``,
        ``min_area_px``, ...); missing keys take defaults.
    max_side, tile, margin : large-frame policy (module docstring).
    scale : a fixed resampling factor, or ``"auto"`` (the sidecar's ``scale``, default):
        :meth:`estimate_scale` per frame.
    """

    def __init__(self, backend: InferenceBackend, model_card_info: dict | None = None, *,
                 max_side: int | None = None, tile: int = 1024, margin: int = 128,
                 scale: float | str | None = None, threshold: float | None = None,
                 marker_threshold: float | None = None, min_area_px: int | None = None,
                 split: str | None = None, sep_sigma: float | None = None,
                 fill_holes_px: int | None = None, min_score: float | None = None,
                 views: int | None = None, local_background_sigma: float | None = None,
                 coarse_looks: tuple[float, ...] | None = None,
                 min_detectability: float | None = None,
                 marker_dynamics: float | None = None):
        info = dict(model_card_info or {})
        self.backend = backend
        self.info = info
        self.arch = str(info.get("arch", "unet-s"))
        self.name = f"{self.arch}@{backend.describe()}"
        on_gpu = "cuda" in backend.device.lower() or backend.name == "tensorrt"
        self.max_side = int(max_side or (4096 if on_gpu else 2048))
        self.tile = int(tile)
        self.margin = int(margin)
        if self.tile % SIZE_MULTIPLE:
            raise ValueError(f"tile must be a multiple of {SIZE_MULTIPLE}")
        scale = scale if scale is not None else info.get("scale", 1.0)
        self.scale: float | str = scale if scale == "auto" else float(scale)
        #: what the last frame ran with: ``scale`` (resampling factor) and ``confidence``
        self.last_info: dict = {}
        self._agree = [0, 0]
        self.threshold = float(threshold if threshold is not None else info.get("threshold", 0.5))
        self.marker_threshold = float(marker_threshold if marker_threshold is not None
                                      else info.get("marker_threshold", 0.5))
        self.min_area_px = int(min_area_px if min_area_px is not None
                               else info.get("min_area_px", 4))
        self.split = str(split if split is not None else info.get("split", "map"))
        self.sep_sigma = float(sep_sigma if sep_sigma is not None else info.get("sep_sigma", 0.0))
        self.fill_holes_px = int(fill_holes_px if fill_holes_px is not None
                                 else info.get("fill_holes_px", 0))
        self.marker_dynamics = float(marker_dynamics if marker_dynamics is not None
                                     else info.get("marker_dynamics", 0.0))
        self.views = int(views if views is not None else info.get("views", 1))
        if self.views not in _VIEWS:
            raise ValueError(f"views must be one of {sorted(_VIEWS)}, got {self.views}")
        ms = min_score if min_score is not None else info.get("min_score")
        self.min_score = None if ms is None else float(ms)
        md = min_detectability if min_detectability is not None else info.get("min_detectability")
        #: small particles an observer could not see in the frame (d' below this) are dropped
        self.min_detectability = float(md) if md else None
        lb = (local_background_sigma if local_background_sigma is not None
              else info.get("local_background_sigma"))
        #: second looks at unsure frames (see :meth:`logits`): the background-subtracted one
        #: (px; ``None``/0: none) and the shrunk ones (factors; ``()``: none)
        self.local_background_sigma = float(lb) if lb else None
        self.coarse_looks = tuple(float(f) for f in (
            coarse_looks if coarse_looks is not None else info.get("coarse_looks", ())))
        #: input channels: 1 (the normalised image) or 2 (and its local contrast, Gaussian
        #: background of ``local_contrast_sigma`` network px subtracted; see normalize.py)
        self.inputs = input_channels(info)
        if self.inputs not in (1, 2):
            raise ValueError(f"models with {self.inputs} input channels are not supported")
        self.local_contrast_sigma = float(info.get("local_contrast_sigma", 4.0))

    def _channels(self, image: np.ndarray) -> np.ndarray:
        """The network's input (C x H x W) from a normalised image at network resolution."""
        if self.inputs == 1:
            return image[None]
        return np.stack([image, local_contrast(image, self.local_contrast_sigma)])

    # -- network -------------------------------------------------------------------------
    def _run_padded(self, img: np.ndarray, views: int | None = None) -> np.ndarray:
        """Logit maps (2 x h x w) of one input (C x h x w, any size: reflect-padded to a
        multiple of 16), averaged over ``views`` mirror images of it (test-time augmentation;
        default the model's). With several views, their agreement (particle pixels all views call particle
        / pixels any view does) is added to ``self._agree``."""
        n_views = self.views if views is None else views
        h, w = img.shape[1:]
        ph, pw = (-h) % SIZE_MULTIPLE, (-w) % SIZE_MULTIPLE
        if ph or pw:
            mode = "reflect" if (h > ph and w > pw) else "edge"
            img = np.pad(img, ((0, 0), (0, ph), (0, pw)), mode=mode)
        # the views go through the network as one batch, or as many as the backend accepts (ONNX
        # Runtime, 2 CPU cores, 1024²: 4-7 % faster than one run per view, interleaved timing)
        views = _VIEWS[n_views]
        step = max(1, min(len(views), getattr(self.backend, "max_batch", None) or len(views)))
        out = np.zeros((2,) + img.shape[1:], np.float32)
        t = _logit(self.threshold)
        every = anyone = None
        for i in range(0, len(views), step):
            chunk = views[i:i + step]
            batch = np.stack([np.flip(img, tuple(a + 1 for a in axes)) if axes else img
                              for axes in chunk])
            maps = self.backend.run(np.ascontiguousarray(batch))["maps"]
            for axes, m in zip(chunk, maps, strict=True):
                m = np.flip(m, tuple(a + 1 for a in axes)) if axes else m
                out += m
                if n_views > 1:
                    fg = m[0, :h, :w] > t
                    every = fg if every is None else every & fg
                    anyone = fg if anyone is None else anyone | fg
        if n_views > 1:
            out /= n_views
            self._agree[0] += int(np.count_nonzero(every))
            self._agree[1] += int(np.count_nonzero(anyone))
        return out[:, :h, :w]

    def estimate_scale(self, image: np.ndarray) -> float:
        """The resampling factor that brings this frame's particles into the network's size band.

        A coarse pass (one view, the frame shrunk so its longer side is ``SCALE_PROBE_SIDE`` px:
        about 1/16 of a 1024² frame's cost) finds the particles that are large at native
        resolution; if they are convincing (``SCALE_PROBE_COVERAGE``, ``SCALE_PROBE_CONFIDENCE``)
        and their median equivalent diameter, in native px, exceeds ``SCALE_MAX_D`` the frame is
        resampled so that it becomes ``SCALE_TARGET_D``. Small particles are invisible to the
        coarse pass and leave the factor at 1, so they are never shrunk away.
        """
        h, w = image.shape
        c = min(1.0, SCALE_PROBE_SIDE / max(h, w))
        small = image if c == 1.0 else cv2.resize(
            image, (max(16, round(w * c)), max(16, round(h * c))), interpolation=cv2.INTER_AREA)
        probe = self._run_padded(self._channels(small), views=1)
        labels = self.instances(probe)
        area = np.bincount(labels.ravel())[1:]
        area = area[area >= max(self.min_area_px, 4)]
        if area.size < SCALE_PROBE_MIN_COUNT or area.sum() < SCALE_PROBE_COVERAGE * labels.size:
            return 1.0
        if confidence(probe[0], _logit(self.threshold)) < SCALE_PROBE_CONFIDENCE:
            return 1.0  # unsure large objects: a textured support, not large particles
        d_native = float(np.median(np.sqrt(4 * area / np.pi))) / c
        if d_native <= SCALE_MAX_D:
            return 1.0
        s = SCALE_TARGET_D / d_native
        return float(min(1.0, max(s, SCALE_MIN_SIDE / min(h, w))))

    def maps(self, image: np.ndarray, scale: float | None = None) -> np.ndarray:
        """Logit maps (2 x H x W) of a normalised image, with the large-frame policy applied
        (``scale``: resampling factor, default this segmenter's fixed one)."""
        h, w = image.shape
        if scale is None:
            scale = 1.0 if self.scale == "auto" else float(self.scale)
        if scale != 1.0:
            sh, sw = max(16, round(h * scale)), max(16, round(w * scale))
            small = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA)
            m = self._maps_native(self._channels(small))
            return np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR) for c in m])
        return self._maps_native(self._channels(image))

    def _maps_native(self, image: np.ndarray) -> np.ndarray:
        """Logit maps of an input (C x H x W), tiled when larger than ``max_side``."""
        h, w = image.shape[1:]
        if max(h, w) <= self.max_side:
            return self._run_padded(image)
        out = np.empty((2, h, w), np.float32)
        t, m = self.tile, self.margin
        for y0 in tile_starts(h, t, m):
            for x0 in tile_starts(w, t, m):
                tile = self._run_padded(image[:, y0:y0 + t, x0:x0 + t])
                th, tw = tile.shape[1:]
                # keep the interior; at the frame edge keep up to the edge
                ya = 0 if y0 == 0 else m
                xa = 0 if x0 == 0 else m
                yb = th if y0 + th >= h else th - m
                xb = tw if x0 + tw >= w else tw - m
                out[:, y0 + ya:y0 + yb, x0 + xa:x0 + xb] = tile[:, ya:yb, xa:xb]
        return out

    # -- Segmenter protocol ----------------------------------------------------------------
    def segment(self, prepared: Prepared) -> np.ndarray:
        labels = self.instances(self.logits(prepared), prepared.valid)
        if self.min_detectability:
            raw = prepared.raw[..., 0] if prepared.raw.ndim == 3 else prepared.raw
            labels = drop_faint(labels, raw, self.min_detectability, prepared.valid)
        return labels

    def logits(self, prepared: Prepared) -> np.ndarray:
        """The network's logit maps (2 x H x W) of a prepared frame: its native pixels (first
        channel if RGB) normalised over the valid pixels, then :meth:`maps`.

        A frame the network is unsure of (confidence below ``CONFIDENCE_LOW``) gets second
        looks, as far as the model's sidecar asks for them: the frame with its smooth background
        subtracted (a Gaussian of ``local_background_sigma`` px), which leaves particles brighter
        or darker only than their own surroundings (small metal particles on a thick, textured
        support) on a flat field; and the frame shrunk by each of ``coarse_looks`` (0.5, 0.25),
        for particles larger than the network's size band that the scale probe did not catch.
        A look replaces the one kept so far only when it is itself trusted (confidence at least
        ``CONFIDENCE_LOW``) and surer by ``SECOND_LOOK_MARGIN``: on figures of large particles
        the background-subtracted look breaks them into rims the network is not sure of either.
        ``last_info["view"]`` says which look was kept.
        """
        raw = prepared.raw
        if raw.ndim == 3:
            raw = raw[..., 0]
        valid = prepared.valid
        logits = self._look(raw, valid)
        info = dict(self.last_info, view="plain")
        if info["confidence"] < CONFIDENCE_LOW:
            for view, image, scale in self._second_looks(raw, valid):
                second = self._look(image, valid, scale)
                c = self.last_info["confidence"]
                if c >= CONFIDENCE_LOW and c > info["confidence"] + SECOND_LOOK_MARGIN:
                    logits, info = second, dict(self.last_info, view=view)
        self.last_info = info
        return logits

    def _second_looks(self, raw: np.ndarray, valid: np.ndarray | None):
        """``(view, image, scale)`` of each second look the model asks for, made when needed."""
        if self.local_background_sigma:
            flat = np.asarray(raw, np.float32)
            yield ("local background",
                   flat - cv2.GaussianBlur(flat, (0, 0), self.local_background_sigma), None)
        h, w = raw.shape
        for f in self.coarse_looks:
            f = max(float(f), SCALE_MIN_SIDE / min(h, w))
            if f < 1.0:
                yield f"coarse x{f:.3g}", raw, f

    def _look(self, raw: np.ndarray, valid: np.ndarray | None,
              scale: float | None = None) -> np.ndarray:
        """Logit maps of one image (normalised, banners filled, the scale policy or the given
        resampling factor, confidence in ``last_info``)."""
        image = normalize_image(raw, valid=valid)
        self._agree = [0, 0]
        if valid is None or not valid.any():
            return self._finish(self._scaled_maps(image, scale))
        box = bounding_box(valid)
        inner, inner_valid = image[box], valid[box]
        if not inner_valid.all():
            fill_invalid_with_background(inner, inner_valid, step=4)
        if inner.shape == image.shape:
            return self._finish(self._scaled_maps(image, scale))
        out = np.full((2,) + image.shape, _BACKGROUND_LOGIT, np.float32)
        out[(slice(None),) + box] = self._scaled_maps(np.ascontiguousarray(inner), scale)
        return self._finish(out)

    def _scaled_maps(self, image: np.ndarray, scale: float | None = None) -> np.ndarray:
        if scale is None:
            scale = self.estimate_scale(image) if self.scale == "auto" else float(self.scale)
        self.last_info = {"scale": round(scale, 4)}
        return self.maps(image, scale)

    def _finish(self, logits: np.ndarray) -> np.ndarray:
        """Record the frame's segmentation confidence in ``last_info`` (see :func:`confidence`)."""
        self.last_info["confidence"] = confidence(logits[0], _logit(self.threshold),
                                                  self._agree if self.views > 1 else None)
        return logits

    def segment_with_info(self, prepared: Prepared) -> tuple[np.ndarray, dict]:
        """Particles and what the frame ran with (``confidence``, ``scale``)."""
        labels = self.segment(prepared)
        return labels, dict(self.last_info)

    def instances(self, logits: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Particles from the network's logit maps (thresholds and split mode of this model)."""
        if self.split == "map" and not self.marker_dynamics:
            # logits straight in, thresholds in logit space
            sep, marker = logits[1], _logit(self.marker_threshold)
        else:
            sep = 1.0 / (1.0 + np.exp(-np.clip(logits[1], -30, 30)))
            marker = self.marker_threshold
        return instances_from_maps(
            logits[0], sep, valid=valid, threshold=_logit(self.threshold),
            marker_threshold=marker, min_area_px=self.min_area_px, split=self.split,
            sep_sigma=self.sep_sigma, fill_holes_px=self.fill_holes_px,
            min_mean=None if self.min_score is None else _logit(self.min_score),
            marker_dynamics=self.marker_dynamics)

    def close(self) -> None:
        self.backend.close()

    def __repr__(self) -> str:
        return f"LearnedSegmenter({self.name!r})"
