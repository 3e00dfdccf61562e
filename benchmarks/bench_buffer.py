"""Recorder throughput vs a plain PyTorch training loop (same model, data, DSA, run), and bytes per expert-epoch.

    python benchmarks/bench_buffer.py --dataset mnist10k --model convnet-w32 --epochs 1 --repeats 3

Runs alternate (recorder, plain, recorder, plain, ...) so a shared machine's load hits both alike.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dd.augment import dsa_for
from dd.buffers import preset
from dd.buffers.recorder import train_expert, write_shard
from dd.data import load_dataset
from dd.eval.train import accuracy
from dd.models import build_model


def plain_loop(cfg, ds, seed: int, device) -> float:
    """The textbook loop: torch.optim.SGD, loss.backward(), per-sample DSA, one final test accuracy; no snapshots."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_model(cfg.model, ds.channels, ds.num_classes, ds.image_size).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    dsa = dsa_for(ds.flip_ok, cfg.dsa_strategy)
    x_all, y_all = ds.train_images.to(device), ds.train_labels.to(device)
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(x_all), generator=g).to(device)
        for i in range(0, len(x_all), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            loss = F.cross_entropy(model(dsa(x_all[idx], generator=g)), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return accuracy(model, ds.test_images.to(device), ds.test_labels.to(device))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist10k")
    ap.add_argument("--model", default="convnet-w32")
    ap.add_argument("--kind", default="mtt", choices=["mtt", "ftd", "smooth"])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-subset", type=int, default=0, help="use only the first N training images (0: all)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = load_dataset(args.dataset)
    if args.train_subset:
        ds = ds.with_train(ds.train_images[:args.train_subset], ds.train_labels[:args.train_subset])
    cfg = preset(args.kind, dataset=args.dataset, model=args.model, experts=1, epochs=args.epochs)
    n_img = len(ds.train_images) * cfg.epochs
    rec_t, plain_t, tensors = [], [], None
    for r in range(args.repeats):
        t0 = time.perf_counter()
        tensors, acc_r = train_expert(cfg, ds, r, args.device)
        rec_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        acc_p = plain_loop(cfg, ds, r, args.device)
        plain_t.append(time.perf_counter() - t0)
        same = "same" if acc_r == acc_p else "DIFFERENT"
        print(f"repeat {r} ({same} final accuracy): recorder {n_img / rec_t[-1]:.0f} img/s (acc {acc_r:.3f}), plain {n_img / plain_t[-1]:.0f} img/s (acc {acc_p:.3f})")
    rec, plain = sum(rec_t) / len(rec_t), sum(plain_t) / len(plain_t)
    ratios = [p / r for r, p in zip(rec_t, plain_t)]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "expert.safetensors"
        write_shard(path, tensors, cfg, 0, 0.0)
        size = path.stat().st_size
    print(f"\n{args.kind} expert, {args.model} on {args.dataset} ({len(ds.train_images)} train images), device {args.device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"recorder: {n_img / rec:.0f} img/s, plain PyTorch loop: {n_img / plain:.0f} img/s, "
          f"ratio {plain / rec:.3f} (totals over {args.repeats} alternating pairs; per pair median "
          f"{statistics.median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f}; target >= 0.95)")
    print(f"storage: {size} bytes per expert for {cfg.epochs + 1} snapshots = {size / (cfg.epochs + 1):.0f} bytes per "
          f"expert per epoch ({cfg.storage_dtype})")


if __name__ == "__main__":
    main()
