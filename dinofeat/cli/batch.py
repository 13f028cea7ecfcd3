"""The batch forms of `dinofeat match` (results to Parquet):

    dinofeat match --pairs PAIRS.csv --out RESULTS.parquet [--draw DIR] [--resume] [--batch-size N]
                   [--workers N] [--cache-dir D]
    dinofeat match DIR --all-pairs --out RESULTS.parquet ...      every unordered pair of the images in DIR
    dinofeat match QUERY DIR --out RESULTS.parquet ...            QUERY against every image in DIR

Exit codes: 0 every pair succeeded, 1 some failed (their `error` column says why; the count is printed),
2 bad arguments. The output is written to a temp file and renamed; on an interrupt the rows done so far are
kept (whole rows), so `--resume` continues from there.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from ..config import MatchConfig
from ..errors import InputError
from .common import extractor_config

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def add_batch_arguments(p: argparse.ArgumentParser) -> None:
    """The batch options of `dinofeat match` (the positional IMG1/IMG2 become optional)."""
    g = p.add_argument_group("many pairs (results to Parquet)")
    g.add_argument("--pairs", default=None, metavar="PAIRS.csv",
                   help="CSV of two image paths per row (relative to the CSV's folder), optional header image1,image2")
    g.add_argument("--all-pairs", action="store_true", help="match every unordered pair of the images in DIR")
    g.add_argument("--out", default=None, metavar="RESULTS.parquet", help="results file (one row per pair)")
    g.add_argument("--draw", default=None, metavar="DIR", help="also draw each matched pair as a PNG in DIR")
    g.add_argument("--resume", action="store_true",
                   help="keep the successful rows of an existing --out, redo only the missing and failed pairs")
    g.add_argument("--batch-size", type=int, default=8, help="images per forward (same size), default 8")
    g.add_argument("--workers", type=int, default=2, help="decode threads, default 2")
    g.add_argument("--cache-dir", default=None, help="on-disk feature store (reused across runs)")


def is_batch(args) -> bool:
    """True for the batch forms (--pairs, --all-pairs, or a directory as IMG2)."""
    return bool(args.pairs or args.all_pairs or (args.img2 and Path(args.img2).is_dir()))


def list_images(folder) -> list[Path]:
    """Image files directly in `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"DIR: not a directory: {str(folder)!r}")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_pairs_csv(path) -> list[tuple[str, str, Path, Path]]:
    """(name1, name2, path1, path2) per row; names as given, paths resolved against the CSV's folder."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--pairs: file not found: {str(path)!r}")
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            cells = [c.strip() for c in row]
            if not any(cells):
                continue
            if len(cells) != 2 or not all(cells):
                raise InputError(f"--pairs {str(path)!r} line {line}: expected two image paths, got {row!r}")
            if not rows and [c.lower() for c in cells] == ["image1", "image2"]:
                continue
            resolve = [Path(c) if Path(c).is_absolute() else path.parent / c for c in cells]
            rows.append((cells[0], cells[1], resolve[0], resolve[1]))
    if not rows:
        raise InputError(f"--pairs {str(path)!r}: no pairs (expected rows of two image paths)")
    return rows


def collect_pairs(args) -> list[tuple[str, str, Path, Path]]:
    """The pairs of the chosen form, without duplicates (first occurrence kept)."""
    if args.pairs:
        if args.img1 or args.img2 or args.all_pairs:
            raise InputError("--pairs: give either --pairs PAIRS.csv, DIR --all-pairs or QUERY DIR, not several")
        pairs = read_pairs_csv(args.pairs)
    elif args.all_pairs:
        if not args.img1 or args.img2:
            raise InputError("--all-pairs: expected exactly one DIR (dinofeat match DIR --all-pairs --out R.parquet)")
        images = list_images(args.img1)
        if len(images) < 2:
            raise InputError(f"DIR {args.img1!r}: expected at least 2 images, found {len(images)}")
        pairs = [(str(a), str(b), a, b) for i, a in enumerate(images) for b in images[i + 1:]]
    else:
        gallery = list_images(args.img2)
        if not gallery:
            raise InputError(f"DIR {args.img2!r}: no images ({', '.join(IMAGE_SUFFIXES)})")
        q = Path(args.img1)
        pairs = [(args.img1, str(g), q, g) for g in gallery]
    seen, unique = set(), []
    for p in pairs:
        if (p[0], p[1]) not in seen:
            seen.add((p[0], p[1]))
            unique.append(p)
    return unique


def batch_main(args) -> int:
    from tqdm import tqdm

    from ..pipeline.matcher import Matcher, check_count
    from ..pipeline.results import ResultWriter, result_row, successful_rows

    check_count(args.batch_size, "--batch-size: batch_size")
    check_count(args.workers, "--workers: workers", minimum=0)
    if not args.out or not str(args.out).lower().endswith(".parquet"):
        raise InputError(f"--out {args.out!r}: expected a file ending in .parquet")
    pairs = collect_pairs(args)
    kept: list[dict] = []
    if args.resume and Path(args.out).is_file():
        wanted = {(p[0], p[1]) for p in pairs}
        kept = [r for r in successful_rows(args.out) if (r.get("image1"), r.get("image2")) in wanted]
        done = {(r["image1"], r["image2"]) for r in kept}
        kept = list({(r["image1"], r["image2"]): r for r in kept}.values())
        pairs = [p for p in pairs if (p[0], p[1]) not in done]
    matcher = Matcher.from_configs(extractor_config(args), MatchConfig.from_args(args), cache_dir=args.cache_dir,
                                   progress=not args.quiet)
    failed = 0
    with ResultWriter(args.out) as writer:
        for row in kept:
            writer.write(row)
        results = matcher.match_pairs(((p[2], p[3]) for p in pairs), batch_size=args.batch_size,
                                      workers=args.workers)
        bar = tqdm(results, total=len(pairs), desc="dinofeat match", unit="pair",
                   disable=True if args.quiet else None)
        for r in bar:
            name1, name2 = pairs[r.index][0], pairs[r.index][1]
            writer.write(result_row(r, name1, name2))
            failed += r.error is not None
            if r.error is not None:
                bar.write(f"pair {name1} , {name2}: {r.error}")
            elif args.draw:
                _draw(r, Path(args.draw), name1, name2)
    total = len(kept) + len(pairs)
    stats = matcher.store.stats
    print(f"{total} pairs: {total - failed} succeeded ({len(kept)} kept from before), {failed} failed; "
          f"written to {args.out}; {matcher.forwards} images through the ViT; feature store: "
          f"{stats['memory_hits'] + stats['disk_hits']} hits ({stats['disk_hits']} from disk), {stats['misses']} "
          "misses")
    return 1 if failed else 0


def _draw(r, folder: Path, name1: str, name2: str) -> None:
    from ..viz import atomic_save, draw_correspondences

    canvas = draw_correspondences(r.result)
    path = folder / f"{r.index:05d}_{Path(name1).stem}__{Path(name2).stem}.png"
    atomic_save(path, lambda tmp: canvas.save(tmp, format="PNG"))
