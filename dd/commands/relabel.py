"""`ddtk relabel`: store a teacher's labels of every augmented view of a set, epoch by epoch (FKD-style), resumable."""
from __future__ import annotations


def add_parser(sub, name):
    from dd.cli import add_common, positive_int
    from dd.commands.distill import add_teacher_options
    from dd.commands.eval import add_protocol_options

    p = sub.add_parser(name, help="store teacher labels (views + top-k logits per epoch) for a synthetic set",
                       description="Draws each epoch's teacher-protocol views of the set and stores them with the "
                                   "teacher's top-k logits in float16; `ddtk eval SET --labels DIR` trains on them without "
                                   "the teacher. Rerun the same command to resume.")
    p.add_argument("synset", help="a .safetensors synthetic set")
    p.add_argument("--topk", type=positive_int, default=10, help="logits kept per view (the rest get probability 0)")
    add_protocol_options(p)
    add_teacher_options(p)
    add_common(p)
    return p


def run(args) -> int:
    from dd.cli import data_options
    from dd.commands.distill import check_teacher_model
    from dd.commands.eval import protocol_overrides
    from dd.eval.labels import StoredLabels
    from dd.eval.plan import make_relabel_plan
    from dd.eval.run import relabel_set
    from dd.utils import resolve_device

    check_teacher_model(args.teachers, args.teacher_model)
    plan = make_relabel_plan(args.synset, args.out, args.epochs, protocol=args.protocol,
                             protocol_overrides=protocol_overrides(args), teachers=args.teachers or (),
                             teacher_model=args.teacher_model, topk=args.topk, seed=args.seed,
                             data_root=args.data_root, data_options=data_options(args))
    out, synset = relabel_set(plan, resolve_device(args.device))
    labels = StoredLabels(out)
    print(f"wrote {labels.epochs} epochs of labels for {len(synset)} images to {out} ({labels.nbytes:,} bytes; the "
          f"images take {synset.images.numel() * synset.images.element_size():,} bytes)")
    return 0
