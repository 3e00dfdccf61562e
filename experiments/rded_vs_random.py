"""What RDED's selection keeps on the bench: how typical (teacher CE) and how varied its images are, beside random real.

    python experiments/rded_vs_random.py --teacher runs/teacher_bn_w32 runs/rded_f1_ipc10/synset.safetensors \
        runs/rded_f2_ipc10/synset.safetensors

Per set: the teacher's mean cross-entropy of the true class on the images (low: typical, easy), the percentile of
that CE within the class's training images (50: a random image), the mean pairwise pixel distance between images of a
class (diversity), and the mean distance from each test image to its nearest set image of its class (coverage).
Random real sets of the same IPC come first (5 draws, mean). Results in rded_results.md.
"""
import argparse

import torch
import torch.nn.functional as F

from dd.data import load_dataset
from dd.synset import SyntheticSet
from dd.teachers import open_teacher


def class_ce(teacher, images, labels) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([F.cross_entropy(teacher(x), y, reduction="none")
                          for x, y in zip(images.split(500), labels.split(500))])


def stats(teacher, ds, s: SyntheticSet, train_ce: list[torch.Tensor]) -> tuple[float, float, float, float]:
    ce = class_ce(teacher, s.images, s.hard_labels)
    pct, div, cov = [], [], []
    for c in range(ds.num_classes):
        mine = s.hard_labels == c
        pct.append(100 * (train_ce[c][None, :] < ce[mine][:, None]).float().mean(1))
        x = s.images[mine].flatten(1)
        d = torch.cdist(x, x)
        div.append(d.sum() / (len(x) * (len(x) - 1)))
        test = ds.test_images[ds.test_labels == c].flatten(1)
        cov.append(torch.cdist(test, x).min(1).values.mean())
    return float(ce.mean()), float(torch.cat(pct).mean()), float(torch.stack(div).mean()), float(torch.stack(cov).mean())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sets", nargs="+", help="synthetic set files")
    ap.add_argument("--teacher", required=True, help="teacher spec")
    ap.add_argument("--dataset", default="mnist10k")
    args = ap.parse_args(argv)
    ds = load_dataset(args.dataset)
    teacher = open_teacher(args.teacher).module(ds)
    real = ds.real()
    train_ce = [class_ce(teacher, real.all_of(c), torch.full((real.count(c),), c)) for c in range(ds.num_classes)]
    sets = {path: SyntheticSet.load(path) for path in args.sets}
    print("| set | IPC | teacher CE | CE percentile in class | pairwise distance | test-to-nearest distance |")
    print("|---|---|---|---|---|---|")
    for ipc in sorted({s.ipc for s in sets.values()}):
        draws = [stats(teacher, ds, SyntheticSet.from_real(ds, ipc, torch.Generator().manual_seed(k)), train_ce)
                 for k in range(5)]
        mean = [sum(v) / len(v) for v in zip(*draws)]
        print(f"| random real (5 draws) | {ipc} | " + " | ".join(f"{v:.4f}" if i == 0 else f"{v:.1f}"
                                                              for i, v in enumerate(mean)) + " |")
    for path, s in sets.items():
        row = stats(teacher, ds, s, train_ce)
        print(f"| {path} | {s.ipc} | " + " | ".join(f"{v:.4f}" if i == 0 else f"{v:.1f}" for i, v in enumerate(row)) + " |")


if __name__ == "__main__":
    main()
