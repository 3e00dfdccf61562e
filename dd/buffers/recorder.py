"""Records expert trajectories: trains N networks from independent seeds and stores every epoch's parameters.

Each expert is written atomically as soon as it is done, so a rerun resumes after the last complete one;
under torchrun experts are dealt round-robin to ranks and rank 0 writes the manifest.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from dd.buffers.config import BufferConfig
from dd.buffers.steps import expert_step
from dd.buffers.store import FORMAT, MANIFEST, buffer_key, param_key, shard_name
from dd.data import ImageDataset, base_name, load_dataset
from dd.distributed import ProcessGroup
from dd.lock import output_lock
from dd.utils import (atomic_write_bytes, atomic_write_json, dict_diff, resolve_device, safetensors_bytes,
                      safetensors_header, sha256_file, sha256_json, to_jsonable, versions)

SHARD_FORMAT = "dd-trajectory-shard/1"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def config_sha256(cfg: BufferConfig) -> str:
    return sha256_json(cfg.to_dict())


def _build(cfg: BufferConfig, ds: ImageDataset):
    from dd.models import build_model

    return build_model(cfg.model, ds.channels, ds.num_classes, ds.image_size, **cfg.model_options)


def train_expert(cfg: BufferConfig, ds: ImageDataset, k: int, device, progress: bool = False,
                 on_epoch: Optional[Callable[[int, torch.nn.Module], None]] = None) -> tuple[dict[str, torch.Tensor], float]:
    """Trains expert k on the real training set; returns (shard tensors for epochs 0..E, final test accuracy).

    Init, batch order and augmentation come only from cfg.expert_seed(k). Every snapshot is a copy of the
    live tensors taken after the epoch's last step (on_epoch(epoch, model) is called just before it).
    """
    from dd.augment import dsa_for
    from dd.eval.train import accuracy

    dev = torch.device(device)
    seed = cfg.expert_seed(k)
    store_dtype = DTYPES[cfg.storage_dtype]
    rng_devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        model = _build(cfg, ds).to(dev).train()
        names = [n for n, _ in model.named_parameters()]
        params = [p for _, p in model.named_parameters()]
        dsa = dsa_for(ds.flip_ok, cfg.dsa_strategy) if cfg.dsa else None
        # the training split as a source: uint8 normalized per batch on `dev`, or files decoded by DataLoader workers
        images, labels = ds.train.to(dev), ds.train_labels.to(dev)
        n, bs = len(images), cfg.batch_size
        tensors: dict[str, torch.Tensor] = {}

        def snapshot(epoch: int) -> None:
            for name, p in zip(names, params):
                tensors[param_key(epoch, name)] = p.detach().to("cpu", dtype=store_dtype, copy=True)
            for name, b in model.named_buffers():
                dt = store_dtype if b.is_floating_point() else b.dtype
                tensors[buffer_key(epoch, name)] = b.detach().to("cpu", dtype=dt, copy=True)

        snapshot(0)
        momentum_bufs: list = []
        from tqdm.auto import tqdm

        bar = tqdm(range(cfg.epochs), desc=f"expert {k}", disable=not progress, leave=False)
        for ep in bar:
            perm = torch.randperm(n, generator=g).to(dev)
            loss = None
            for idx, x_raw in images.batches(bs, order=perm, reuse=True):  # a step is done with its batch
                y = labels[idx]
                x = dsa(x_raw, generator=g) if dsa is not None else x_raw
                loss = expert_step(model, params, x, y, x_raw, cfg, ep, momentum_bufs)
            x_raw = x = None  # lets the pass's batch buffer go before the next pass allocates its own
            last = float(loss)  # the one sync per epoch
            if not math.isfinite(last):
                raise FloatingPointError(f"expert {k} diverged at epoch {ep} (loss {last}); lower --lr")
            if progress:
                bar.set_postfix(loss=f"{last:.3f}")
            if on_epoch is not None:
                on_epoch(ep + 1, model)
            snapshot(ep + 1)
        acc = accuracy(model, ds.test.to(dev), ds.test_labels.to(dev))
    return tensors, acc


def write_shard(path: Path, tensors: dict[str, torch.Tensor], cfg: BufferConfig, k: int, acc: float) -> None:
    """Atomically writes one expert's shard; the header carries nothing time-dependent (re-runs are byte-identical)."""
    meta = {"format": SHARD_FORMAT, "expert": str(k), "seed": str(cfg.expert_seed(k)), "epochs": str(cfg.epochs),
            "config_sha256": config_sha256(cfg), "final_test_accuracy": repr(float(acc))}
    # one metadata key: safetensors keeps metadata in a hash map whose order changes from process to process
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata={"dd": json.dumps(meta, sort_keys=True)}))


def read_shard_header(path: Path) -> Optional[dict]:
    """The shard's metadata, or None when the file is unreadable (a torn or foreign file)."""
    meta = safetensors_header(path)
    if meta is None:
        return None
    try:
        # (shards of the first release kept the fields as separate metadata keys)
        return json.loads(meta["dd"]) if "dd" in meta else (meta if meta.get("format") == SHARD_FORMAT else None)
    except Exception:
        return None


def _dataset_entry(ds: ImageDataset) -> dict:
    return to_jsonable(ds.describe)


def _manifest(cfg: BufferConfig, ds: ImageDataset, probe: torch.nn.Module, experts: list[dict], complete: bool) -> dict:
    return to_jsonable({
        "format": FORMAT,
        "complete": complete,
        "config": cfg.to_dict(),
        "config_sha256": config_sha256(cfg),
        "expert_kind": cfg.expert_kind,
        "dataset": _dataset_entry(ds),
        "model": {"name": cfg.model, "options": cfg.model_options, "channels": ds.channels,
                  "num_classes": ds.num_classes, "image_size": list(ds.image_size)},
        "param_names": [n for n, _ in probe.named_parameters()],
        "param_shapes": [list(p.shape) for _, p in probe.named_parameters()],
        "buffer_names": [n for n, _ in probe.named_buffers()],
        "buffer_shapes": [list(b.shape) for _, b in probe.named_buffers()],
        "num_experts": cfg.experts,
        "num_epochs": cfg.epochs + 1,
        "storage_dtype": cfg.storage_dtype,
        "experts": experts,
        "versions": versions(),
    })


def _shard_ok(path: Path, cfg: BufferConfig, k: int, expected_sha: Optional[str]) -> bool:
    """Is an existing shard a finished recording of expert k under this config (and, if listed, unaltered)?"""
    if not path.exists():
        return False
    h = read_shard_header(path)
    if h is None or h.get("config_sha256") != config_sha256(cfg) or h.get("expert") != str(k):
        return False
    return expected_sha is None or sha256_file(path) == expected_sha


def record_buffer(config: BufferConfig, out: str | Path, device="auto", data_root: str | None = None,
                  dataset: ImageDataset | None = None, progress: bool = True, log: Callable[[str], None] = print,
                  data_options: Optional[dict] = None) -> Path:
    """Records (or resumes) the buffer of `config` into `out`; returns the directory.

    A rerun with the same config skips experts whose shard is complete; another config is refused. The directory
    is locked for the whole recording (dd.lock, taken by rank 0 before any rank reads data or writes), so a second
    recorder on the same `out` is refused while a killed one's lock is taken over. `data_options` go to
    load_dataset (e.g. res, file_backed_above_mib, skip_bad_images, workers for an image tree).
    """
    out = Path(out)
    ctx = ProcessGroup(resolve_device(device))
    try:
        with output_lock(out, ctx):
            _record(config, out, ctx, data_root, dataset, progress, log, dict(data_options or {}))
    finally:
        ctx.close()
    return out


def _check_same_data(old: dict, ds: ImageDataset, out: Path) -> None:
    """A resumed buffer must read images of the same shape and count (e.g. an image tree at the same --res)."""
    entry = old.get("dataset") or {}
    for key, now in (("image_size", list(ds.image_size)), ("channels", ds.channels), ("num_classes", ds.num_classes),
                     ("train", len(ds.train_labels))):
        if key in entry and entry[key] != now:
            raise ValueError(f"'{out}' holds a buffer recorded on data with {key} {entry[key]}, but the data now has "
                             f"{now}; use the same data options (e.g. --res) to resume, or another --out")


def _record(cfg: BufferConfig, out: Path, ctx: ProcessGroup, data_root: str | None, dataset: ImageDataset | None,
            progress: bool, log: Callable[[str], None], data_options: Optional[dict] = None) -> None:
    """record_buffer's work once the directory is locked: check an existing manifest, deal the missing experts to
    the ranks, record them, and let rank 0 write the complete manifest."""
    dev = ctx.local_device()
    ds = dataset if dataset is not None else load_dataset(cfg.dataset, root=data_root, zca=cfg.zca, **(data_options or {}))
    if base_name(ds.name) != cfg.dataset:
        raise ValueError(f"dataset object is '{ds.name}' but the config says '{cfg.dataset}'")
    with torch.random.fork_rng(devices=[]):
        probe = _build(cfg, ds)
    listed: dict[int, str] = {}
    mpath = out / MANIFEST
    if mpath.exists():
        try:
            old = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"'{mpath}' is unreadable ({e}); use another --out or delete it") from e
        diff = dict_diff(old.get("config", {}), to_jsonable(cfg.to_dict()))
        if diff:
            raise ValueError(f"'{out}' holds a buffer recorded with another configuration; differences: "
                             f"{'; '.join(diff)}. Use another --out, or the same options to resume")
        _check_same_data(old, ds, out)
        listed = {int(e["index"]): e["sha256"] for e in old.get("experts", [])}
    elif out.exists() and any(out.glob("expert_*.safetensors")):
        raise ValueError(f"'{out}' holds expert shards but no {MANIFEST}; use another --out or empty it")
    if ctx.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        for tmp in out.glob(".*.tmp"):  # torn writes of a killed run
            tmp.unlink(missing_ok=True)
        if not mpath.exists():
            atomic_write_json(mpath, _manifest(cfg, ds, probe, [], complete=False))
    ctx.barrier()

    mine = list(range(ctx.rank, cfg.experts, ctx.world))
    for k in mine:
        path = out / shard_name(k)
        if _shard_ok(path, cfg, k, listed.get(k)):
            log(f"expert {k}: already recorded in {path.name}, skipping")
            continue
        t0 = time.perf_counter()
        tensors, acc = train_expert(cfg, ds, k, dev, progress=progress)
        write_shard(path, tensors, cfg, k, acc)
        log(f"expert {k}/{cfg.experts} (seed {cfg.expert_seed(k)}): test acc {100 * acc:.2f}% "
            f"in {time.perf_counter() - t0:.1f}s -> {path.name}")
    ctx.barrier()

    if ctx.rank == 0:
        entries = []
        for k in range(cfg.experts):
            path = out / shard_name(k)
            h = read_shard_header(path)
            if h is None or h.get("config_sha256") != config_sha256(cfg):
                raise RuntimeError(f"expert {k}'s shard '{path}' is missing or unreadable after recording")
            entries.append({"index": k, "seed": cfg.expert_seed(k), "file": path.name, "sha256": sha256_file(path),
                            "bytes": path.stat().st_size, "final_test_accuracy": float(h["final_test_accuracy"])})
        atomic_write_json(mpath, _manifest(cfg, ds, probe, entries, complete=True))
    ctx.barrier()
