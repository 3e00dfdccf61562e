"""How far recovered sets are from real digits: accuracy of several teachers on each set's images, and pixel stats.

    python experiments/recovered_vs_real.py --teacher runs/teacher_bn_w32 --teacher runs/teacher_lenet-bn \
        --teacher runs/teacher_mlp-bn runs/sre2l_noise_ipc10/synset.safetensors runs/cda_real_ipc10/synset.safetensors

Prints a Markdown table; a random real IPC-10 selection is the first row (results in sre2l_results.md).
"""
import argparse

import torch

from dd.data import load_dataset
from dd.eval import accuracy
from dd.synset import SyntheticSet
from dd.teachers import open_teacher


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sets", nargs="+", help="synthetic set files")
    ap.add_argument("--teacher", dest="teachers", action="append", required=True, help="teacher spec (repeatable)")
    ap.add_argument("--dataset", default="mnist10k")
    args = ap.parse_args(argv)
    ds = load_dataset(args.dataset)
    teachers = {t: open_teacher(t).module(ds) for t in args.teachers}
    sets = {"random real": SyntheticSet.from_real(ds, 10, torch.Generator().manual_seed(10_000))}
    sets.update({path: SyntheticSet.load(path) for path in args.sets})
    mean, std = torch.tensor(ds.mean).view(1, -1, 1, 1), torch.tensor(ds.std).view(1, -1, 1, 1)
    print("| set | " + " | ".join(teachers) + " | pixel mean | pixel std |")
    print("|---|" + "---|" * (len(teachers) + 2))
    for name, s in sets.items():
        accs = [100 * accuracy(t, s.images, s.hard_labels) for t in teachers.values()]
        pixels = s.images * std + mean
        print(f"| {name} | " + " | ".join(f"{a:.1f}" for a in accs) +
              f" | {float(pixels.mean()):.3f} | {float(pixels.std()):.3f} |")


if __name__ == "__main__":
    main()
