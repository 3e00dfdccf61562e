"""`distill()`: runs any registered method with checkpoints, resume, validation, logging and a final report.

The loop is the same for every method: init -> K x step -> (every few minutes) checkpoint ->
(every eval_every) score on a validation split carved from the training data, keep the best ->
save the best set and evaluate it on the test split with the harness, beside the baselines.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from tqdm.auto import tqdm

from dd.data import ImageDataset, base_name, load_dataset
from dd.eval import Protocol, build_report, get_protocol, train_and_test
from dd.eval.rules import EvalInputs
from dd.eval.baselines import BASELINES
from dd.coresets import check_network
from dd.distributed import ProcessGroup
from dd.lock import output_lock
from dd.methods.base import (DistillationDiverged, EvalPlan, Inputs, Method, check_input_counts, coerce_fields,
                             config_from_dict)
from dd.methods.registry import METHODS
from dd.models import check_model
from dd.synset import SyntheticSet
from dd.utils import (atomic_write_bytes, atomic_write_text, check_ipc, dict_diff, read_safetensors, remove_stale_temps,
                      resolve_device, safetensors_bytes, safetensors_header, sha256_bytes, to_jsonable, versions)
from dd.validate import check_dataclass, rule

CHECKPOINT = "checkpoint.safetensors"


@dataclass
class RunConfig:
    """The driver's options (the method's own live in its Config)."""

    # outer iterations (per batch of images for methods that recover batch by batch)
    iterations: int = field(default=1000, metadata=rule(ge=1))
    # validate every N iterations (0: never; the final set is then the last one)
    eval_every: int = field(default=100, metadata=rule(ge=0))
    val_fraction: float = field(default=0.1, metadata=rule(ge=0, lt=1))  # carved, stratified, from the training split
    val_epochs: int = field(default=300, metadata=rule(ge=1))
    val_runs: int = field(default=1, metadata=rule(ge=1))
    eval_models: tuple[str, ...] = ()  # architectures of the final report (default: the method's model)
    # epochs of the final report (None: the protocol's own, 1000 hard / 300 teacher)
    eval_epochs: Optional[int] = field(default=None, metadata=rule(ge=1))
    eval_runs: int = field(default=5, metadata=rule(ge=0))  # 0: no final report
    eval_options: dict = field(default_factory=dict)  # other Protocol fields of the final report (e.g. temperature)
    # scored beside the set, under its protocol and teacher
    baselines: tuple[str, ...] = field(default=("random", "full"), metadata=rule(choices=BASELINES))
    coreset_net: Optional[str] = None  # herding/kcenter embeddings, forgetting's buffer (None: the teacher or buffer)
    full_epochs: int = field(default=30, metadata=rule(ge=1))
    checkpoint_minutes: float = field(default=5.0, metadata=rule(ge=0))
    checkpoint_every: int = field(default=0, metadata=rule(ge=0))  # also every N iterations (0: time-based only)
    wandb: bool = False
    wandb_project: str = "dd"
    progress: bool = True


# RunConfig options that only change how often a run saves or what it prints, never its result
CADENCE = frozenset({"checkpoint_minutes", "checkpoint_every", "progress", "wandb", "wandb_project"})


@dataclass
class DistillResult:
    synset: SyntheticSet
    out: Optional[Path]
    report: Any = None
    history: list = field(default_factory=list)


def identity(cls: type, mcfg, inputs: Inputs, dataset: str | ImageDataset, ipc: int, seed: int, run: RunConfig, *,
             world: int = 1, data_options: Optional[dict] = None) -> dict:
    """What must match for a checkpoint to be resumed (cadence and iteration count may change): the one function
    behind `distill` (a loaded dataset: its name and size) and `run_identity` (a name, unread: its size from the
    data options). `image_size` only for datasets read at a chosen resolution (image trees), so other checkpoints
    keep their identity; `method_module` only for a method defined outside dd/ (`ddtk plot` imports it from there)."""
    from dd.data import resolution

    if isinstance(dataset, ImageDataset):
        name = dataset.name
        image_size = list(dataset.image_size) if resolution(base_name(name)) is not None else None
    else:
        name = base_name(dataset)
        name = name if ":" in name else name.lower()  # folder:PATH and module:callable keep their case
        res = resolution(name, data_options)
        image_size = [res, res] if res is not None else None
    keep = {"val_fraction", "val_epochs", "val_runs"}
    hashes = inputs.hashes()
    outside = {} if cls.__module__.split(".")[0] == "dd" else {"method_module": cls.__module__}  # where it registers
    return to_jsonable({"method": cls.name, **outside, "dataset": name, "ipc": ipc, "seed": seed, "config": asdict(mcfg),
                        "run": {k: v for k, v in asdict(run).items() if k in keep}, "inputs": hashes,
                        "buffer_sha256": hashes["buffers"][0]["sha256"] if hashes["buffers"] else None,
                        **({"processes": world} if world > 1 else {}),
                        **({"image_size": image_size} if image_size is not None else {})})


def open_inputs(cls: type, buffers: Sequence = (), teachers: Sequence = (), teacher_model=None,
                verify: str = "open") -> Inputs:
    """Opens (and hash-checks) every buffer and teacher a method is given; refuses counts it does not declare.

    verify: how buffer shards are checked (dd.buffers.TrajectoryStore); 'lazy' reads none of them here, for callers
    that only need the inputs' identity (their manifests' hashes)."""
    from dd.buffers import TrajectoryStore
    from dd.teachers import open_teachers

    buffers = [b for b in buffers if b]
    teachers = [t for t in teachers if t]
    check_input_counts(cls, len(buffers), len(teachers))
    return Inputs([TrajectoryStore(b, verify=verify) for b in buffers], open_teachers(teachers, teacher_model))


def check_inputs(inputs: Inputs, dataset: str, cfg) -> None:
    """Every buffer and teacher must come from this dataset and ZCA setting; buffers also from the method's model."""
    for store in inputs.buffers:
        store.check_compatible(dataset=base_name(dataset), model=cfg.model)
        if bool(store.config.get("zca", False)) != bool(cfg.zca):
            raise ValueError(f"buffer '{store.path}' was recorded with zca={bool(store.config.get('zca'))} but this run "
                             f"resolves zca={bool(cfg.zca)}; set zca to match or record another buffer")
    for teacher in inputs.teachers:
        teacher.check_compatible(dataset, cfg.zca)


def method_class(name: str) -> type:
    """A registered method by name; `package.module:name` imports the user's module first (it registers itself)."""
    if ":" in name:
        import importlib

        module, _, name = name.partition(":")
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise KeyError(f"cannot import the module of method '{module}:{name}': {e}") from e
    return METHODS.get(name)


def resolve(method: str, dataset: str, ipc: int, config: dict | None = None, *, buffers: Sequence = (),
            teachers: Sequence = (), teacher_model=None, verify: str = "open"):
    """(method class, resolved config, opened inputs) of a run, without reading any data.

    Order: open and hash the inputs -> resolve the config (user > config file > preset > default, plus rules that
    read the inputs) -> check the inputs against it.
    """
    cls = method_class(method)
    check_ipc(ipc)
    inputs = open_inputs(cls, buffers, teachers, teacher_model, verify=verify)
    mcfg = cls.resolve_config(dict(config or {}), dataset, ipc, inputs)
    check_model(mcfg.model, f"option 'model' of method '{cls.name}' (--model)")
    check_inputs(inputs, dataset, mcfg)
    return cls, mcfg, inputs


def run_config(run: RunConfig | dict | None) -> RunConfig:
    """The driver's options as a checked RunConfig (its eval_options typed as Protocol fields), before any work."""
    if isinstance(run, RunConfig):
        check_dataclass(run)
    else:
        run = config_from_dict(RunConfig, dict(run or {}))
    for arch in run.eval_models:
        check_model(arch, "eval_models (--eval-models)")
    check_network(run.coreset_net, run.baselines, "coreset_net (--coreset-net)")
    return replace(run, eval_options=coerce_fields(Protocol, run.eval_options), baselines=tuple(run.baselines))


def run_identity(method: str, dataset: str, ipc: int, *, buffer: str | Path | None = None, buffers: Sequence = (),
                 teachers: Sequence = (), teacher_model=None, config: dict | None = None,
                 run: RunConfig | dict | None = None, seed: int = 0, data_options: Optional[dict] = None) -> dict:
    """The identity a one-process `distill` with these arguments writes to OUT/config.json and its checkpoint
    (what must match for a resume), computed without reading the data: `ddtk reproduce` compares it with an
    existing output directory to decide between reusing, resuming and starting over."""
    name = base_name(dataset)
    name = name if ":" in name else name.lower()  # folder:PATH and module:callable keep their case
    cls, mcfg, inputs = resolve(method, name, ipc, config, buffers=[buffer, *buffers], teachers=teachers,
                                teacher_model=teacher_model, verify="lazy")  # the identity holds manifest hashes only
    return identity(cls, mcfg, inputs, name, ipc, seed, run_config(run), data_options=data_options)


def run_finished(out: str | Path, identity: dict, run: RunConfig | dict | None) -> bool:
    """Does `out` hold the finished set of the run with this identity (see run_identity) and run options: its
    config.json is the identity, and its set's metadata records the same method, data, inputs, config and run
    options (CADENCE aside)?"""
    from dd.synset import read_header

    out = Path(out)
    header = read_header(out / "synset.safetensors")
    if header is None or not (out / "config.json").is_file():
        return False
    if json.loads((out / "config.json").read_text()) != identity:
        return False
    meta = json.loads(header.get("meta", "{}"))
    same = all(meta.get(k) == identity[k] for k in ("method", "ipc", "seed", "config", "inputs", "dataset"))
    wanted = {k: v for k, v in to_jsonable(asdict(run_config(run))).items() if k not in CADENCE}
    return same and {k: v for k, v in (meta.get("run") or {}).items() if k not in CADENCE} == wanted


def checkpoint_identity(path: str | Path) -> Optional[dict]:
    """The identity a distill checkpoint was written for (None when there is none or it is unreadable)."""
    try:
        return json.loads(safetensors_header(path)["identity"])
    except Exception:  # noqa: BLE001 - unreadable is the answer, not an error
        return None


def prepare(method: str, dataset: str | ImageDataset, ipc: int, config: dict | None = None, *, buffers: Sequence = (),
            teachers: Sequence = (), teacher_model=None, data_root: Optional[str] = None,
            data_options: Optional[dict] = None):
    """Resolves a run before touching data (see `resolve`), then loads the data with the resolved ZCA setting (and
    `data_options`, see dd.data.load_dataset): (method class, resolved config, opened inputs, loaded dataset)."""
    name = base_name(dataset.name) if isinstance(dataset, ImageDataset) else dataset
    cls, mcfg, inputs = resolve(method, name, ipc, config, buffers=buffers, teachers=teachers,
                                teacher_model=teacher_model)
    if isinstance(dataset, ImageDataset):
        if (dataset.zca is not None) != bool(mcfg.zca):
            raise ValueError(f"the resolved config has zca={bool(mcfg.zca)} but the given dataset is "
                             f"{'' if dataset.zca is not None else 'not '}ZCA-whitened; pass load_dataset('{name}', "
                             f"zca={bool(mcfg.zca)}) or set zca explicitly")
        full = dataset
    else:
        full = load_dataset(dataset, root=data_root, zca=mcfg.zca, **(data_options or {}))
    return cls, mcfg, inputs, full


def build_method(method: str, dataset: str | ImageDataset, ipc: int, config: dict | None = None, *,
                 buffers: Sequence = (), teachers: Sequence = (), teacher_model=None,
                 device="cpu", seed: int = 0, init: bool = True) -> Method:
    """A ready method object (config resolved, inputs opened, initial set made) outside the driver's loop."""
    cls, mcfg, inputs, full = prepare(method, dataset, ipc, config, buffers=buffers, teachers=teachers,
                                      teacher_model=teacher_model)
    m = cls(mcfg, full, ipc, resolve_device(device), torch.Generator().manual_seed(seed), inputs)
    if init:
        m.init_synset()
    return m


def distill(method: str = "dm", dataset: str | ImageDataset = "mnist10k", ipc: int = 10, *, out: str | Path | None = None,
            buffer: str | Path | None = None, buffers: Sequence = (), teachers: Sequence = (),
            teacher_model=None, config: dict | None = None, run: RunConfig | dict | None = None,
            device="auto", seed: int = 0, data_root: str | None = None, resume: bool = True,
            data_options: Optional[dict] = None) -> DistillResult:
    """Distils `dataset` into `ipc` images per class with `method`; see RunConfig for the loop's options.

    data_options: how an image tree is read (dd.data.DATA_OPTIONS: res, file_backed_above_mib, skip_bad_images,
    workers); the resolution is part of the run's identity, so a checkpoint is resumed only at the same one.

    With `out`, the directory is locked for the whole run (dd.lock): a second writer is refused before it reads
    any data, and a lock left by a killed run is taken over, so rerunning resumes from its checkpoint.
    """
    run = run_config(run)  # checked before any work starts
    group = ProcessGroup(resolve_device(device))
    try:
        with output_lock(out, group) if out is not None else contextlib.nullcontext():
            cls, mcfg, inputs, full = prepare(method, dataset, ipc, config, buffers=[buffer, *buffers],
                                              teachers=teachers, teacher_model=teacher_model, data_root=data_root,
                                              data_options=data_options)
            ident = identity(cls, mcfg, inputs, full, ipc, seed, run, world=group.world)
            return _distill(cls, mcfg, inputs, full, ipc, out, run, group, seed, resume, ident)
    finally:
        group.close()


def _distill(cls, mcfg, inputs: Inputs, full: ImageDataset, ipc: int, out, run: RunConfig, group: ProcessGroup, seed: int,
             resume: bool, identity: dict) -> DistillResult:
    if group.world > 1 and not cls.shardable:
        raise ValueError(f"method '{cls.name}' does not split its work across processes; run it without torchrun")
    dev = group.local_device()
    validate = bool(run.eval_every) and not cls.partial_sets
    train, val = full.split_validation(run.val_fraction, seed=0) if validate else (full, None)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    m: Method = cls(mcfg, train, ipc, dev, g, inputs, group)
    m.init_synset()
    main = group.is_main
    out_dir = Path(out) if out else None
    ckpt = CHECKPOINT if group.world == 1 else f"checkpoint.rank{group.rank}of{group.world}.safetensors"
    logger = _Logger(out_dir if main else None, run, identity)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        if main:
            remove_stale_temps(out_dir / "grids")  # the lock removed OUT's own; a killed run's grid temps too
    total = m.num_steps(run.iterations)
    start_it, best, history = 0, {"acc": -1.0, "it": -1}, []
    spent = 0.0  # this process's step seconds (the logged sum, resumed processes included, when there is an OUT)
    best_set: Optional[SyntheticSet] = None

    if out_dir is not None and resume and (out_dir / ckpt).exists():
        start_it, best, best_set, history = _load_checkpoint(out_dir / ckpt, m, g, identity)
        logger.truncate(start_it)
        print(f"resuming {cls.name} from iteration {start_it} ({out_dir / ckpt})")
    else:
        logger.truncate(0)  # a run that starts over (--restart, or killed before its first checkpoint) logs afresh

    plan_val = m.evaluation() if validate else None
    last_ckpt = time.monotonic()
    bar = tqdm(range(start_it, total), desc=f"{cls.name} ipc{ipc}", initial=start_it, total=total,
               disable=not (run.progress and main))
    it = start_it
    try:
        for it in bar:
            t0 = time.perf_counter()
            metrics = m.step(it)
            loss = metrics.get("loss", float("nan"))
            skipped = cls.skip_flag is not None and metrics.get(cls.skip_flag)
            if not torch.isfinite(torch.tensor(float(loss))) and not skipped:
                raise DistillationDiverged(f"{cls.name}: loss became {loss} at iteration {it}")
            metrics = {"it": it, **{k: float(v) for k, v in metrics.items()}, "sec": time.perf_counter() - t0}
            spent += metrics["sec"]
            logger.log(metrics)
            bar.set_postfix(loss=f"{loss:.4f}")
            done = it + 1
            if validate and (done % run.eval_every == 0 or done == total):
                s = m.current_set()
                protocol_val = get_protocol(plan_val.protocol, epochs=run.val_epochs)
                accs = [train_and_test(s.images, s.labels, val, mcfg.model, protocol_val, seed=seed + 1000 + r, device=dev,
                                       lr=s.lr, inputs=EvalInputs(plan_val.teacher)) for r in range(run.val_runs)]
                acc = sum(accs) / len(accs)
                history.append({"it": done, "val_acc": acc})
                logger.log({"it": it, "val_acc": acc})
                logger.grid(s, done)
                if acc > best["acc"]:
                    best, best_set = {"acc": acc, "it": done}, s
                    if out_dir is not None:
                        _finalize_meta(best_set, identity, best, run).save(out_dir / "best.safetensors")
                bar.write(f"[{cls.name}] it {done}: val acc {100 * acc:.2f}% (best {100 * best['acc']:.2f}% at {best['it']})")
            due = (time.monotonic() - last_ckpt) > 60 * run.checkpoint_minutes
            if out_dir is not None and (due or (run.checkpoint_every and done % run.checkpoint_every == 0)):
                _save_checkpoint(out_dir / ckpt, m, g, identity, done, best, best_set, history)
                last_ckpt = time.monotonic()
    except DistillationDiverged as e:
        logger.close()
        if out_dir is not None and (out_dir / ckpt).exists():
            kept = (f"; the last good checkpoint is kept in {out_dir / ckpt}; to start over with a lower lr (e.g. "
                    "--set lr_img=...) pass --restart")
        else:
            kept = "; no checkpoint was written before it (lower the method's lr, e.g. --set lr_img=...)"
        raise DistillationDiverged(f"{e}{kept}") from None
    if out_dir is not None and total > start_it:
        _save_checkpoint(out_dir / ckpt, m, g, identity, total, best, best_set, history)

    final = m.current_set()  # a collective for methods that shard their work
    if not main:
        logger.close()
        return DistillResult(final, out_dir, None, history)
    chosen = best_set if best_set is not None else final
    protocol = get_protocol(m.evaluation().protocol, epochs=run.eval_epochs, **run.eval_options)
    chosen = m.finalize(chosen, out_dir, protocol)
    plan = m.evaluation()
    chosen = _finalize_meta(chosen, identity, best, run, plan)
    report = None
    if out_dir is not None:
        _finalize_meta(final, identity, best, run, plan).save(out_dir / "final.safetensors")
        chosen.save(out_dir / "synset.safetensors")
        chosen.save_grid(out_dir / "synset.png")
    # the report's budget: the steps' wall time, every resumed process's included; kept out of the saved files so
    # identical runs still write identical bytes
    chosen.meta["wall_seconds"] = logged_seconds(out_dir) if out_dir is not None else spent
    if run.eval_runs > 0:
        archs = list(run.eval_models) or [mcfg.model]
        report = build_report(chosen, archs, protocol, run.eval_runs, dataset=full, baselines=run.baselines,
                              full_epochs=run.full_epochs, device=dev, seed=seed, progress=run.progress,
                              teacher=plan.teacher, labels=plan.labels, coreset_net=_coreset_net(run, inputs))
        if out_dir is not None:
            report.save(out_dir, stem="eval")
        logger.log({"it": total, **{f"test_acc/{r.name}/{r.arch}": r.mean for r in report.rows}})
        print(report.to_markdown())
    logger.close()
    return DistillResult(chosen, out_dir, report, history)


def logged_seconds(out_dir: str | Path) -> Optional[float]:
    """The wall time that made a run's set: the sum of its iterations' `sec` in OUT/metrics.jsonl (a resumed run
    keeps each iteration once); validation, checkpoints and the final evaluation are not counted. None: no log."""
    path = Path(out_dir) / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return _steps_seconds(rows)


def _steps_seconds(rows: list) -> float:
    return float(sum(r["sec"] for r in rows if "sec" in r))


def _coreset_net(run: RunConfig, inputs: Inputs) -> Optional[str]:
    """The network the coreset baselines read: run.coreset_net, else the run's first teacher, else its buffer."""
    if run.coreset_net:
        return run.coreset_net
    if inputs.teachers:
        return inputs.teachers[0].spec
    return str(inputs.buffers[0].path) if inputs.buffers else None


def _finalize_meta(s: SyntheticSet, identity: dict, best: dict, run: RunConfig, plan: Optional[EvalPlan] = None) -> SyntheticSet:
    s = s.detach()
    s.meta.update({"method": identity["method"], "ipc": identity["ipc"], "seed": identity["seed"],
                   "config": identity["config"], "run": to_jsonable(asdict(run)), "inputs": identity["inputs"],
                   "buffer_sha256": identity["buffer_sha256"], "selected": best, "versions": versions()})
    if plan is not None:
        s.meta["evaluation"] = to_jsonable(plan.to_meta())
    return s


def _save_checkpoint(path: Path, m: Method, g: torch.Generator, identity: dict, it: int, best: dict,
                     best_set: Optional[SyntheticSet], history: list) -> None:
    tensors, info = m.state()
    tensors = {f"method.{k}": v.detach().cpu().contiguous() for k, v in tensors.items()}
    tensors["rng.driver"] = g.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    if best_set is not None:
        tensors.update({f"best.{k}": v for k, v in best_set.tensors().items()})
    header = {"identity": json.dumps(identity, sort_keys=True), "iteration": str(it),
              "best": json.dumps(best, sort_keys=True), "history": json.dumps(history, sort_keys=True),
              "method_info": json.dumps(to_jsonable(info), sort_keys=True),
              "best_meta": json.dumps(to_jsonable(best_set.meta), sort_keys=True) if best_set is not None else "null",
              "best_num_classes": str(best_set.num_classes) if best_set is not None else "0"}
    header["integrity"] = _checkpoint_digest(header, tensors)
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata=header))


def _checkpoint_digest(header: dict, tensors: dict) -> str:
    """sha256 over a checkpoint's header and every tensor's bytes: a flipped byte anywhere is refused on resume."""
    from dd.synset import _digest

    parts = {"header": {k: v for k, v in header.items() if k != "integrity"},
             "tensors": {k: _digest(v.reshape(-1)) for k, v in tensors.items()}}  # reshape: 0-dim tensors too
    return sha256_bytes(json.dumps(parts, sort_keys=True).encode())


def _load_checkpoint(path: Path, m: Method, g: torch.Generator, identity: dict):
    try:
        header, tensors = read_safetensors(path)
    except Exception as e:
        raise RuntimeError(f"checkpoint '{path}' is unreadable ({e}); delete it to start over") from e
    if header.get("integrity") is not None and header["integrity"] != _checkpoint_digest(header, tensors):
        raise RuntimeError(f"checkpoint '{path}' is damaged (its content does not match its recorded sha256); delete "
                           "it to start over")
    saved = json.loads(header["identity"])
    diff = dict_diff(saved, identity, "checkpoint")
    if diff:
        raise ValueError(f"'{path.parent}' holds a checkpoint of a different run; differences: {'; '.join(diff)}. "
                         "Use another --out, or delete the checkpoint to start over")
    m.load_state({k[len("method."):]: v for k, v in tensors.items() if k.startswith("method.")},
                 json.loads(header["method_info"]))
    g.set_state(tensors["rng.driver"])
    torch.set_rng_state(tensors["rng.torch"])
    best_set = None
    if header["best_meta"] != "null":
        bt = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}
        best_set = SyntheticSet.from_tensors(bt, int(header["best_num_classes"]), json.loads(header["best_meta"]))
    return int(header["iteration"]), json.loads(header["best"]), best_set, json.loads(header["history"])


class _Logger:
    """metrics.jsonl and PNG grids always; Weights & Biases when asked (optional dependency)."""

    def __init__(self, out: Optional[Path], run: RunConfig, identity: dict):
        self.out = out
        self.wb = None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "config.json", json.dumps(identity, indent=2, sort_keys=True) + "\n")
        if run.wandb:
            try:
                import wandb
            except ImportError as e:
                raise RuntimeError("--wandb needs the optional extra: pip install 'dd-toolkit[wandb]'") from e
            self.wb = wandb.init(project=run.wandb_project, config=identity, dir=str(out) if out else None)

    def truncate(self, it: int) -> None:
        """Drops log lines past the checkpoint being resumed (they will be produced again)."""
        if self.out is None or not (self.out / "metrics.jsonl").exists():
            return
        lines = [ln for ln in (self.out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        keep = [ln for ln in lines if json.loads(ln).get("it", -1) < it]
        atomic_write_text(self.out / "metrics.jsonl", "".join(ln + "\n" for ln in keep))

    def log(self, row: dict) -> None:
        if self.out is not None:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        if self.wb is not None:
            self.wb.log({k: v for k, v in row.items() if k != "it"}, step=int(row["it"]))

    def grid(self, s: SyntheticSet, it: int) -> None:
        if self.out is not None:
            path = s.save_grid(self.out / "grids" / f"it{it:06d}.png")
            if self.wb is not None:
                import wandb

                self.wb.log({"synset": wandb.Image(str(path)), **({"lr": s.lr} if s.lr else {})}, step=it)

    def close(self) -> None:
        if self.wb is not None:
            self.wb.finish()
            self.wb = None
