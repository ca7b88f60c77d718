"""Does a bundle import stay in constant memory? Peak RSS of real imports of 10k to 100k images.

The importer promises (``bundles.importer``, phase 2) that sets stream chunk by chunk from the
bundle's files to their evaluation-set files, so that a host can upload 100,000 images without the
server holding them. This script checks the promise on the real code path: for each size N it
writes a bundle of N random 3x32x32 uint8 images (``.npy`` layout, NHWC, written through
``np.lib.format.open_memmap`` so that generating does not hold them either; and, for one smaller N,
PNG class folders), then imports it with ``Importer(root).run()`` in a **fresh child process** (one
per bundle, Django configured against its own temporary SQLite database and ``ARENA_DATA_DIR``,
migrated beforehand in another process so that the migration's own peak is not counted). The
bundle's one clean set is a public/hidden split, the usual shape: two passes over the images
(hidden part, public part), each written to its own file.

The child reports the resident set size just before ``run()`` and ``ru_maxrss`` (the process's
peak) just after; their difference is what the import itself added. A thread also samples
``RssAnon`` and ``RssFile`` from ``/proc/self/status`` every 10 ms, because ``ru_maxrss`` counts
pages of memory-mapped files too: those are page cache the kernel can drop at any time, while
anonymous memory is what an import really holds. The printed ratio compares the largest N with the
smallest: near 1 while the data grows 10x means memory does not grow with the number of images.

Measured (2 CPUs, 2026-12-02): from 10,000 to 100,000 images (31 to 308 MB), anonymous memory added
by the import went from 25 to 34 MiB (1.36x; the int64 labels and split indices, read whole by
design, are about 100 bytes an image), but ``ru_maxrss`` went from 308 to 581 MiB (1.88x; 5.7x for
the part the import added): the ``.npy`` reader memory-maps the whole file per pass, and every page a
pass touches stays resident (as page cache) until the pass ends. The same run with the rows read by
``os.pread`` instead of the map gave 276 to 286 MiB (1.04x).

    .venv/bin/python measurements/bundle_import_scale.py [--sizes 10000 30000 100000] [--png 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (3, 32, 32)
CLASSES = 10
#: Images generated (and PNGs written) at a time: the generator's own memory stays at one chunk.
GEN_CHUNK = 4096
DB_NAME = "arena.sqlite3"


# --- Generating bundles (parent process) -------------------------------------------------------------------------


def _manifest(slug: str, data: dict[str, Any]) -> dict[str, Any]:
    """One classifier track whose clean set is a half/half split of ``data``, as hosts usually ship."""
    return {
        "format": 1,
        "benchmark": {"slug": slug, "name": f"Scale {slug}"},
        "tracks": [{
            "slug": f"{slug}-track", "name": "Scale", "task": "classifier",
            "input": {"channels": SHAPE[0], "height": SHAPE[1], "width": SHAPE[2]},
            "classes": CLASSES, "suite_version": "scale-1",
            "evaluation_sets": [{
                "name": "hidden", "role": "clean", "source": "random images", "license": "CC0",
                "split": {"data": data, "hidden_fraction": 0.5, "secret": "split", "public_name": "public"},
            }],
        }],
    }


def _write_manifest(root: Path, spec: dict[str, Any]) -> None:
    import yaml

    (root / "benchmark.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def make_npy_bundle(root: Path, n: int, seed: int = 0) -> int:
    """images.npy (n, 32, 32, 3) uint8 NHWC and labels.npy, chunk by chunk; returns the data bytes."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    images = np.lib.format.open_memmap(root / "images.npy", mode="w+", dtype=np.uint8,
                                       shape=(n, SHAPE[1], SHAPE[2], SHAPE[0]))
    for start in range(0, n, GEN_CHUNK):
        stop = min(start + GEN_CHUNK, n)
        images[start:stop] = rng.integers(0, 256, (stop - start, SHAPE[1], SHAPE[2], SHAPE[0]), dtype=np.uint8)
        images.flush()
    del images
    np.save(root / "labels.npy", rng.integers(0, CLASSES, n).astype(np.int64))
    _write_manifest(root, _manifest(f"npy-{n}", {"layout": "npy", "images": "images.npy", "labels": "labels.npy"}))
    return (root / "images.npy").stat().st_size + (root / "labels.npy").stat().st_size


def make_png_bundle(root: Path, n: int, seed: int = 0) -> int:
    """shift/<class>/<i>.png, n RGB 32x32 PNGs over CLASSES folders; returns the data bytes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    names = [f"c{k}" for k in range(CLASSES)]
    for name in names:
        (root / "images" / name).mkdir(parents=True)
    size = 0
    for start in range(0, n, GEN_CHUNK):
        stop = min(start + GEN_CHUNK, n)
        chunk = rng.integers(0, 256, (stop - start, SHAPE[1], SHAPE[2], SHAPE[0]), dtype=np.uint8)
        labels = rng.integers(0, CLASSES, stop - start)
        for i, (image, label) in enumerate(zip(chunk, labels, strict=True)):
            path = root / "images" / names[label] / f"{start + i:06d}.png"
            Image.fromarray(image).save(path)
            size += path.stat().st_size
    spec = _manifest(f"png-{n}", {"layout": "folders", "path": "images"})
    spec["tracks"][0]["class_names"] = names
    _write_manifest(root, spec)
    return size


# --- Child processes ---------------------------------------------------------------------------------------------


def _setup_django(var: Path) -> None:
    """Django against ``var``: its SQLite file and its ARENA_DATA_DIR (settings read the environment)."""
    os.environ["ARENA_VAR_DIR"] = str(var)
    os.environ["ARENA_DATA_DIR"] = str(var / "data")
    os.environ["MEDIA_ROOT"] = str(var / "media")
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "arena.settings")
    sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]
    import django

    django.setup()


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` field (VmRSS, RssAnon, RssFile) in KiB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def child_migrate(var: Path) -> None:
    """Create the template database (its own process: the migration's peak is not the import's)."""
    _setup_django(var)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def child_import(var: Path, bundle: Path) -> None:
    """Import ``bundle``; print one JSON line with the time and the memory figures (KiB)."""
    _setup_django(var)
    # The importer and everything it imports (torch among them) are loaded before the baseline is taken.
    import evaluator.data.evalsets  # noqa: F401
    from bundles.importer import Importer

    peaks = {"RssAnon": 0, "RssFile": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for field in peaks:
                peaks[field] = max(peaks[field], _status_kib(field))
            done.wait(0.01)

    with open("/proc/self/clear_refs", "w") as handle:  # VmHWM from here on: the import's own peak
        handle.write("5")
    rss_before = _status_kib("VmRSS")
    anon_before = _status_kib("RssAnon")
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    report = Importer(bundle).run()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hwm = _status_kib("VmHWM")
    images = sum(s.count for t in report.tracks for s in t.sets)
    print(json.dumps({"seconds": seconds, "images": images, "rss_before": rss_before, "maxrss_before": maxrss_before,
                      "maxrss": maxrss, "hwm": hwm, "anon_before": anon_before, "anon_peak": peaks["RssAnon"],
                      "file_peak": peaks["RssFile"]}))


# --- Parent -------------------------------------------------------------------------------------------------------


def _child(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'platform'}:{ROOT}"}
    done = subprocess.run([sys.executable, __file__, "--child", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def measure(work: Path, template: Path, layout: str, n: int) -> dict[str, Any]:
    """Generate one bundle, import it in a fresh child, remove both; the child's figures plus the data size.

    Generating happens in a child of its own as well: a process that execs inherits the peak RSS of
    the memory it replaces into ``ru_maxrss``, so a parent that had mapped 300 MB of images would
    raise the next import's figure (Python starts children with vfork, sharing the parent's memory).
    """
    bundle, var = work / f"bundle-{layout}-{n}", work / f"var-{layout}-{n}"
    try:
        data_bytes = int(_child("generate", layout, str(n), str(bundle)).strip().splitlines()[-1])
        shutil.copytree(template, var)
        figures = json.loads(_child("import", str(var), str(bundle)).strip().splitlines()[-1])
    finally:
        shutil.rmtree(bundle, ignore_errors=True)
        shutil.rmtree(var, ignore_errors=True)
    return {"n": n, "layout": layout, "data_mb": data_bytes / 1e6, **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000],
                        help="numbers of images for the .npy bundles")
    parser.add_argument("--png", type=int, default=10_000, help="images in the PNG class-folder bundle (0: none)")
    parser.add_argument("--work", type=Path, default=None, help="where bundles are written (default: a temp folder)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        role, *rest = args.child
        if role == "migrate":
            child_migrate(Path(rest[0]))
        elif role == "generate":
            make = make_npy_bundle if rest[0] == "npy" else make_png_bundle
            print(make(Path(rest[2]), int(rest[1])))
        else:
            child_import(Path(rest[0]), Path(rest[1]))
        return

    work = Path(tempfile.mkdtemp(prefix="arena-bundle-scale-", dir=args.work))
    try:
        template = work / "template"
        _child("migrate", str(template))
        rows = [measure(work, template, "npy", n) for n in sorted(args.sizes)]
        if args.png:
            rows.append(measure(work, template, "png", args.png))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    mib = 1024.0  # ru_maxrss and /proc figures are KiB
    print(f"bundle import scale: {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M %Z')}, "
          f"images {'x'.join(map(str, SHAPE))} uint8, one clean set split half hidden / half public")
    header = (f"{'N':>8} {'layout':>6} {'data MB':>8} {'seconds':>8} {'images/s':>9} {'RSS before':>11} "
              f"{'peak RSS':>9} {'added':>9} {'VmHWM':>9} {'anon added':>11} {'file peak':>10}")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['n']:>8,} {row['layout']:>6} {row['data_mb']:>8.1f} {row['seconds']:>8.2f} "
              f"{row['images'] / row['seconds']:>9,.0f} {row['rss_before'] / mib:>7.1f} MiB "
              f"{row['maxrss'] / mib:>5.1f} MiB {(row['maxrss'] - row['rss_before']) / mib:>5.1f} MiB "
              f"{row['hwm'] / mib:>5.1f} MiB {(row['anon_peak'] - row['anon_before']) / mib:>7.1f} MiB "
              f"{row['file_peak'] / mib:>6.1f} MiB")
    npy = [row for row in rows if row["layout"] == "npy"]
    if len(npy) > 1:
        small, large = npy[0], npy[-1]

        def ratio(key: str, base: str | None = None) -> float:
            def value(row: dict[str, Any]) -> float:
                return row[key] - (row[base] if base else 0)

            return value(large) / max(value(small), 1)

        print(f"largest / smallest N (npy): {large['n'] / small['n']:.0f}x the images, "
              f"{large['data_mb'] / small['data_mb']:.1f}x the data; peak RSS {ratio('maxrss'):.2f}x, "
              f"RSS added by the import {ratio('maxrss', 'rss_before'):.2f}x, "
              f"anonymous memory added {ratio('anon_peak', 'anon_before'):.2f}x")
    print("peak RSS: ru_maxrss after the import; added: peak RSS - VmRSS just before run(); VmHWM: peak RSS since "
          "just before run() (clear_refs); anon added / file peak: RssAnon above its value before run() / RssFile, "
          "sampled every 10 ms (file pages: mapped files, page cache the kernel can drop)")

if __name__ == "__main__":
    main()
