"""`distill()`: runs any registered method with checkpoints, resume, validation, logging and a final report.

The loop is the same for every method: init -> K x step -> (every few minutes) checkpoint ->
(every eval_every) score on a validation split carved from the training data, keep the best ->
save the best set and evaluate it on the test split with the harness, beside the baselines.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from tqdm.auto import tqdm

from dd.data import ImageDataset, load_dataset
from dd.eval import build_report, get_protocol, train_and_test
from dd.eval.rules import EvalInputs
from dd.distributed import ProcessGroup
from dd.lock import output_lock
from dd.methods.base import DistillationDiverged, Scoring, Inputs, Method
# the plan's names, also importable from here (their home before the plan had a module of its own)
from dd.methods.plan import (CADENCE, RunConfig, RunPlan, check_inputs, content_identity, make_plan,  # noqa: F401
                             method_class, open_inputs, resolve, run_config, run_identity, same_run)
from dd.synset import SyntheticSet, recorded_paths
from dd.utils import (atomic_write_bytes, atomic_write_text, dict_diff, read_safetensors, remove_stale_temps,
                      resolve_device, safetensors_bytes, safetensors_header, sha256_bytes, to_jsonable, versions)

CHECKPOINT = "checkpoint.safetensors"


@dataclass
class DistillResult:
    synset: SyntheticSet
    out: Optional[Path]
    report: Any = None
    history: list = field(default_factory=list)


def run_finished(out: str | Path, identity: dict, run: RunConfig | dict | None) -> bool:
    """Does `out` hold the finished set of the run with this identity (see run_identity) and run options: its
    config.json is the same run (same_run: the inputs compared by content, not path), and its set's metadata records
    the same method, data, inputs, config and run options (CADENCE aside)? A run option the set does not record
    (added to RunConfig after it was made) counts as its default, which is how that set was made."""
    from dd.synset import read_header

    out = Path(out)
    header = read_header(out / "synset.safetensors")
    if header is None or not (out / "config.json").is_file():
        return False
    if not same_run(json.loads((out / "config.json").read_text()), identity):
        return False
    meta = recorded_paths(json.loads(header.get("meta", "{}")), out, "resolve")  # its paths as SyntheticSet.load reads
    keys = ("method", "ipc", "seed", "config", "inputs", "dataset")
    same = same_run({k: meta.get(k) for k in keys}, {k: identity[k] for k in keys})
    wanted = {k: v for k, v in _run_meta(run_config(run)).items() if k not in CADENCE}
    recorded = {**to_jsonable(asdict(RunConfig())), **(meta.get("run") or {})}
    return same and {k: v for k, v in recorded.items() if k not in CADENCE} == wanted


def checkpoint_identity(path: str | Path) -> Optional[dict]:
    """The identity a distill checkpoint was written for (None when there is none or it is unreadable)."""
    try:
        return json.loads(safetensors_header(path)["identity"])
    except Exception:  # noqa: BLE001 - unreadable is the answer, not an error
        return None


def load_data(plan: RunPlan) -> ImageDataset:
    """The plan's dataset, read with its resolved ZCA setting (a given ImageDataset must agree with it)."""
    if isinstance(plan.dataset, ImageDataset):
        if (plan.dataset.zca is not None) != bool(plan.config.zca):
            raise ValueError(f"the resolved config has zca={bool(plan.config.zca)} but the given dataset is "
                             f"{'' if plan.dataset.zca is not None else 'not '}ZCA-whitened; pass load_dataset("
                             f"'{plan.dataset_name}', zca={bool(plan.config.zca)}) or set zca explicitly")
        return plan.dataset
    return load_dataset(plan.dataset, root=plan.data_root, zca=plan.config.zca, **plan.data_options)


def prepare(method: str | RunPlan, dataset: str | ImageDataset = "mnist10k", ipc: int = 10,
            config: dict | None = None, *, buffers: Sequence = (), teachers: Sequence = (), teacher_model=None,
            data_root: Optional[str] = None, data_options: Optional[dict] = None):
    """A run's plan (given, or made from these arguments: see make_plan) with its data loaded: (method class,
    resolved config, opened inputs, loaded dataset)."""
    plan = method if isinstance(method, RunPlan) else make_plan(
        method, dataset, ipc, config=config, buffers=buffers, teachers=teachers, teacher_model=teacher_model,
        data_root=data_root, data_options=data_options)
    return plan.method, plan.config, plan.inputs, load_data(plan)


def build_method(method: str | RunPlan, dataset: str | ImageDataset = "mnist10k", ipc: int = 10,
                 config: dict | None = None, *, buffers: Sequence = (), teachers: Sequence = (), teacher_model=None,
                 device="cpu", seed: int = 0, init: bool = True) -> Method:
    """A ready method object (config resolved, inputs opened, initial set made) outside the driver's loop; a given
    RunPlan brings its own device and seed."""
    plan = method if isinstance(method, RunPlan) else make_plan(
        method, dataset, ipc, config=config, buffers=buffers, teachers=teachers, teacher_model=teacher_model,
        device=device, seed=seed)
    m = plan.method(plan.config, load_data(plan), plan.ipc, resolve_device(plan.device),
                    torch.Generator().manual_seed(plan.seed), plan.inputs)
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
    The arguments become a RunPlan (make_plan: everything checked before any data is read), run by run_plan.
    """
    return run_plan(make_plan(method, dataset, ipc, out=out, buffer=buffer, buffers=buffers, teachers=teachers,
                              teacher_model=teacher_model, config=config, run=run, device=device, seed=seed,
                              data_root=data_root, resume=resume, data_options=data_options))


def run_plan(plan: RunPlan) -> DistillResult:
    """Runs a plan. With `plan.out`, the directory is locked for the whole run (dd.lock): a second writer is refused
    before it reads any data, and a lock left by a killed run is taken over, so rerunning resumes from its
    checkpoint."""
    group = ProcessGroup(resolve_device(plan.device))
    try:
        if group.world != plan.world:
            raise ValueError(f"the run was planned for {plan.world} process(es) but runs in {group.world}; make the "
                             "plan inside the torchrun job")
        with output_lock(plan.out, group) if plan.out is not None else contextlib.nullcontext():
            return _distill(plan.method, plan.config, plan.inputs, load_data(plan), plan.ipc, plan.out, plan.run,
                            group, plan.seed, plan.resume, plan.identity)
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


def _run_meta(run: RunConfig) -> dict:
    """The run options a set records: its coreset network, a spec given relative to the working directory too, as an
    absolute path (the set file writes it relative to itself)."""
    from dd.teachers import absolute_spec

    meta = to_jsonable(asdict(run))
    return {**meta, "coreset_net": absolute_spec(meta["coreset_net"])} if meta.get("coreset_net") else meta


def _finalize_meta(s: SyntheticSet, identity: dict, best: dict, run: RunConfig, plan: Optional[Scoring] = None) -> SyntheticSet:
    s = s.detach()
    s.meta.update({"method": identity["method"], "ipc": identity["ipc"], "seed": identity["seed"],
                   "config": identity["config"], "run": _run_meta(run), "inputs": identity["inputs"],
                   "buffer_sha256": identity["buffer_sha256"], "selected": best, "versions": versions()})
    if plan is not None:
        # the teachers and labels its evaluation reopens, as absolute paths (a spec given relative to the working
        # directory too): the set file writes them relative to itself (dd.synset.recorded_paths)
        s.meta["evaluation"] = recorded_paths({"evaluation": to_jsonable(plan.to_meta())}, Path.cwd(),
                                              "resolve")["evaluation"]
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
    diff = dict_diff(content_identity(saved), content_identity(identity), "checkpoint")  # inputs by content
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
