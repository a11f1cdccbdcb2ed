"""Train the learned segmenter (``emstream.backends.unet``) on synthetic frames and real images.

Reproducible: every run directory holds ``config.json`` (the full configuration, seed included),
``log.csv`` (training curves: loss terms, learning rate, validation loss and IoU), and
``last.pt`` (weights, optimiser state, step, RNG states, config) from which ``--resume`` continues.
Checkpoints are loaded with ``torch.load(weights_only=True)`` (no arbitrary unpickling).

Data per step: ``batch`` crops of ``size`` px; a fraction ``real_fraction`` of them are random
crops of real images -- the real image families of ``tools/families.py`` named by ``--families``
(with the folds they train on), and/or the BF-TEM images listed by index in ``real_train`` --
each family drawn equally often, resampled as the segmenter's scale policy does (``real_crop``)
and jittered x0.7..1.4; the remainder come from the synthetic cache(s) built by
``tools/make_dataset.py``. Augmentation: 8 dihedral transforms, random contrast inversion
(x -> -x, i.e. bright field <-> HAADF), gain/offset jitter, extra Gaussian noise.

Loss: BCE + soft Dice on the particle map; BCE against the soft normalised-distance target
(weighted x3 on particle pixels, and ``contact_weight`` more within two pixels of where two
particles touch: the cache's ``contact`` mask) on the distance map. Pixels of synthetic
particles an observer could not see (the cache's ``invisible`` mask: detectability d' below the
cache's ``--ignore-below``), and the unsure rim of box-labelled particles, get no weight in any term:
a label the image does not support would teach the network to call carbon texture a particle.

Examples::

    python tools/train.py --out runs/base --synthetic cache/train --val cache/val --steps 6000
    python tools/train.py --out runs/fold0 --init runs/base/last.pt --synthetic cache/train \\
        --val cache/val --real-train 10-19 --real-fraction 0.5 --steps 1500 --lr 1e-3
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "tools"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from make_dataset import load_cache, load_real, parse_indices_text, targets  # noqa: E402

from emstream.backends.normalize import local_contrast, normalize_image  # noqa: E402
from emstream.backends.segmenter import SCALE_MAX_D  # noqa: E402
from emstream.backends.unet import build_model, count_parameters  # noqa: E402

DEFAULTS = {
    "arch": "unet-s",
    "width": 16,
    "refine": 4,
    "synthetic": [],
    "val": None,
    "real_train": [],
    "real_fraction": 0.0,
    "size": 256,
    "batch": 8,
    "steps": 6000,
    "lr": 2e-3,
    "weight_decay": 1e-4,
    "warmup": 200,
    "seed": 0,
    "threads": 2,
    "log_every": 50,
    "val_every": 250,
    "ckpt_every": 250,
    "init": None,
    "contact_weight": 0.0,
    "families": [],
    "family_weights": None,  # e.g. "genc=3": how often a family is drawn relative to the others
    # share of crops shown as the segmenter's background-subtracted second look sees a frame:
    # minus its Gaussian blur of flatten_sigma px, normalised again (labels unchanged)
    "flatten_prob": 0.0,
    "flatten_sigma": 4.0,
    # input channels: 1 (the normalised image) or 2 (and its local contrast, Gaussian background
    # of local_contrast_sigma px subtracted, as LearnedSegmenter computes it at run time)
    "inputs": 1,
    "local_contrast_sigma": 4.0,
    # residual DS blocks added at 1/8 and (dilated) at 1/16 resolution; grown from a checkpoint
    # without them they start as identities (``grow``)
    "extra_blocks": 0,
}

#: particle diameters (px) the real crops of large particles are resampled to (log-uniform)
TRAIN_D_RANGE = (20.0, 64.0)


# ----------------------------------------------------------------------------- data
def augment(rng, img, *maps):
    """A random dihedral transform of the image and its maps, then intensity jitter of the image."""
    k = int(rng.integers(4))
    img, *maps = (np.rot90(a, k) for a in (img, *maps))
    if rng.random() < 0.5:
        img, *maps = (a[:, ::-1] for a in (img, *maps))
    img = img.astype(np.float32)
    if rng.random() < 0.5:
        img = -img  # contrast inversion: bright field <-> HAADF
    img = img * rng.uniform(0.8, 1.25) + rng.uniform(-0.2, 0.2)
    if rng.random() < 0.3:
        img = img + rng.normal(0, rng.uniform(0.05, 0.4), img.shape).astype(np.float32)
    return tuple(np.ascontiguousarray(a) for a in (img, *maps))


def channels(img, cfg) -> np.ndarray:
    """The network's input (C x H x W) from a normalised crop, as the segmenter makes it."""
    img = np.asarray(img, np.float32)
    if int(cfg.get("inputs", 1)) == 1:
        return img[None]
    return np.stack([img, local_contrast(img, cfg["local_contrast_sigma"])])


#: the weights that read the input channels (widened by :func:`widen_inputs`)
INPUT_WEIGHTS = ("stem.0.weight", "refine.0.weight")


def widen_inputs(state: dict, model) -> dict:
    """A one-channel checkpoint's weights for a model with more input channels: the new
    channels' weights start at zero, so the widened network computes what the old one did."""
    own = model.state_dict()
    for key in INPUT_WEIGHTS:
        if key in state and state[key].shape != own[key].shape:
            w = torch.zeros_like(own[key])
            w[:, :state[key].shape[1]] = state[key]
            state = {**state, key: w}
    return state


def grow(state: dict, model) -> dict:
    """A smaller checkpoint's weights for a grown model: new input channels' weights at zero
    (:func:`widen_inputs`) and new residual blocks (``--extra-blocks``) as the model made them
    (their last BatchNorm at zero: identity), so the grown network computes what the old one
    did. Any other missing, unexpected or reshaped weight is an error."""
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    missing = sorted(k for k in set(own) - set(state) if not k.startswith(("mid.", "deep.")))
    reshaped = sorted(k for k in set(state) & set(own) if state[k].shape != own[k].shape
                      and not (k in INPUT_WEIGHTS
                               and state[k].shape[0] == own[k].shape[0]
                               and state[k].shape[2:] == own[k].shape[2:]))
    if unexpected or missing or reshaped:
        raise ValueError(f"checkpoint does not fit the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, other shapes {reshaped[:5]}")
    return {**own, **widen_inputs(state, model)}


def real_crop(rng, item, size):
    """A random crop of a real image, resampled as the segmenter's scale policy would plus a
    x0.7..1.4 jitter (the distance target is scale-free): where the image's particles are larger
    than ``SCALE_MAX_D`` px (median) they are brought to a diameter drawn log-uniformly from
    ``TRAIN_D_RANGE``, as ``LearnedSegmenter(scale="auto")`` does at run time."""
    lo, hi = TRAIN_D_RANGE
    base = 1.0
    if item["median_d"] > SCALE_MAX_D:
        base = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) / item["median_d"]
    s = base * float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
    h, w = item["image"].shape
    c = max(8, min(int(round(size / s)), h, w))
    y, x = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
    sl = (slice(y, y + c), slice(x, x + c))
    img = cv2.resize(item["image"][sl], (size, size), interpolation=cv2.INTER_AREA if c > size
                     else cv2.INTER_LINEAR)
    fg = (cv2.resize(item["fg"][sl].astype(np.float32), (size, size)) > 0.5).astype(np.uint8)
    dist = cv2.resize(item["dist"][sl], (size, size), interpolation=cv2.INTER_LINEAR)
    ign = np.zeros_like(fg)
    if item.get("ignore") is not None:
        ign = cv2.resize(item["ignore"][sl], (size, size), interpolation=cv2.INTER_NEAREST)
    return img, fg, dist * fg, ign


def load_families(specs) -> list[dict]:
    """Training items of the real families, ``specs`` like ``["msa:1", "emps:0,1", "genc"]``
    (family, optionally the folds it trains on); each gains ``image`` (normalised), ``fg``,
    ``dist`` (the targets of :func:`make_dataset.targets`)."""
    import families

    out = []
    for spec in specs:
        fam, _, folds = spec.partition(":")
        folds = tuple(int(f) for f in folds.split(",")) if folds else (0, 1)
        for it in families.load(fam, folds):
            it["fg"], it["dist"] = targets(it["labels"])
            it["image"] = normalize_image(it["raw"])
            out.append(it)
    return out


def parse_family_weights(text) -> dict[str, float]:
    """``"genc=3,emps=1.5"`` -> ``{"genc": 3.0, "emps": 1.5}``; families not named weigh 1."""
    out = {}
    for part in (text or "").split(","):
        if part.strip():
            name, _, value = part.partition("=")
            out[name.strip()] = float(value)
    return out


class Batches:
    def __init__(self, cfg, rng):
        self.cfg, self.rng = cfg, rng
        self.synth = None
        if cfg["synthetic"]:
            parts = [load_cache(Path(p)) for p in cfg["synthetic"]]
            for part in parts:  # older caches: every label counts, no contact weight
                part.setdefault("invisible", np.zeros_like(part["fg"]))
                part.setdefault("contact", np.zeros_like(part["fg"]))
            self.synth = {k: np.concatenate([p[k] for p in parts])
                          for k in ("image", "fg", "dist", "invisible", "contact")}
        self.real = load_real(cfg["real_train"]) if cfg["real_train"] else []
        for it in self.real:
            it.update(family="msa", median_d=float(np.median(
                np.sqrt(4 * np.bincount(it["labels"].ravel())[1:] / np.pi))), ignore=None)
        self.real += load_families(cfg.get("families") or [])
        # each family is drawn equally often (or as --family-weights says), whatever its size
        self.by_family: dict[str, list[dict]] = {}
        for it in self.real:
            self.by_family.setdefault(it["family"], []).append(it)
        weights = parse_family_weights(cfg.get("family_weights"))
        w = np.array([weights.get(f, 1.0) for f in self.by_family], dtype=float)
        self.family_p = w / w.sum() if len(w) else w
        if self.synth is None and not self.real:
            raise SystemExit("no training data: give --synthetic and/or --real-train / --families")

    def __call__(self):
        cfg, rng = self.cfg, self.rng
        n, size = cfg["batch"], cfg["size"]
        n_real = int(round(n * cfg["real_fraction"])) if self.real else 0
        if self.synth is None:
            n_real = n
        xs, fs, ds, ws, cs = [], [], [], [], []
        for i in range(n):
            if i < n_real:  # real truth: no contacts known
                fam = list(self.by_family)[int(rng.choice(len(self.by_family), p=self.family_p))]
                pool = self.by_family[fam]
                img, fg, dist, ign = real_crop(rng, pool[int(rng.integers(len(pool)))], size)
                contact = np.zeros_like(fg)
            else:
                j = int(rng.integers(len(self.synth["image"])))
                img, fg, dist, ign, contact = _random_crop(
                    rng, *(self.synth[k][j] for k in ("image", "fg", "dist", "invisible",
                                                      "contact")), size=size)
            if rng.random() < cfg.get("flatten_prob", 0.0):
                img = np.asarray(img, np.float32)
                img = normalize_image(img - cv2.GaussianBlur(img, (0, 0), cfg["flatten_sigma"]))
            img, fg, dist, ign, contact = augment(rng, img, fg, dist, ign, contact)
            xs.append(img)
            fs.append(fg)
            ds.append(dist)
            ws.append(ign)
            cs.append(contact)

        def tensor(arrays, scale=1.0):
            return torch.from_numpy(np.stack(arrays)[:, None].astype(np.float32) * scale)

        x = torch.from_numpy(np.stack([channels(img, cfg) for img in xs]))
        return (x, tensor(fs), tensor(ds, 1 / 255.0), 1.0 - tensor(ws), tensor(cs))


def _random_crop(rng, *arrays, size):
    h, w = arrays[0].shape
    if h == size and w == size:
        return arrays
    y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    sl = (slice(y, y + size), slice(x, x + size))
    return tuple(a[sl] for a in arrays)


# ----------------------------------------------------------------------------- loss
def loss_fn(logits, fg, dist, weight=None, contact=None, contact_weight=0.0):
    """Loss terms; ``weight`` (1 = counts, 0 = ignored pixel) defaults to all ones; pixels where
    ``contact`` is 1 weigh ``contact_weight`` more in the distance term."""
    if weight is None:
        weight = torch.ones_like(fg)
    lf = (F.binary_cross_entropy_with_logits(logits[:, :1], fg, reduction="none") * weight).mean()
    p = torch.sigmoid(logits[:, :1]) * weight
    inter = (p * fg).sum(dim=(1, 2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum(dim=(1, 2, 3)) + (fg * weight).sum(dim=(1, 2, 3)) + 1)
    w = 1 + 2 * fg
    if contact is not None and contact_weight:
        w = w + contact_weight * contact
    w = w * weight
    ld = (F.binary_cross_entropy_with_logits(logits[:, 1:], dist, reduction="none") * w).mean()
    return lf + dice.mean() + ld, {"fg_bce": float(lf.detach()), "dice": float(dice.mean().detach()),
                                   "dist_bce": float(ld.detach())}


def lr_at(step, cfg):
    if step < cfg["warmup"]:
        return cfg["lr"] * (step + 1) / cfg["warmup"]
    t = (step - cfg["warmup"]) / max(1, cfg["steps"] - cfg["warmup"])
    return cfg["lr"] * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


@torch.no_grad()
def validate(model, val, cfg, batch=8):
    model.eval()
    tot, inter, union, n = 0.0, 0.0, 0.0, 0
    for i in range(0, len(val["image"]), batch):
        x = torch.from_numpy(np.stack([channels(img, cfg) for img in val["image"][i:i + batch]]))
        fg = torch.from_numpy(val["fg"][i:i + batch].astype(np.float32))[:, None]
        dist = torch.from_numpy(val["dist"][i:i + batch].astype(np.float32))[:, None] / 255.0
        seen = torch.from_numpy(1 - val["invisible"][i:i + batch].astype(np.float32))[:, None]
        out = model(x)
        loss, _ = loss_fn(out, fg, dist, seen)
        tot += float(loss) * len(x)
        n += len(x)
        pred = (out[:, :1] > 0) & (seen > 0)
        inter += float((pred & (fg > 0.5)).sum())
        union += float((pred | ((fg > 0.5) & (seen > 0))).sum())
    model.train()
    return tot / max(n, 1), inter / max(union, 1)


# ----------------------------------------------------------------------------- main
def save_checkpoint(path: Path, model, opt, step, cfg, rng):
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                "config": json.dumps(cfg), "np_rng": json.dumps(rng.bit_generator.state),
                "torch_rng": torch.get_rng_state()}, tmp)
    tmp.replace(path)


def train(cfg: dict, out: Path, resume: bool = False, overrides: dict | None = None) -> Path:
    """Run (or, with ``resume``, continue) training; returns the path of ``last.pt``.

    On resume the saved configuration wins except for the keys in ``overrides`` (e.g. a longer
    ``steps``)."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "last.pt"
    ck = None
    if resume and ckpt_path.exists():
        # the saved configuration decides the architecture: read it before building the model
        ck = torch.load(ckpt_path, weights_only=True)
        cfg = {**json.loads(ck["config"]), **(overrides or {})}
        cfg["resumes"] = [*cfg.get("resumes", []), {"step": int(ck["step"]), **(overrides or {})}]
    torch.set_num_threads(int(cfg["threads"]))
    torch.manual_seed(cfg["seed"])
    rng = np.random.default_rng(cfg["seed"])
    model = build_model(cfg["arch"], width=cfg["width"], refine=cfg["refine"],
                        inputs=int(cfg.get("inputs", 1)), extra=int(cfg.get("extra_blocks", 0)))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    start = 0
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        start = int(ck["step"])
        rng.bit_generator.state = json.loads(ck["np_rng"])
        torch.set_rng_state(ck["torch_rng"])
        print(f"resumed from {ckpt_path} at step {start}", flush=True)
    elif cfg.get("init"):
        ck = torch.load(cfg["init"], weights_only=True)
        model.load_state_dict(grow(ck["model"] if "model" in ck else ck, model))
        print(f"initialised from {cfg['init']}", flush=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    print(f"{cfg['arch']} width {cfg['width']}: {count_parameters(model)} parameters", flush=True)

    batches = Batches(cfg, rng)
    val = None
    if cfg.get("val"):
        v = load_cache(Path(cfg["val"]))
        v.setdefault("invisible", np.zeros_like(v["fg"]))
        val = {k: v[k][:64] for k in ("image", "fg", "dist", "invisible")}
    log_path = out / "log.csv"
    fields = ["step", "lr", "loss", "fg_bce", "dice", "dist_bce", "val_loss", "val_iou", "seconds"]
    if not (resume and log_path.exists()):
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerow(fields)
    model.train()
    t0 = time.time()
    acc: dict[str, float] = {}
    n_acc = 0
    bar = tqdm(range(start, cfg["steps"]), initial=start, total=cfg["steps"], mininterval=30,
               desc=out.name)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        x, fg, dist, weight, contact = batches()
        logits = model(x)
        loss, parts = loss_fn(logits, fg, dist, weight, contact, cfg["contact_weight"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        parts["loss"] = float(loss.detach())
        for k, v in parts.items():
            acc[k] = acc.get(k, 0.0) + v
        n_acc += 1
        done = step + 1
        row = None
        if done % cfg["log_every"] == 0 or done == cfg["steps"]:
            row = {k: round(v / n_acc, 5) for k, v in acc.items()}
            acc, n_acc = {}, 0
            row.update(step=done, lr=round(opt.param_groups[0]["lr"], 6),
                       seconds=round(time.time() - t0, 1), val_loss="", val_iou="")
            if val is not None and (done % cfg["val_every"] == 0 or done == cfg["steps"]):
                vl, vi = validate(model, val, cfg)
                row.update(val_loss=round(vl, 5), val_iou=round(vi, 4))
            with open(log_path, "a", newline="") as f:
                csv.writer(f).writerow([row.get(k, "") for k in fields])
            bar.set_postfix(loss=row["loss"], val_iou=row["val_iou"])
            print(json.dumps(row), flush=True)
        if done % cfg["ckpt_every"] == 0 or done == cfg["steps"]:
            save_checkpoint(ckpt_path, model, opt, done, cfg, rng)
    return ckpt_path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="run directory")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    ap.add_argument("--synthetic", nargs="*", default=None, help="cache dirs (make_dataset.py)")
    ap.add_argument("--real-train", default=None, help='real image indices, e.g. "10-19"')
    ap.add_argument("--families", nargs="*", default=None,
                    help='real families (tools/families.py) and folds, e.g. "msa:1 emps:1 genc:1"')
    for k, v in DEFAULTS.items():
        if k in ("synthetic", "real_train", "families"):
            continue
        typ = type(v) if v is not None else str
        ap.add_argument("--" + k.replace("_", "-"), type=typ, default=None)
    a = ap.parse_args(argv)
    cfg = dict(DEFAULTS)
    given = {}
    for k in DEFAULTS:
        v = getattr(a, k, None)
        if v is not None and k not in ("synthetic", "real_train", "families"):
            cfg[k] = given[k] = v
    if a.real_train is not None:
        cfg["real_train"] = given["real_train"] = parse_indices_text(a.real_train)
    if a.families is not None:
        cfg["families"] = given["families"] = list(a.families)
    if a.synthetic is not None:
        cfg["synthetic"] = given["synthetic"] = [str(p) for p in a.synthetic]
    path = train(cfg, a.out, resume=a.resume, overrides=given)
    print(f"checkpoint: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
