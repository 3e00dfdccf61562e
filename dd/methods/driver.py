"""`distill()`: runs any registered method with checkpoints, resume, validation, logging and a final report.

The loop is the same for every method: init -> K x step -> (every few minutes) checkpoint ->
(every eval_every) score on a validation split carved from the training data, keep the best ->
save the best set and evaluate it on the test split with the harness, beside the baselines.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from dd.data import ImageDataset, load_dataset
from dd.eval import build_report, get_protocol, train_and_test
from dd.methods.base import DistillationDiverged, Method, config_from_dict
from dd.methods.registry import METHODS
from dd.synset import SyntheticSet
from dd.utils import atomic_write_bytes, atomic_write_text, resolve_device, to_jsonable, versions

CHECKPOINT = "checkpoint.safetensors"


@dataclass
class RunConfig:
    """The driver's options (the method's own live in its Config)."""

    iterations: int = 1000
    eval_every: int = 100  # validate every N iterations (0: never; the final set is then the last one)
    val_fraction: float = 0.1  # carved, stratified, from the training split
    val_epochs: int = 300
    val_runs: int = 1
    eval_models: tuple[str, ...] = ()  # architectures of the final report (default: the method's model)
    eval_epochs: int = 1000
    eval_runs: int = 5
    baselines: tuple[str, ...] = ("random", "full")
    full_epochs: int = 30
    checkpoint_minutes: float = 5.0
    checkpoint_every: int = 0  # also checkpoint every N iterations (0: time-based only)
    wandb: bool = False
    wandb_project: str = "dd"
    progress: bool = True


@dataclass
class DistillResult:
    synset: SyntheticSet
    out: Optional[Path]
    report: Any = None
    history: list = field(default_factory=list)


def _identity(method: str, dataset: str, ipc: int, seed: int, method_cfg: dict, run: RunConfig, buffer_hash) -> dict:
    """What must match for a checkpoint to be resumed (cadence and iteration count may change)."""
    keep = {"val_fraction", "val_epochs", "val_runs"}
    return to_jsonable({"method": method, "dataset": dataset, "ipc": ipc, "seed": seed, "config": method_cfg,
                        "run": {k: v for k, v in asdict(run).items() if k in keep}, "buffer_sha256": buffer_hash})


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: checkpoint {va!r} vs now {vb!r}")
    return out


def open_buffer(path, dataset: ImageDataset, model: str):
    from dd.buffers import TrajectoryStore

    store = TrajectoryStore(path)
    store.check_compatible(dataset=dataset.name.split(":")[0], model=model)
    return store


def distill(method: str = "dm", dataset: str | ImageDataset = "mnist10k", ipc: int = 10, *, out: str | Path | None = None,
            buffer: str | Path | None = None, config: dict | None = None, run: RunConfig | dict | None = None,
            device="auto", seed: int = 0, data_root: str | None = None, resume: bool = True) -> DistillResult:
    """Distils `dataset` into `ipc` images per class with `method`; see RunConfig for the loop's options."""
    cls = METHODS.get(method)
    mcfg = config_from_dict(cls.Config, dict(config or {}))
    run = run if isinstance(run, RunConfig) else config_from_dict(RunConfig, dict(run or {}))
    dev = resolve_device(device)
    full = dataset if isinstance(dataset, ImageDataset) else load_dataset(dataset, root=data_root, zca=mcfg.zca)
    train, val = full.split_validation(run.val_fraction, seed=0) if run.eval_every else (full, None)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    store = open_buffer(buffer, full, mcfg.model) if buffer else None
    buffer_hash = getattr(store, "manifest_sha256", None)
    identity = _identity(cls.name, full.name, ipc, seed, asdict(mcfg), run, buffer_hash)
    m: Method = cls(mcfg, train, ipc, dev, g, buffer=store)
    m.init_synset()
    out_dir = Path(out) if out else None
    logger = _Logger(out_dir, run, identity)
    start_it, best, history = 0, {"acc": -1.0, "it": -1}, []
    best_set: Optional[SyntheticSet] = None

    if out_dir is not None and resume and (out_dir / CHECKPOINT).exists():
        start_it, best, best_set, history = _load_checkpoint(out_dir, m, g, identity)
        logger.truncate(start_it)
        print(f"resuming {cls.name} from iteration {start_it} ({out_dir / CHECKPOINT})")

    protocol_val = get_protocol("soft" if m.current_set().soft else "hard", epochs=run.val_epochs)
    last_ckpt = time.monotonic()
    bar = tqdm(range(start_it, run.iterations), desc=f"{cls.name} ipc{ipc}", initial=start_it, total=run.iterations,
               disable=not run.progress)
    it = start_it
    try:
        for it in bar:
            t0 = time.perf_counter()
            metrics = m.step(it)
            loss = metrics.get("loss", float("nan"))
            if not torch.isfinite(torch.tensor(float(loss))) and not metrics.get("skipped"):
                raise DistillationDiverged(f"{cls.name}: loss became {loss} at iteration {it}")
            metrics = {"it": it, **{k: float(v) for k, v in metrics.items()}, "sec": time.perf_counter() - t0}
            logger.log(metrics)
            bar.set_postfix(loss=f"{loss:.4f}")
            done = it + 1
            if run.eval_every and (done % run.eval_every == 0 or done == run.iterations):
                s = m.current_set()
                accs = [train_and_test(s.images, s.labels, val, mcfg.model, protocol_val, seed=seed + 1000 + r, device=dev,
                                       lr=s.lr) for r in range(run.val_runs)]
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
                _save_checkpoint(out_dir, m, g, identity, done, best, best_set, history)
                last_ckpt = time.monotonic()
    except DistillationDiverged as e:
        logger.close()
        kept = f"; the last good checkpoint is kept in {out_dir / CHECKPOINT}" if out_dir else ""
        raise DistillationDiverged(f"{e}{kept}") from None
    if out_dir is not None and run.iterations > start_it:
        _save_checkpoint(out_dir, m, g, identity, run.iterations, best, best_set, history)

    final = m.current_set()
    chosen = best_set if best_set is not None else final
    chosen = _finalize_meta(chosen, identity, best, run)
    report = None
    if out_dir is not None:
        _finalize_meta(final, identity, best, run).save(out_dir / "final.safetensors")
        chosen.save(out_dir / "synset.safetensors")
        chosen.save_grid(out_dir / "synset.png")
    if run.eval_runs > 0:
        protocol = get_protocol("soft" if chosen.soft else "hard", epochs=run.eval_epochs)
        archs = list(run.eval_models) or [mcfg.model]
        report = build_report(chosen, archs, protocol, run.eval_runs, dataset=full, baselines=run.baselines,
                              full_epochs=run.full_epochs, device=dev, seed=seed, progress=run.progress)
        if out_dir is not None:
            report.save(out_dir, stem="eval")
        logger.log({"it": run.iterations, **{f"test_acc/{r.name}/{r.arch}": r.mean for r in report.rows}})
        print(report.to_markdown())
    logger.close()
    return DistillResult(chosen, out_dir, report, history)


def _finalize_meta(s: SyntheticSet, identity: dict, best: dict, run: RunConfig) -> SyntheticSet:
    s = s.detach()
    s.meta.update({"method": identity["method"], "ipc": identity["ipc"], "seed": identity["seed"],
                   "config": identity["config"], "run": to_jsonable(asdict(run)),
                   "buffer_sha256": identity["buffer_sha256"], "selected": best, "versions": versions()})
    return s


def _save_checkpoint(out: Path, m: Method, g: torch.Generator, identity: dict, it: int, best: dict,
                     best_set: Optional[SyntheticSet], history: list) -> None:
    from safetensors.torch import save

    tensors, info = m.state()
    tensors = {f"method.{k}": v.detach().cpu().contiguous() for k, v in tensors.items()}
    tensors["rng.driver"] = g.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    if best_set is not None:
        tensors.update({f"best.{k}": v for k, v in best_set.tensors().items()})
    header = {"identity": json.dumps(identity, sort_keys=True), "iteration": str(it), "best": json.dumps(best),
              "history": json.dumps(history), "method_info": json.dumps(to_jsonable(info)),
              "best_meta": json.dumps(to_jsonable(best_set.meta)) if best_set is not None else "null",
              "best_num_classes": str(best_set.num_classes) if best_set is not None else "0"}
    atomic_write_bytes(out / CHECKPOINT, save(tensors, metadata=header))


def _load_checkpoint(out: Path, m: Method, g: torch.Generator, identity: dict):
    from safetensors import safe_open

    path = out / CHECKPOINT
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise RuntimeError(f"checkpoint '{path}' is unreadable ({e}); delete it to start over") from e
    saved = json.loads(header["identity"])
    diff = _diff(saved, identity)
    if diff:
        raise ValueError(f"'{out}' holds a checkpoint of a different run; differences: {'; '.join(diff)}. "
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
