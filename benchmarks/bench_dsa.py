"""Times dd's plain-tensor DSA against kornia's closest augmentations (forward + backward to the images).

The issue asks for whichever is faster on CPU and CUDA; this prints seconds per call for both, measured in the
same run on the same inputs, and the ratio kornia / ours (> 1 means ours is faster).

    .venv/bin/python benchmarks/bench_dsa.py                 # CPU, and CUDA when present
    .venv/bin/python benchmarks/bench_dsa.py --device cpu --repeats 20 --out benchmarks/bench_dsa.md
"""
from __future__ import annotations

import argparse
import platform
import random
import statistics
import time

import torch

from dd.augment import DSA, DSAParams

FAMILIES = ["color", "crop", "cutout", "flip", "scale", "rotate"]


def kornia_ops(channels: int, side: int, p: DSAParams) -> dict:
    """kornia.augmentation modules closest to each DSA family, with the DSA paper's ranges, per-sample params."""
    import kornia.augmentation as K

    lo = 1.0 / p.scale
    return {
        # additive brightness +-0.5, contrast x[0.5, 1.5], HSV saturation x[0, 2] (identity on one channel in DSA)
        "color": K.ColorJiggle(brightness=0.5 * p.brightness, contrast=0.5,
                               saturation=(p.saturation / 2 if channels == 3 else 0.0), p=1.0),
        "crop": K.RandomCrop((side, side), padding=int(side * p.crop + 0.5), p=1.0),  # pad-and-crop translation
        "cutout": K.RandomErasing(scale=(p.cutout ** 2, p.cutout ** 2), ratio=(1.0, 1.0), value=0.0, p=1.0),
        "flip": K.RandomHorizontalFlip(p=p.flip),
        "scale": K.RandomAffine(degrees=0.0, scale=(lo, p.scale, lo, p.scale), align_corners=True, p=1.0),
        "rotate": K.RandomRotation(degrees=p.rotate, align_corners=True, p=1.0),
    }


class OneOf:
    """One family per call, as DSA's single-operation mode does."""

    def __init__(self, ops: list, seed: int = 0):
        self.ops, self.rng = ops, random.Random(seed)

    def __call__(self, x):
        return self.rng.choice(self.ops)(x)


def time_pair(fns: list, x0: torch.Tensor, repeats: int, device: torch.device) -> list[float]:
    """Median seconds of forward + backward (to the images) per call of each fn, calls interleaved so that the
    load of a shared machine falls on both sides alike."""
    w = torch.randn_like(x0)

    def once(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        x = x0.clone().requires_grad_(True)
        (fn(x) * w).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        assert x.grad is not None
        return time.perf_counter() - t

    for _ in range(3):
        for fn in fns:
            once(fn)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            times[k].append(once(fn))
    return [statistics.median(t) for t in times]


def run(device: torch.device, batch: int, repeats: int) -> list[dict]:
    rows = []
    p = DSAParams()
    for channels, side in ((3, 32), (1, 28)):
        x = torch.randn(batch, channels, side, side, device=device)
        g = torch.Generator().manual_seed(0)
        kops = {k: m.to(device) for k, m in kornia_ops(channels, side, p).items()}
        for fam in FAMILIES + ["one-of-6"]:
            if fam == "one-of-6":
                ours = DSA(p)
                theirs = OneOf(list(kops.values()))
                reps = repeats * 3  # average over the random family choice
            else:
                ours = DSA(DSAParams(strategy=fam))
                theirs = kops[fam]
                reps = repeats
            t_ours, t_k = time_pair([lambda x: ours(x, generator=g), theirs], x, reps, device)
            rows.append({"device": device.type, "input": f"{batch}x{channels}x{side}x{side}", "op": fam,
                         "ours_s": t_ours, "kornia_s": t_k, "ratio": t_k / t_ours})
            print(f"{device.type:5} {rows[-1]['input']:14} {fam:9} ours {t_ours * 1e3:9.3f} ms  "
                  f"kornia {t_k * 1e3:9.3f} ms  kornia/ours {t_k / t_ours:6.2f}", flush=True)
    return rows


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| device | input | op | ours (ms/call) | kornia (ms/call) | kornia / ours |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['device']} | {r['input']} | {r['op']} | {r['ours_s'] * 1e3:.3f} | "
                     f"{r['kornia_s'] * 1e3:.3f} | {r['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (cpu, plus cuda when present)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", default=None, help="also write the table as Markdown here")
    args = ap.parse_args()
    import kornia

    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.device == "auto" else [args.device]
    header = (f"DSA forward+backward, batch {args.batch}, median of {args.repeats} interleaved calls (x3 for one-of-6); "
              f"torch {torch.__version__}, kornia {kornia.__version__}, {torch.get_num_threads()} CPU threads, "
              f"{platform.processor() or platform.machine()}"
              + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""))
    print(header)
    rows = []
    for d in devices:
        rows += run(torch.device(d), args.batch, args.repeats)
    if args.out:
        from dd.utils import atomic_write_text

        atomic_write_text(args.out, markdown(rows, header))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
