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
    from dd.commands.eval import protocol_from_args
    from dd.eval.protocol import protocol_rule
    from dd.eval.rules import Teacher
    from dd.eval.run import teacher_for
    from dd.cli import data_options
    from dd.data import load_dataset
    from dd.eval.harness import options_for_set
    from dd.eval.labels import StoredLabels, relabel
    from dd.synset import SyntheticSet
    from dd.teachers import open_teachers
    from dd.utils import resolve_device

    from dd.commands.distill import check_teacher_model

    device = resolve_device(args.device)
    check_teacher_model(args.teachers, args.teacher_model)
    if not args.out:
        raise ValueError("ddtk relabel needs --out DIR (the label directory)")
    if args.epochs is None:
        raise ValueError("ddtk relabel needs --epochs E (how many epochs of views to store; training cycles through them)")
    synset = SyntheticSet.load(args.synset)
    protocol = protocol_from_args(args, (synset.meta.get("evaluation") or {}).get("protocol") or "teacher")
    if not isinstance(protocol_rule(protocol.labels), Teacher):  # the teacher protocol or a user's subclass of it
        raise ValueError(f"the set is scored under the '{protocol.name}' protocol but stored labels are teacher labels "
                         "(the views and loss of the teacher protocol): pass --protocol teacher (with --teacher SPEC "
                         "if the set records no teacher)")
    dataset = load_dataset(synset.meta["dataset"], root=args.data_root, zca=bool(synset.meta.get("zca")),
                           **options_for_set(synset.meta["dataset"], synset.meta, data_options(args)))
    teacher = teacher_for(args.teachers, args.teacher_model, synset, dataset, device)
    if teacher is None:
        raise ValueError("pass --teacher SPEC (the set records no teacher)")
    records = ([t.describe() for t in open_teachers(args.teachers, args.teacher_model)] if args.teachers
               else synset.meta["evaluation"]["teachers"])
    out = relabel(synset.images, teacher, protocol, args.epochs, args.out, seed=args.seed, topk=args.topk,
                  flip=dataset.flip_ok, teachers=records, device=device)
    labels = StoredLabels(out)
    print(f"wrote {labels.epochs} epochs of labels for {len(synset)} images to {out} ({labels.nbytes:,} bytes; the "
          f"images take {synset.images.numel() * synset.images.element_size():,} bytes)")
    return 0
