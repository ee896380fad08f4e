"""Data pipeline benchmark: cold (decode NIfTI + preprocess + write cache) vs cached loads.

    python benchmarks/data.py [--spec phantom:cardiac] [--image-size 128] [--batch-size 64] [--out FILE]

Measures, on a fresh cache folder:
  decode     decoding every NIfTI volume of the spec (nibabel), nothing else
  cold       building the slice cache: decode + normalise + resize + write memory maps
  cached     opening the finished cache in a new SliceCache and reading every slice as
             stored (float16), then, separately, converting all of them to float32
  loader     a shuffled DataLoader over the cached slices (batch_size, 0 workers): what
             training does, float32 tensors included
and reports seconds, slices/s, the cold/cached ratio and the peak memory of the process.
Numbers come from this run only; docs/data.md quotes one run on the development machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="phantom:cardiac")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    from medssl_utils.data import SliceCache, SliceDataset, load_dataset, slice_cache

    results: dict = {"spec": args.spec, "image_size": args.image_size, "machine": platform.machine(),
                     "cpus": os.cpu_count(), "torch": torch.__version__}
    t0 = time.perf_counter()
    vs = load_dataset(args.spec)  # phantoms are generated here on first use (timed separately)
    results["list_or_generate_s"] = round(time.perf_counter() - t0, 2)
    n_slices = sum(v.shape[2] for v in vs.volumes)
    results.update(volumes=len(vs.volumes), slices=n_slices)
    print(f"{args.spec}: {len(vs.volumes)} volumes, {n_slices} slices "
          f"(listing/generation {results['list_or_generate_s']} s)")

    t0 = time.perf_counter()
    for v in vs.volumes:
        v.load()
    decode = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        from medssl_utils.data.nifti import _read_cached

        _read_cached.cache_clear()
        t0 = time.perf_counter()
        cache = slice_cache(vs, image_size=args.image_size, cache_dir=Path(tmp))
        cold = time.perf_counter() - t0
        rss_after_build = peak_rss_mib()

        t0 = time.perf_counter()
        again = SliceCache(cache.path)
        images = np.array(again.images[:])  # as stored (float16)
        labels = np.array(again.labels[:])
        cached = time.perf_counter() - t0
        assert images.shape[0] == n_slices and labels.shape[0] == n_slices
        t0 = time.perf_counter()
        images32 = images.astype(np.float32)
        to_f32 = time.perf_counter() - t0
        del images, labels, images32

        ds = SliceDataset(again, with_labels=False)
        loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
        t0 = time.perf_counter()
        seen = sum(b["image"].shape[0] for b in loader)
        loader_s = time.perf_counter() - t0
        size_mb = sum(f.stat().st_size for f in cache.path.iterdir()) / 2**20

    rows = [
        ("decode NIfTI only", decode), ("cold: decode+preprocess+write", cold),
        ("cached: open + read all (float16)", cached), ("  + convert all to float32", to_f32),
        (f"DataLoader shuffled, batch {args.batch_size}", loader_s),
    ]
    results.update(decode_s=round(decode, 3), cold_s=round(cold, 3), cached_s=round(cached, 4),
                   to_float32_s=round(to_f32, 3),
                   loader_s=round(loader_s, 3), loader_slices=seen,
                   cold_over_cached=round(cold / cached, 1), decode_over_cached=round(decode / cached, 1),
                   cache_mib=round(size_mb, 1), peak_rss_mib_after_build=round(rss_after_build, 1))
    print(f"\n{'step':34s} {'seconds':>9s} {'slices/s':>11s}")
    for name, secs in rows:
        print(f"{name:34s} {secs:9.3f} {n_slices / secs:11.0f}")
    print(f"\ncold / cached = {results['cold_over_cached']}x   decode / cached = {results['decode_over_cached']}x")
    print(f"cache on disk {size_mb:.1f} MiB; peak RSS after building {rss_after_build:.0f} MiB")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
