"""Peak resident memory of reading a large BraTS stand-in and training a few steps from it.

A BraTS-2021-sized stand-in (240 × 240 × 155 voxels, four contrasts and a segmentation
per case, ``.nii.gz``) is written once; its cases are hard links of one generated case, so
the folder costs one case of disk while the reader still decompresses, checks, z-scores
and caches every case. A child process then

1. loads the folder through the ``brats`` reader (the cache is built case by case into
   ``.npy`` files and memory-mapped), and
2. trains a small MONAI U-Net for a few CPU steps with `fit_binary_segmentation`, reading
   its batches from the memory-mapped cache (a strided view over the whole set),

and reports its peak resident set (``VmHWM``) and the peak of its anonymous memory
(``RssAnon``, sampled every 20 ms: memory the kernel cannot drop, unlike mapped file pages).

Not part of the default test run (``testpaths = ["tests"]``). Run::

    POISONBENCH_MEMORY_CASES=60 nice -n 5 pytest benchmarks/test_memory.py -s

The cache of N cases takes about N × 120 MB of disk (``slices: all``).

Measured on the 2-core, 24 GB development machine (CPU, shared): 30 cases, 3,930 slices of
240 × 240 × 4, cache 3.58 GiB: peak RSS 0.92 GiB, peak anonymous 0.80 GiB, load 313 s,
4 training steps 12 s; 3 cases (0.36 GiB cache): the same peak RSS, 0.92 GiB. The peak is
one case being read, not the data set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

SHAPE = (240, 240, 155)
LIMIT_BYTES = 8 * 1024**3

CHILD = textwrap.dedent(
    """
    import json, sys, threading, time
    from pathlib import Path

    def status(field):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        return 0

    peak_anon = [0]
    stop = threading.Event()
    def sample():
        while not stop.is_set():
            peak_anon[0] = max(peak_anon[0], status("RssAnon"))
            time.sleep(0.02)
    threading.Thread(target=sample, daemon=True).start()

    import numpy as np, torch
    from monai.networks.nets import UNet
    from benchmark import RunContext, create_dataset, fit_binary_segmentation
    from benchmark.regions import region_mask

    torch.set_num_threads(2)
    root, steps = sys.argv[1], int(sys.argv[2])
    clock = time.perf_counter()
    data = create_dataset("brats", root=root).load()
    load_s = time.perf_counter() - clock
    after_load = {"rss": status("VmRSS"), "hwm": status("VmHWM"), "anon": peak_anon[0]}

    batch = 8
    stride = max(1, len(data) // (steps * batch))
    images = data.images[::stride][: steps * batch]      # a view of the memory map: no copy
    masks = region_mask(np.asarray(data.labels[::stride][: steps * batch]), "ET").astype(np.uint8)
    net = UNet(spatial_dims=2, in_channels=len(data.channels), out_channels=1, channels=(8, 16, 32), strides=(2, 2))
    clock = time.perf_counter()
    history = fit_binary_segmentation(net, images, masks, RunContext(device="cpu"), epochs=1, batch_size=batch, lr=1e-3)
    train_s = time.perf_counter() - clock
    time.sleep(0.05)
    stop.set()
    cache_bytes = sum(p.stat().st_size for p in Path(data.images.filename).parent.iterdir())
    print(json.dumps({
        "cases": len(data.cases), "slices": len(data), "channels": list(data.channels), "shape": list(data.shape),
        "images_is_memmap": isinstance(data.images, np.memmap), "cache_bytes": cache_bytes,
        "load_s": load_s, "train_s": train_s, "train_steps": -(-len(images) // batch), "loss": history.losses,
        "after_load": after_load, "peak_rss_bytes": status("VmHWM"), "peak_anon_bytes": peak_anon[0],
    }))
    """
)


def make_standin(root: Path, cases: int) -> Path:
    """A BraTS-2021 folder of ``cases`` full-size cases (hard links of one generated case)."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    x, y, z = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    brain = ((x - 120) / 80.0) ** 2 + ((y - 120) / 100.0) ** 2 + ((z - 77) / 65.0) ** 2 <= 1
    tumour = ((x - 100) / 20.0) ** 2 + ((y - 110) / 22.0) ** 2 + ((z - 80) / 18.0) ** 2
    seg = np.zeros(SHAPE, dtype=np.uint8)
    seg[tumour <= 1.0] = 2
    seg[tumour <= 0.5] = 4
    seg[tumour <= 0.2] = 1
    first = root / "BraTS2021_00000"
    first.mkdir(parents=True)
    for i, channel in enumerate(("t1", "t1ce", "t2", "flair")):
        volume = np.where(brain, 300 + 100 * i + rng.normal(0, 40, SHAPE), 0).astype(np.int16)
        nib.save(nib.Nifti1Image(volume, np.eye(4)), str(first / f"BraTS2021_00000_{channel}.nii.gz"))
    nib.save(nib.Nifti1Image(seg, np.eye(4)), str(first / "BraTS2021_00000_seg.nii.gz"))
    for case in range(1, cases):
        folder = root / f"BraTS2021_{case:05d}"
        folder.mkdir()
        for source in first.iterdir():
            os.link(source, folder / source.name.replace("00000", f"{case:05d}"))
    return root


@pytest.mark.slow
def test_peak_memory_of_loading_and_training(tmp_path):
    cases = int(os.environ.get("POISONBENCH_MEMORY_CASES", "40"))
    steps = int(os.environ.get("POISONBENCH_MEMORY_STEPS", "4"))
    root = make_standin(tmp_path / "brats", cases)
    env = {**os.environ, "POISONBENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "2"}
    result = subprocess.run([sys.executable, "-c", CHILD, str(root), str(steps)], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    gib = 1024**3
    print(
        f"\nbrats stand-in: {report['cases']} cases, {report['slices']} slices of {report['shape']} x {len(report['channels'])} channels; "
        f"cache {report['cache_bytes'] / gib:.2f} GiB (memory-mapped: {report['images_is_memmap']}); "
        f"load {report['load_s']:.0f} s, {report['train_steps']} training steps {report['train_s']:.1f} s; "
        f"peak RSS {report['peak_rss_bytes'] / gib:.2f} GiB, peak anonymous {report['peak_anon_bytes'] / gib:.2f} GiB "
        f"(after load: RSS peak {report['after_load']['hwm'] / gib:.2f} GiB)"
    )
    print(json.dumps(report))
    assert report["images_is_memmap"]
    assert report["peak_rss_bytes"] < LIMIT_BYTES
    # resident memory must not grow with the data set: well below the cache it streams
    assert report["peak_anon_bytes"] < max(report["cache_bytes"] / 2, 2 * gib)
