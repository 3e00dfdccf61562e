"""`ddtk show`: a PNG grid (one row per class, pixel space) and a summary of a synthetic set."""
from __future__ import annotations

import json
from pathlib import Path


def add_parser(sub, name):
    from dd.cli import positive_int

    p = sub.add_parser(name, help="write a PNG grid of a synthetic set and print its summary")
    p.add_argument("synset", help="a .safetensors synthetic set (or an MTT images_best.pt)")
    p.add_argument("--out", default=None, help="PNG path (default: beside the set, .png)")
    p.add_argument("--per-class", type=positive_int, default=10, help="images per class in the grid")
    return p


def run(args) -> int:
    from dd.synset import SyntheticSet

    s = SyntheticSet.load(args.synset)
    out = Path(args.out) if args.out else Path(args.synset).with_suffix(".png")
    s.save_grid(out, args.per_class)
    print(json.dumps(s.summary(), indent=2))
    print(f"wrote {out}")
    return 0
