"""Does a bundle import stay in constant memory? Peak RSS of real imports of 10k to 100k images.

The importer promises (``bundles.importer``, phase 2) that sets stream chunk by chunk from the
bundle's files to their evaluation-set files, so that a host can upload 100,000 images without the
server holding them. This script checks the promise on the real code path: for each size N and
each array layout (``--layouts``: ``.npy``, raw IDX, safetensors, the three read from plain files
by position) it writes a bundle of N random 3x32x32 uint8 images (NHWC, written chunk by chunk so that generating
does not hold them either; and, for one smaller N, PNG class folders), then imports it with
``Importer(root).run()`` in a **fresh child process** (one per bundle, Django configured against
its own temporary SQLite database and ``ARENA_DATA_DIR``, migrated beforehand in another process
so that the migration's own peak is not counted). The bundle's one clean set is a public/hidden
split, the usual shape: two passes over the images (hidden part, public part), each written to its
own file.

The child reports the resident set size just before ``run()`` and ``ru_maxrss`` (the process's
peak) just after; their difference is what the import itself added. A thread also samples
``RssAnon`` and ``RssFile`` from ``/proc/self/status`` every 10 ms, because ``ru_maxrss`` counts
pages of memory-mapped files too. The last lines state the claim per layout: each figure at the
largest N against the smallest, near 1 while the data grows 10x meaning that memory does not grow
with the number of images; with the machine's CPU count and the date.

Measured (2 CPUs, 2026-12-02), 10,000 -> 100,000 images (31 -> 308 MB): with the readers of
``evaluator.data.streams`` memory-mapping the file per pass, ``ru_maxrss`` went from 306-309 to
573-578 MiB (1.87x) on all three layouts (what the import added: 55-58 -> 323-328 MiB, 5.6-5.9x),
since every page a pass touches stays resident until the pass ends. Reading the rows by position
instead: 276-279 -> 286-287 MiB (1.02-1.04x), VmHWM the same; what the import added 26-29 -> 35-36
MiB (1.24-1.39x), about 100 bytes an image, all anonymous memory. tracemalloc's peak grows by 2.4
MiB of that (20.7 -> 23.1 MiB: the int64 labels and split indices, read whole by design); the rest
is glibc keeping freed label-sized blocks in its heap (its mmap threshold rises after the first
large free): with ``MALLOC_MMAP_THRESHOLD_=131072`` the import adds 23.1 -> 25.8 MiB (1.11x).

    .venv/bin/python measurements/bundle_import_scale.py [--sizes 10000 30000 100000]
        [--layouts npy idx safetensors] [--png 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import struct
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


def _write_chunks(handle: Any, n: int, rng: np.random.Generator) -> None:
    """n random NHWC uint8 images into an open binary file, GEN_CHUNK at a time."""
    for start in range(0, n, GEN_CHUNK):
        stop = min(start + GEN_CHUNK, n)
        handle.write(rng.integers(0, 256, (stop - start, SHAPE[1], SHAPE[2], SHAPE[0]), dtype=np.uint8).tobytes())


def make_idx_bundle(root: Path, n: int, seed: int = 0) -> int:
    """Raw (uncompressed) IDX images (n, 32, 32, 3) uint8 and IDX uint8 labels; returns the data bytes."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    dims = (n, SHAPE[1], SHAPE[2], SHAPE[0])
    with (root / "images-idx4-ubyte").open("wb") as handle:
        handle.write(struct.pack(">HBB", 0, 0x08, len(dims)) + struct.pack(f">{len(dims)}I", *dims))
        _write_chunks(handle, n, rng)
    labels = rng.integers(0, CLASSES, n).astype(np.uint8)
    (root / "labels-idx1-ubyte").write_bytes(struct.pack(">HBBI", 0, 0x08, 1, n) + labels.tobytes())
    spec = {"layout": "idx", "images": "images-idx4-ubyte", "labels": "labels-idx1-ubyte"}
    _write_manifest(root, _manifest(f"idx-{n}", spec))
    return (root / "images-idx4-ubyte").stat().st_size + (root / "labels-idx1-ubyte").stat().st_size


def make_safetensors_bundle(root: Path, n: int, seed: int = 0) -> int:
    """data.safetensors with images (n, 32, 32, 3) U8 and labels I64, written chunk by chunk."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    image_bytes = n * int(np.prod(SHAPE))
    header = json.dumps({
        "images": {"dtype": "U8", "shape": [n, SHAPE[1], SHAPE[2], SHAPE[0]], "data_offsets": [0, image_bytes]},
        "labels": {"dtype": "I64", "shape": [n], "data_offsets": [image_bytes, image_bytes + 8 * n]},
    }).encode()
    header += b" " * (-len(header) % 8)
    with (root / "data.safetensors").open("wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header)
        _write_chunks(handle, n, rng)
        handle.write(rng.integers(0, CLASSES, n).astype("<i8").tobytes())
    spec = {"layout": "safetensors", "path": "data.safetensors", "images": "images", "labels": "labels"}
    _write_manifest(root, _manifest(f"safetensors-{n}", spec))
    return (root / "data.safetensors").stat().st_size


#: Array layouts a bundle can be generated in (``--layouts``), by the manifest's layout name.
MAKERS = {"npy": make_npy_bundle, "idx": make_idx_bundle, "safetensors": make_safetensors_bundle}


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


def _growth(small: dict[str, Any], large: dict[str, Any], key: str, base: str | None = None) -> str:
    """``key`` (less ``base``) at the smallest and the largest N, in MiB, and their ratio."""
    low, high = ((row[key] - (row[base] if base else 0)) / 1024.0 for row in (small, large))
    return f"{low:.1f} -> {high:.1f} MiB = {high / max(low, 1e-3):.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000],
                        help="numbers of images for the .npy bundles")
    parser.add_argument("--layouts", nargs="+", choices=sorted(MAKERS), default=["npy", "idx", "safetensors"],
                        help="array layouts measured at every size")
    parser.add_argument("--png", type=int, default=10_000, help="images in the PNG class-folder bundle (0: none)")
    parser.add_argument("--work", type=Path, default=None, help="where bundles are written (default: a temp folder)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        role, *rest = args.child
        if role == "migrate":
            child_migrate(Path(rest[0]))
        elif role == "generate":
            make = MAKERS.get(rest[0], make_png_bundle)
            print(make(Path(rest[2]), int(rest[1])))
        else:
            child_import(Path(rest[0]), Path(rest[1]))
        return

    work = Path(tempfile.mkdtemp(prefix="arena-bundle-scale-", dir=args.work))
    try:
        template = work / "template"
        _child("migrate", str(template))
        rows = [measure(work, template, layout, n) for layout in args.layouts for n in sorted(args.sizes)]
        if args.png:
            rows.append(measure(work, template, "png", args.png))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    mib = 1024.0  # ru_maxrss and /proc figures are KiB
    print(f"bundle import scale: {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M %Z')}, "
          f"images {'x'.join(map(str, SHAPE))} uint8, one clean set split half hidden / half public")
    header = (f"{'N':>8} {'layout':>11} {'data MB':>8} {'seconds':>8} {'images/s':>9} {'RSS before':>11} "
              f"{'peak RSS':>9} {'added':>9} {'VmHWM':>9} {'anon added':>11} {'file peak':>10}")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['n']:>8,} {row['layout']:>11} {row['data_mb']:>8.1f} {row['seconds']:>8.2f} "
              f"{row['images'] / row['seconds']:>9,.0f} {row['rss_before'] / mib:>7.1f} MiB "
              f"{row['maxrss'] / mib:>5.1f} MiB {(row['maxrss'] - row['rss_before']) / mib:>5.1f} MiB "
              f"{row['hwm'] / mib:>5.1f} MiB {(row['anon_peak'] - row['anon_before']) / mib:>7.1f} MiB "
              f"{row['file_peak'] / mib:>6.1f} MiB")
    print("peak RSS: ru_maxrss after the import; added: peak RSS - VmRSS just before run(); VmHWM: peak RSS since "
          "just before run() (clear_refs); anon added / file peak: RssAnon above its value before run() / RssFile, "
          "sampled every 10 ms (file pages: mapped files, page cache the kernel can drop)")
    print()
    print(f"claim: the import's peak memory stays flat as the number of images grows "
          f"(largest N / smallest N; {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')})")
    for layout in args.layouts:
        measured = [row for row in rows if row["layout"] == layout]
        if len(measured) < 2:
            continue
        small, large = measured[0], measured[-1]
        print(f"  {layout:>11}: {large['n'] / small['n']:.0f}x the images ({small['n']:,} -> {large['n']:,}), "
              f"{large['data_mb'] / small['data_mb']:.1f}x the data; "
              f"peak RSS (ru_maxrss) {_growth(small, large, 'maxrss')}; VmHWM {_growth(small, large, 'hwm')}; "
              f"peak - RSS before {_growth(small, large, 'maxrss', 'rss_before')}; "
              f"anonymous added {_growth(small, large, 'anon_peak', 'anon_before')}")

if __name__ == "__main__":
    main()
