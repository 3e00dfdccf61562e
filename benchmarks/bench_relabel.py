"""Seconds per teacher-protocol evaluation epoch: labels from the teacher on the fly vs stored labels (`ddtk relabel`).

    python benchmarks/bench_relabel.py --teacher-model resnet18-bn --student convnet-w32 --ipc 50 --epochs 3 --repeats 3

Same set, same views, same student; the teacher (randomly initialized: its weights do not change its cost) runs
on every view in the first, while the second reads the stored top-k logits through a plain DataLoader. Runs
alternate (on-the-fly, stored, ...) so a shared machine's load hits both alike; the one-off relabel cost is
printed beside them (it is paid once per set, not per evaluation run).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from dd.data import load_dataset
from dd.eval import EvalInputs, get_protocol
from dd.eval.labels import StoredLabels, relabel
from dd.eval.train import train_model
from dd.models import build_model
from dd.synset import SyntheticSet
from dd.utils import resolve_device


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist10k")
    ap.add_argument("--teacher-model", default="resnet18-bn")
    ap.add_argument("--student", default="convnet-w32")
    ap.add_argument("--ipc", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=3, help="training epochs per timed run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    dev = resolve_device(args.device)
    ds = load_dataset(args.dataset)
    images = SyntheticSet.from_real(ds, args.ipc, torch.Generator().manual_seed(0)).images.to(dev)
    torch.manual_seed(0)
    teacher = build_model(args.teacher_model, ds.channels, ds.num_classes, ds.image_size).to(dev).eval()
    protocol = get_protocol("teacher", epochs=args.epochs)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        relabel(images, teacher, protocol, args.epochs, tmp, seed=0, flip=ds.flip_ok, device=dev, progress=False)
        sync()
        relabel_s = (time.perf_counter() - t0) / args.epochs
        stored = StoredLabels(tmp)

        def run(kind: str) -> float:
            torch.manual_seed(1)
            student = build_model(args.student, ds.channels, ds.num_classes, ds.image_size).to(dev)
            sync()
            t = time.perf_counter()
            train_model(student, images, torch.zeros(len(images), dtype=torch.long, device=dev), protocol, seed=0,
                        flip_ok=ds.flip_ok, inputs=EvalInputs(teacher=teacher if kind == "fly" else None,
                                                              stored=stored if kind == "stored" else None))
            sync()
            return (time.perf_counter() - t) / args.epochs

        run("fly"), run("stored")  # warm-up
        fly, kept = [], []
        for _ in range(args.repeats):
            fly.append(run("fly"))
            kept.append(run("stored"))
    f, s = statistics.median(fly), statistics.median(kept)
    print(f"{args.dataset} IPC {args.ipc} ({len(images)} images), teacher {args.teacher_model}, student {args.student}, "
          f"batch {protocol.batch_size}, {dev}")
    print(f"on-the-fly teacher : {f:.3f} s/epoch (runs: {', '.join(f'{v:.3f}' for v in fly)})")
    print(f"stored labels      : {s:.3f} s/epoch (runs: {', '.join(f'{v:.3f}' for v in kept)})")
    print(f"relabel, once      : {relabel_s:.3f} s per stored epoch; {stored.nbytes / args.epochs:,.0f} bytes per epoch")
    print(f"speed-up of stored labels: {f / s:.2f}x")


if __name__ == "__main__":
    main()
