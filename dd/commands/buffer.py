"""`ddtk buffer`: record expert trajectories (MTT, FTD's flat GSAM experts, AST's smooth experts); resumable, torchrun-ready."""
from __future__ import annotations

import argparse


def add_parser(sub, name):
    from dd.buffers.config import EXPERT_KINDS, STORAGE_DTYPES
    from dd.cli import add_common, non_negative_float, non_negative_int, positive_float, positive_int

    p = sub.add_parser(name, help="train expert networks and record their parameter trajectories",
                       description="Trains N experts on the real training set and stores every epoch's parameters. "
                                   "Rerun the same command to resume; launch with `torchrun --nproc_per_node=K "
                                   "-m dd.cli buffer ...` to share the experts among K processes.")
    p.add_argument("--dataset", default="mnist10k", help="a registered name, folder:PATH or package.module:callable")
    p.add_argument("--model", default="convnet", help="architecture (see `ddtk models`)")
    p.add_argument("--model-option", dest="model_options", action="append", default=[], metavar="KEY=VALUE",
                   help="extra model constructor argument, e.g. --model-option width=16 (repeatable)")
    p.add_argument("--experts", type=positive_int, default=None, help="number of experts (default 100)")
    p.add_argument("--epochs", type=positive_int, default=None, help="training epochs per expert; epochs 0..E are stored (default 50)")
    p.add_argument("--expert-kind", choices=EXPERT_KINDS, default="mtt",
                   help="mtt: plain SGD (MTT); ftd: GSAM flat experts (FTD); smooth: AST's smooth experts")
    p.add_argument("--lr", type=positive_float, default=None, help="SGD lr (mtt/ftd 0.01, smooth 0.003)")
    p.add_argument("--batch", type=positive_int, default=None, help="batch size (256)")
    p.add_argument("--momentum", type=non_negative_float, default=None, help="SGD momentum (mtt/ftd 0, smooth 0.9)")
    p.add_argument("--weight-decay", type=non_negative_float, default=None, help="weight decay (mtt/ftd 0, smooth 1e-3)")
    p.add_argument("--lr-decay-epoch", type=non_negative_int, default=None, help="multiply lr by --lr-decay from this epoch (smooth: 26)")
    p.add_argument("--lr-decay", type=positive_float, default=None, help="lr factor at --lr-decay-epoch (smooth: 0.6)")
    p.add_argument("--dsa", action=argparse.BooleanOptionalAction, default=True, help="DSA augmentation (default on)")
    p.add_argument("--zca", action="store_true", help="ZCA-whiten the data (as MTT does for CIFAR)")
    p.add_argument("--rho", type=non_negative_float, default=None, help="GSAM radius (ftd: 0.01)")
    p.add_argument("--alpha", type=non_negative_float, default=None, help="GSAM surrogate-gap weight (ftd: 0.3; FTD uses 1 for some settings)")
    p.add_argument("--gp-lambda", type=non_negative_float, default=None, help="gradient-penalty weight (smooth: 2)")
    p.add_argument("--clip-epochs", type=non_negative_int, default=None, help="epochs of the clipping loss (smooth: 10)")
    p.add_argument("--dtype", choices=STORAGE_DTYPES, default="float32", help="storage dtype of the shards")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_common(p)
    return p


def buffer_config(args):
    """The BufferConfig that parsed `ddtk buffer` options record (dd.buffers.config.BufferRecipe: the --expert-kind
    preset with every given option applied)."""
    from dataclasses import fields

    from dd.buffers.config import BufferRecipe

    values = {f.name: getattr(args, f.name) for f in fields(BufferRecipe)}
    return BufferRecipe(**{**values, "model_options": parse_options(args.model_options)}).config()


def run(args) -> int:
    from dd.buffers import TrajectoryStore, record_buffer
    from dd.cli import data_options

    if not args.out:
        raise ValueError("ddtk buffer needs --out DIR (the buffer directory)")
    cfg = buffer_config(args)
    import os

    rank = int(os.environ.get("RANK", "0"))
    record_buffer(cfg, args.out, device=args.device, data_root=args.data_root, progress=not args.quiet and rank == 0,
                  data_options=data_options(args))
    if rank == 0:
        store = TrajectoryStore(args.out)
        accs = ", ".join(f"{100 * store.final_accuracy(k):.2f}" for k in range(store.num_experts))
        print(f"{store}\nfinal test accuracy per expert (%): {accs}")
    return 0


def parse_options(items: list[str]) -> dict:
    """KEY=VALUE strings -> dict; values are read as JSON when they parse (16, 0.5, true), else kept as text."""
    import json

    from dd.utils import parse_assignments

    out = {}
    for k, v in parse_assignments(items, "--model-option").items():
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out
