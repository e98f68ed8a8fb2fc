"""Speed of the corruption suite on real CIFAR-10 test images.

pytest-benchmark (one round per corruption at severity 3, 256 images)::

    python -m pytest benchmarks/bench_corruptions.py --benchmark-only

Whole-suite table (every corruption x severity on the first N test images; markdown)::

    python benchmarks/bench_corruptions.py --n 10000

Side figures (generator creation, cache hit vs miss, ``iter_suite`` with 1 and 2 workers)::

    python benchmarks/bench_corruptions.py --side
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from prunecal.corruptions import BENCHMARK, EXTRA, available, corrupt

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402  (the shared data folder)



def _data_dir() -> Path | None:
    for cand in peers.shared_data_dirs():
        if (cand / "cifar10" / "test.npz").is_file():
            return cand
    return None


def load_images(n: int) -> np.ndarray:
    """The first ``n`` CIFAR-10 test images (``test.npz``, key ``x``), uint8 NHWC."""
    d = _data_dir()
    if d is None:
        raise FileNotFoundError("cifar10/test.npz not found under ../shared/data (set PRUNECAL_SHARED_DATA)")
    with np.load(d / "cifar10" / "test.npz") as z:
        return np.ascontiguousarray(z["x"][:n])


# ------------------------------------------------------------------ pytest-benchmark
try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="module")
    def images256() -> np.ndarray:
        if _data_dir() is None:
            pytest.skip("no CIFAR-10 test.npz")
        return load_images(256)

    @pytest.mark.parametrize("name", available())
    def test_corrupt_256(benchmark, images256, name):
        benchmark.group = "corrupt 256 images, severity 3"
        out = benchmark.pedantic(corrupt, args=(images256, name, 3), rounds=3, iterations=1, warmup_rounds=1)
        assert out.shape == images256.shape


    # --- vectorised vs the reference's per-image formulation (same outputs, see tests) ---

    def _glass_reference_loop(images, sev=5):
        """make_cifar_c.py's glass blur, one image at a time, its Python pixel loop."""
        from skimage.filters import gaussian

        from prunecal.corruptions._rng import image_rng
        from prunecal.corruptions.params import PARAMS

        sigma, delta, iters = PARAMS["glass_blur"][sev - 1]
        out = []
        for i, img in enumerate(images):
            g = image_rng(0, "glass_blur", sev, i)
            pos = [(h, w) for h in range(32 - delta, delta, -1) for w in range(32 - delta, delta, -1)]
            draws = g.integers(-delta, delta, size=(iters, len(pos), 2))
            x = np.uint8(gaussian(img / 255.0, sigma=sigma, channel_axis=-1) * 255)
            for it in range(iters):
                for p, (h, w) in enumerate(pos):
                    dx, dy = draws[it, p]
                    x[h, w], x[h + dy, w + dx] = x[h + dy, w + dx], x[h, w]
            out.append(np.uint8(np.clip(gaussian(x / 255.0, sigma=sigma, channel_axis=-1), 0, 1) * 255))
        return np.stack(out)

    def _hsv_skimage(images, sev=5):
        from skimage.color import hsv2rgb, rgb2hsv

        h = rgb2hsv(images / 255.0)
        h[..., 2] = np.clip(h[..., 2] + 0.3, 0, 1)
        return np.uint8(np.clip(hsv2rgb(h), 0, 1) * 255)

    def test_glass_blur_reference_loop_64(benchmark, images256):
        benchmark.group = "glass_blur severity 5, 64 images"
        ref = benchmark.pedantic(_glass_reference_loop, args=(images256[:64],), rounds=1, iterations=1)
        np.testing.assert_array_equal(ref, corrupt(images256[:64], "glass_blur", 5))

    def test_glass_blur_ours_64(benchmark, images256):
        benchmark.group = "glass_blur severity 5, 64 images"
        benchmark.pedantic(corrupt, args=(images256[:64], "glass_blur", 5), rounds=5, iterations=1)

    def test_brightness_skimage_hsv_256(benchmark, images256):
        benchmark.group = "brightness severity 5, 256 images"
        ref = benchmark.pedantic(_hsv_skimage, args=(images256,), rounds=5, iterations=1)
        np.testing.assert_array_equal(ref, corrupt(images256, "brightness", 5))

    def test_brightness_ours_256(benchmark, images256):
        benchmark.group = "brightness severity 5, 256 images"
        benchmark.pedantic(corrupt, args=(images256, "brightness", 5), rounds=5, iterations=1)


# ------------------------------------------------------------------ table
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="images per corruption and severity (default 1000)")
    ap.add_argument("--names", nargs="*", default=None, help="corruptions (default: all 19)")
    ap.add_argument("--side", action="store_true", help="side figures instead of the table")
    args = ap.parse_args(argv)
    if args.side:
        return side_figures()
    x = load_images(args.n)
    n = x.shape[0]
    names = args.names or available()
    corrupt(x[:8], "frost", 1)  # build the frost textures outside the timings
    print(f"<!-- {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, numpy {np.__version__}, n={n}, "
          f"load average at start {os.getloadavg()[0]:.1f} -->")
    print("| corruption | s1 | s2 | s3 | s4 | s5 | all 5 (s) | ms / 1k images / severity |")
    print("|---|---|---|---|---|---|---|---|")
    grand = 0.0
    for name in names:
        ts = []
        for sev in range(1, 6):
            t0 = time.perf_counter()
            corrupt(x, name, sev)
            ts.append(time.perf_counter() - t0)
        grand += sum(ts)
        tag = "" if name in BENCHMARK else " (extra)" if name in EXTRA else ""
        print(f"| {name}{tag} | " + " | ".join(f"{t:.2f}" for t in ts)
              + f" | {sum(ts):.1f} | {1000 * sum(ts) / 5 / n * 1000:.0f} |", flush=True)
    print(f"| **total** ({len(names)} x 5 severities, {n} images each) | | | | | | **{grand:.0f}** | |")
    print(f"<!-- load average at end {os.getloadavg()[0]:.1f} -->")
    return 0


def side_figures() -> int:
    """Per-image generator cost, cache hit vs miss (10,000 images), iter_suite workers 1 vs 2."""
    import tempfile

    from prunecal.corruptions import CorruptionCache, iter_suite
    from prunecal.corruptions._rng import image_rngs

    print(f"load average at start {os.getloadavg()[0]:.1f}")
    x = load_images(10000)
    t0 = time.perf_counter()
    image_rngs(0, "fog", 3, 0, 10000)
    print(f"image_rngs for 10000 images: {time.perf_counter() - t0:.2f} s")
    with tempfile.TemporaryDirectory() as d:
        c = CorruptionCache(d)
        t0 = time.perf_counter()
        c.get(x, "contrast", 3)
        print(f"cache miss (contrast s3, 10000 images): {time.perf_counter() - t0:.2f} s")
        hits = []
        for _ in range(3):
            t0 = time.perf_counter()
            c.get(x, "contrast", 3)
            hits.append(time.perf_counter() - t0)
        print(f"cache hit x3: {', '.join(f'{h:.3f}' for h in hits)} s")
    names = ["fog", "zoom_blur", "brightness", "elastic_transform"]
    for w in (1, 2):
        t0 = time.perf_counter()
        for _ in iter_suite(x[:2000], names, workers=w):
            pass
        print(f"iter_suite 2000 images x {names} x 5 severities, workers={w}: {time.perf_counter() - t0:.1f} s")
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
