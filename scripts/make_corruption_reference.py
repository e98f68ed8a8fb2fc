#!/usr/bin/env python3
"""Reference data for prunecal's CIFAR-10-C corruptions, from an independent implementation
of the published generator (Hendrycks & Dietterich, ``hendrycks/robustness``,
``ImageNet-C/create_c/make_cifar_c.py``).

Two sub-commands:

``textures``: write the shipped frost textures (``prunecal/corruptions/frost/frost1..6.png``)
from the six published pictures, exactly as the CIFAR generator prepares them
(``cv2.imread``, ``cv2.resize(fx=0.2, fy=0.2)``, BGR -> RGB), stored as lossless PNG.

``summary``: the markdown table of ``docs/corruptions.md`` from a measured table.

``accuracy``: accuracy of the shipped ResNet-20 on the first ``--n`` shipped original-pixel
CIFAR-10 test images (``prunecal/assets/cifar10_test500.npz``), corrupted by this script's
own implementation of every published corruption (19) at every severity, ``--repeats``
times with different random draws (numpy ``RandomState(seed)`` per corruption, severity and
repeat, consumed image after image as the published script consumes the global stream);
writes a JSON table (mean, standard deviation and every run per cell) that
``tests/test_corruption_fidelity.py`` reads. With ``--prunecal-repeats K`` it also measures
``prunecal.corruptions.corrupt`` with seeds 0..K-1 (for ``docs/corruptions.md``).
Nothing of ``prunecal.corruptions`` is used for the reference images: corruption code here
follows the published definitions with the libraries the authors used (scikit-image, SciPy,
OpenCV, Pillow, ImageMagick through Wand).

Needs ImageMagick and Wand (``apt-get install imagemagick libmagickwand-dev``,
``pip install Wand``) and the published frost pictures, e.g. from the ``imagecorruptions``
wheel (Apache-2.0)::

    pip download --no-deps imagecorruptions==1.1.2 -d /tmp/ic
    python -m zipfile -e /tmp/ic/imagecorruptions-1.1.2-py3-none-any.whl /tmp/ic/x
    python scripts/make_corruption_reference.py textures --frost-dir /tmp/ic/x/imagecorruptions/frost
    nice -n 5 python scripts/make_corruption_reference.py accuracy \\
        --frost-dir /tmp/ic/x/imagecorruptions/frost --n 300 --repeats 6 --prunecal-repeats 3 \\
        --out tests/data/corruption_reference.json

How the committed table was made: see its ``meta`` entry (library versions, command, time).
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import io
import json
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import scipy
import scipy.ndimage as ndi
import skimage
import skimage.color
import skimage.filters
import skimage.util
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FROST_ORIGINALS = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")
NAMES = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
         "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
         "jpeg_compression", "speckle_noise", "gaussian_blur", "spatter", "saturate")
DETERMINISTIC = {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression",
                 "gaussian_blur", "saturate"}


# ----------------------------------------------------------------------------- textures

def scaled_frost(frost_dir: Path) -> list[np.ndarray]:
    """The six published pictures as the CIFAR generator uses them: uint8 RGB, scaled by 0.2."""
    out = []
    for name in FROST_ORIGINALS:
        bgr = cv2.imread(str(frost_dir / name))
        if bgr is None:
            raise SystemExit(f"cannot read {frost_dir / name}")
        out.append(np.ascontiguousarray(cv2.resize(bgr, (0, 0), fx=0.2, fy=0.2)[..., ::-1]))
    return out


def cmd_textures(a: argparse.Namespace) -> None:
    dest = ROOT / "prunecal" / "corruptions" / "frost"
    dest.mkdir(parents=True, exist_ok=True)
    for k, img in enumerate(scaled_frost(a.frost_dir), 1):
        Image.fromarray(img).save(dest / f"frost{k}.png", optimize=True)
        print(f"frost{k}.png", img.shape)


# ----------------------------------------------------------------------------- the published corruptions
# Each takes a uint8 (32, 32, 3) RGB image, the severity and a RandomState, returns uint8.

class Published:
    def __init__(self, frost_dir: Path) -> None:
        from wand.api import library
        from wand.image import Image as WandImage

        library.MagickMotionBlurImage.argtypes = (ctypes.c_void_p, ctypes.c_double, ctypes.c_double, ctypes.c_double)
        self._lib, self._wand = library, WandImage
        self.frost_tex = scaled_frost(frost_dir)

    @staticmethod
    def _u8(x: np.ndarray) -> np.ndarray:  # np.uint8(np.clip(x, 0, 1) * 255)
        return np.uint8(np.clip(x, 0, 1) * 255)

    def _motion(self, png: bytes, radius: float, sigma: float, angle: float) -> np.ndarray:
        with self._wand(blob=png) as w:
            self._lib.MagickMotionBlurImage(w.wand, radius, sigma, angle)
            return cv2.imdecode(np.frombuffer(w.make_blob(), np.uint8), cv2.IMREAD_UNCHANGED)

    @staticmethod
    def _png(img: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        return buf.getvalue()

    def gaussian_noise(self, x, s, rs):
        c = [0.04, 0.06, .08, .09, .10][s - 1]
        return self._u8(x / 255. + rs.normal(size=x.shape, scale=c))

    def shot_noise(self, x, s, rs):
        c = [500, 250, 100, 75, 50][s - 1]
        return self._u8(rs.poisson(x / 255. * c) / c)

    def impulse_noise(self, x, s, rs):
        c = [.01, .02, .03, .05, .07][s - 1]
        return self._u8(skimage.util.random_noise(x / 255., mode="s&p", amount=c, rng=int(rs.randint(2 ** 31))))

    def speckle_noise(self, x, s, rs):
        c = [.06, .1, .12, .16, .2][s - 1]
        f = x / 255.
        return self._u8(f + f * rs.normal(size=x.shape, scale=c))

    def gaussian_blur(self, x, s, rs):
        c = [.4, .6, 0.7, .8, 1][s - 1]
        return self._u8(skimage.filters.gaussian(x / 255., sigma=c, channel_axis=-1))

    def glass_blur(self, x, s, rs):
        sigma, delta, iters = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)][s - 1]
        img = np.uint8(skimage.filters.gaussian(x / 255., sigma=sigma, channel_axis=-1) * 255)
        for _ in range(iters):
            for h in range(32 - delta, delta, -1):
                for w in range(32 - delta, delta, -1):
                    dx, dy = rs.randint(-delta, delta, size=(2,))
                    hp, wp = h + dy, w + dx
                    img[h, w], img[hp, wp] = img[hp, wp], img[h, w]  # views: a copy, as published
        return self._u8(skimage.filters.gaussian(img / 255., sigma=sigma, channel_axis=-1))

    def defocus_blur(self, x, s, rs):
        r, alias = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][s - 1]
        grid = np.arange(-8, 9)
        xx, yy = np.meshgrid(grid, grid)
        d = np.array((xx ** 2 + yy ** 2) <= r ** 2, dtype=np.float32)
        k = cv2.GaussianBlur(d / d.sum(), ksize=(3, 3), sigmaX=alias)
        f = x / 255.
        return self._u8(np.stack([cv2.filter2D(f[..., ch], -1, k) for ch in range(3)], axis=-1))

    def motion_blur(self, x, s, rs):
        r, sig = [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)][s - 1]
        out = self._motion(self._png(x), r, sig, rs.uniform(-45, 45))
        return out[..., ::-1] if out.ndim == 3 else np.repeat(out[..., None], 3, axis=-1)

    @staticmethod
    def _clipped_zoom(img, f):
        ch = int(np.ceil(img.shape[0] / f))
        top = (img.shape[0] - ch) // 2
        z = ndi.zoom(img[top:top + ch, top:top + ch], (f, f, 1), order=1)
        t = (z.shape[0] - img.shape[0]) // 2
        return z[t:t + img.shape[0], t:t + img.shape[0]]

    def zoom_blur(self, x, s, rs):
        stop = [1.06, 1.11, 1.16, 1.21, 1.26][s - 1]
        facs = np.arange(1, stop, 0.01)
        f = (x / 255.).astype(np.float32)
        acc = np.zeros_like(f)
        for z in facs:
            acc += self._clipped_zoom(f, z)
        return self._u8((f + acc) / (len(facs) + 1))

    def snow(self, x, s, rs):
        loc, scale, zf, thr, r, sig, blend = [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
                                              (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
                                              (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)][s - 1]
        f = np.array(x, dtype=np.float32) / 255.
        layer = rs.normal(size=(32, 32), loc=loc, scale=scale)
        layer = self._clipped_zoom(layer[..., None], zf)
        layer[layer < thr] = 0
        png = self._png((np.clip(layer[..., 0], 0, 1) * 255).astype(np.uint8))
        layer = (self._motion(png, r, sig, rs.uniform(-135, -45)) / 255.)[..., None]
        grey = cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).reshape(32, 32, 1)
        f = blend * f + (1 - blend) * np.maximum(f, grey * 1.5 + 0.5)
        return self._u8(f + layer + np.rot90(layer, k=2))

    def frost(self, x, s, rs):
        a, b = [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)][s - 1]
        tex = self.frost_tex[rs.randint(5)]
        r0, c0 = rs.randint(0, tex.shape[0] - 32), rs.randint(0, tex.shape[1] - 32)
        return np.uint8(np.clip(a * np.array(x) + b * tex[r0:r0 + 32, c0:c0 + 32], 0, 255))

    @staticmethod
    def _plasma(rs, decay, size=32):
        m = np.empty((size, size))
        m[0, 0] = 0
        step, wib = size, 100.0
        while step >= 2:
            half = step // 2
            c = m[0:size:step, 0:size:step]
            sq = c + np.roll(c, -1, axis=0)
            sq = sq + np.roll(sq, -1, axis=1)
            m[half:size:step, half:size:step] = sq / 4 + wib * rs.uniform(-wib, wib, sq.shape)
            dr = m[half:size:step, half:size:step]
            ul = m[0:size:step, 0:size:step]
            lt = dr + np.roll(dr, 1, axis=0) + ul + np.roll(ul, -1, axis=1)
            m[0:size:step, half:size:step] = lt / 4 + wib * rs.uniform(-wib, wib, lt.shape)
            tt = dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=0)
            m[half:size:step, 0:size:step] = tt / 4 + wib * rs.uniform(-wib, wib, tt.shape)
            step //= 2
            wib /= decay
        m -= m.min()
        return m / m.max()

    def fog(self, x, s, rs):
        c, decay = [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)][s - 1]
        f = x / 255.
        mx = f.max()
        f = f + c * self._plasma(rs, decay)[:32, :32, None]
        return self._u8(f * mx / (mx + c))

    def spatter(self, x, s, rs):
        loc, scale, sigma, thr, inten, mode = [(0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0),
                                               (0.65, 0.3, 1, 0.69, 0.5, 0), (0.65, 0.1, 0.7, 0.69, 0.6, 1),
                                               (0.65, 0.1, 0.5, 0.68, 0.6, 1)][s - 1]
        f = np.array(x, dtype=np.float32) / 255.
        liquid = skimage.filters.gaussian(rs.normal(size=(32, 32), loc=loc, scale=scale), sigma=sigma)
        liquid[liquid < thr] = 0
        if mode == 0:
            l8 = (liquid * 255).astype(np.uint8)
            dist = cv2.distanceTransform(255 - cv2.Canny(l8, 50, 150), cv2.DIST_L2, 5)
            _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
            dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
            dist = cv2.filter2D(dist, cv2.CV_8U, np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]))
            dist = cv2.blur(dist, (3, 3)).astype(np.float32)
            m = l8 * dist
            mx = m.max()
            if mx == 0:  # no drops: the published code divides by zero here; keep the image
                return np.array(x)
            m = (m / mx * inten)[..., None]
            return self._u8(f + m * np.array([175, 238, 238]) / 255.)
        m = skimage.filters.gaussian(np.where(liquid > thr, 1, 0).astype(np.float32), sigma=inten)
        m[m < 0.8] = 0
        m = m[..., None]
        f *= (1 - m)  # in place: stays float32, as published
        return self._u8(f + np.array([63, 42, 20]) / 255. * m)

    def contrast(self, x, s, rs):
        c = [.75, .5, .4, .3, 0.15][s - 1]
        f = x / 255.
        mean = f.mean(axis=(0, 1), keepdims=True)
        return self._u8((f - mean) * c + mean)

    def _hsv(self, x, ch, fn):
        h = skimage.color.rgb2hsv(x / 255.)
        h[..., ch] = np.clip(fn(h[..., ch]), 0, 1)
        return self._u8(skimage.color.hsv2rgb(h))

    def brightness(self, x, s, rs):
        c = [.05, .1, .15, .2, .3][s - 1]
        return self._hsv(x, 2, lambda v: v + c)

    def saturate(self, x, s, rs):
        a, b = [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)][s - 1]
        return self._hsv(x, 1, lambda v: v * a + b)

    def jpeg_compression(self, x, s, rs):
        buf = io.BytesIO()
        Image.fromarray(x).save(buf, "JPEG", quality=[80, 65, 58, 50, 40][s - 1])
        return np.asarray(Image.open(buf))

    def pixelate(self, x, s, rs):
        c = [0.95, 0.9, 0.85, 0.75, 0.65][s - 1]
        p = Image.fromarray(x).resize((int(32 * c), int(32 * c)), Image.Resampling.BOX)
        return np.asarray(p.resize((32, 32), Image.Resampling.BOX))

    def elastic_transform(self, x, s, rs):
        alpha, sigma, jit = [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                             (0.1, 0.03, 0.03)][s - 1]
        alpha, sigma, jit = 32 * alpha, 32 * sigma, 32 * jit
        img = np.array(x, dtype=np.float32) / 255.
        centre = np.float32((32, 32)) // 2
        sq = 32 // 3
        p1 = np.float32([centre + sq, [centre[0] + sq, centre[1] - sq], centre - sq])
        p2 = p1 + rs.uniform(-jit, jit, size=p1.shape).astype(np.float32)
        img = cv2.warpAffine(img, cv2.getAffineTransform(p1, p2), (32, 32), borderMode=cv2.BORDER_REFLECT_101)
        dx = (skimage.filters.gaussian(rs.uniform(-1, 1, size=(32, 32)), sigma, mode="reflect", truncate=3)
              * alpha).astype(np.float32)[..., None]
        dy = (skimage.filters.gaussian(rs.uniform(-1, 1, size=(32, 32)), sigma, mode="reflect", truncate=3)
              * alpha).astype(np.float32)[..., None]
        xx, yy, zz = np.meshgrid(np.arange(32), np.arange(32), np.arange(3))
        idx = np.reshape(yy + dy, (-1, 1)), np.reshape(xx + dx, (-1, 1)), np.reshape(zz, (-1, 1))
        return self._u8(ndi.map_coordinates(img, idx, order=1, mode="reflect").reshape(32, 32, 3))


# ----------------------------------------------------------------------------- accuracy

def _correct(net, spec, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """bool (N,): whether the network classifies each image correctly."""
    import torch

    from prunecal.data import to_tensor

    with torch.no_grad():
        pred = net(to_tensor(x, spec.mean, spec.std)).argmax(1).numpy()
    return pred == y


def _bits(ok: np.ndarray) -> str:
    """Per-image correctness as hex of ``np.packbits`` (big-endian bit order)."""
    return np.packbits(ok).tobytes().hex()


def _seed(repeat: int, name: str, sev: int) -> int:
    return (1_000_003 * (repeat + 1) + 1009 * NAMES.index(name) + sev) % (2 ** 32)


def cmd_accuracy(a: argparse.Namespace) -> None:
    import torch

    from prunecal import models

    torch.set_num_threads(a.threads)
    pub = Published(a.frost_dir)
    z = np.load(ROOT / "prunecal" / "assets" / "cifar10_test500.npz")
    x, y = z["x_test"][:a.n], z["y_test"][:a.n]
    net = models.create("resnet20", weights=str(ROOT / "prunecal" / "assets" / "resnet20-12fca82f.th"))
    spec = models.spec("resnet20")
    names = a.names or list(NAMES)
    from wand.version import MAGICK_VERSION

    meta = {
        "what": "whether ResNet-20 (prunecal/assets/resnet20-12fca82f.th) classifies each of the first n images of "
                "prunecal/assets/cifar10_test500.npz correctly (hex of numpy.packbits of the bool vector), clean "
                "and corrupted by scripts/make_corruption_reference.py (independent implementation of "
                "hendrycks/robustness make_cifar_c.py): reference[name][severity - 1][repeat]; repeats use "
                "different random draws (deterministic corruptions: one); prunecal[name][severity - 1][seed]: "
                "the same for prunecal.corruptions.corrupt(x, name, severity, seed)",
        "n_images": int(a.n), "repeats": int(a.repeats), "prunecal_repeats": int(a.prunecal_repeats),
        "seeds": "RandomState((1000003 * (repeat + 1) + 1009 * corruption_index + severity) % 2**32), "
                 "corruption_index in the published order",
        "command": "python " + " ".join(sys.argv),
        "versions": {"imagemagick": MAGICK_VERSION, "numpy": np.__version__, "scipy": scipy.__version__,
                     "scikit-image": skimage.__version__, "opencv": cv2.__version__,
                     "pillow": Image.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "frost_textures": "the six pictures of the imagecorruptions 1.1.2 wheel (= hendrycks/robustness), "
                          "cv2.imread + cv2.resize(fx=0.2, fy=0.2)",
    }
    table: dict = {"meta": meta, "clean": _bits(_correct(net, spec, x, y)), "reference": {}, "prunecal": {}}
    if a.resume and a.out.is_file():  # keep the corruptions already measured with the same settings
        old = json.loads(a.out.read_text())
        same = all(old["meta"].get(k) == meta[k] for k in ("n_images", "repeats", "prunecal_repeats"))
        if same:
            table["reference"], table["prunecal"] = old["reference"], old.get("prunecal", {})
    t0 = time.time()
    for name in names:
        if name in table["reference"]:
            continue
        reps = 1 if name in DETERMINISTIC else a.repeats
        preps = 1 if name in DETERMINISTIC else a.prunecal_repeats
        fn = getattr(pub, name)
        runs: list[list[str]] = [[] for _ in range(5)]
        mine: list[list[str]] = [[] for _ in range(5)]
        acc = np.zeros((5, reps))
        acc_mine = np.zeros((5, max(preps, 1)))
        for sev in range(1, 6):
            for r in range(reps):
                rs = np.random.RandomState(_seed(r, name, sev))
                ok = _correct(net, spec, np.stack([fn(img, sev, rs) for img in x]), y)
                runs[sev - 1].append(_bits(ok))
                acc[sev - 1, r] = ok.mean()
            for r in range(preps):
                from prunecal.corruptions import corrupt

                ok = _correct(net, spec, corrupt(x, name, sev, seed=r), y)
                mine[sev - 1].append(_bits(ok))
                acc_mine[sev - 1, r] = ok.mean()
        table["reference"][name] = runs
        if preps:
            table["prunecal"][name] = mine
        meta["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        a.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(table, indent=1) + "\n")
        tmp.replace(a.out)  # after every corruption: an interrupted run resumes with --resume
        print(f"{name:18s} ref {np.round(100 * acc.mean(1), 1)}"
              + (f"  prunecal {np.round(100 * acc_mine.mean(1), 1)}" if preps else "")
              + f"  ({time.time() - t0:.0f} s)", flush=True)
    print(f"wrote {a.out} after {time.time() - t0:.0f} s")


def _acc_runs(runs: list[str], n: int) -> np.ndarray:
    """(R, n) bool correctness of each run on the first n images."""
    return np.stack([np.unpackbits(np.frombuffer(bytes.fromhex(h), np.uint8))[:n].astype(bool) for h in runs])


def cmd_summary(a: argparse.Namespace) -> None:
    """Markdown table: reference vs prunecal accuracy per corruption and severity (for the docs)."""
    t = json.loads(a.table.read_text())
    n = t["meta"]["n_images"]
    clean = _acc_runs([t["clean"]], n).mean()
    print(f"clean accuracy {100 * clean:.1f} % on {n} images\n")
    print("| corruption | reference, severity 1-5 | prunecal, severity 1-5 | prunecal - reference (mean of 5) | z |")
    print("|---|---|---|---|---|")
    for name in NAMES:
        if name not in t["reference"] or name not in t.get("prunecal", {}):
            continue
        ref, mine, diffs, var = [], [], [], 0.0
        for sev in range(5):
            r = _acc_runs(t["reference"][name][sev], n).astype(float)
            m = _acc_runs(t["prunecal"][name][sev], n).astype(float)
            ref.append(100 * r.mean())
            mine.append(100 * m.mean())
            diffs.append(100 * (m.mean() - r.mean()))
            if r.shape[0] > 1:  # one run's variance from the draws, pooled per image
                v = (r.mean(0) * (1 - r.mean(0))).sum() / n ** 2 * r.shape[0] / (r.shape[0] - 1)
                var += 1e4 * v * (1 / r.shape[0] + 1 / m.shape[0])
        d = float(np.mean(diffs))
        se = np.sqrt(var) / 5
        z = f"{d / se:+.1f}" if se > 0 else ("0 (identical)" if max(map(abs, diffs)) == 0 else "deterministic")
        print(f"| {name} | {' / '.join(f'{v:.1f}' for v in ref)} | {' / '.join(f'{v:.1f}' for v in mine)} | "
              f"{d:+.2f}" + (f" ± {se:.2f}" if se > 0 else "") + f" | {z} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("textures", help="write prunecal/corruptions/frost/*.png")
    t.add_argument("--frost-dir", type=Path, required=True, help="folder with frost1.png .. frost6.jpg")
    r = sub.add_parser("accuracy", help="measure the reference accuracy table")
    r.add_argument("--frost-dir", type=Path, required=True)
    r.add_argument("--n", type=int, default=300, help="first N shipped test images")
    r.add_argument("--repeats", type=int, default=6, help="random draws per stochastic cell")
    r.add_argument("--names", nargs="+", default=None, choices=NAMES)
    r.add_argument("--prunecal-repeats", type=int, default=0,
                   help="also measure prunecal.corruptions.corrupt with seeds 0..K-1 (for docs/corruptions.md)")
    r.add_argument("--resume", action="store_true", help="keep corruptions already in --out (same settings)")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "corruption_reference.json")
    m = sub.add_parser("summary", help="markdown table of a measured table (reference vs prunecal)")
    m.add_argument("table", type=Path, nargs="?", default=ROOT / "tests" / "data" / "corruption_reference.json")
    a = ap.parse_args(argv)
    {"textures": cmd_textures, "accuracy": cmd_accuracy, "summary": cmd_summary}[a.cmd](a)


if __name__ == "__main__":
    main()
