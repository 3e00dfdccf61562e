"""Small shared helpers: devices, seeding, atomic writes, version stamps, digests, diffs, file headers."""
from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import platform
import random
import re
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """'auto' (or None) picks CUDA when present, else CPU; anything else is passed to torch.device."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"--device {device!r} is not a device ({e}); use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{device}' was requested but CUDA is not available; use --device cpu")
    return dev


def seed_everything(seed: int) -> torch.Generator:
    """Seeds python, numpy and torch; returns a torch.Generator seeded the same for explicit use."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def versions() -> dict[str, str]:
    """Package versions recorded in every artifact."""
    import dd

    out = {"dd": dd.__version__, "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()}
    try:
        import torchvision

        out["torchvision"] = torchvision.__version__
    except Exception:  # pragma: no cover - torchvision is a dependency
        pass
    try:
        import safetensors

        out["safetensors"] = safetensors.__version__
    except Exception:  # pragma: no cover
        pass
    return out


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes to a temp file in the same directory, fsyncs, then renames over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


TEMP_GLOB = ".*.tmp"  # what atomic_write_bytes names its temporary files: .NAME.RANDOM.tmp beside NAME


def remove_stale_temps(directory: str | os.PathLike, subdirs: tuple[str, ...] = ()) -> list[Path]:
    """Deletes the temporary files a killed writer left in `directory` (and the named subdirectories); call it only
    while holding the directory's lock (dd.lock), when no other writer can be mid-write. Returns what it removed."""
    removed = []
    for d in (Path(directory), *(Path(directory) / s for s in subdirs)):
        for p in sorted(d.glob(TEMP_GLOB)) if d.is_dir() else []:
            if p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def safetensors_bytes(tensors: dict, metadata: dict | None = None) -> bytes:
    """safetensors.torch.save's bytes with the header's metadata in sorted key order: the library writes that map in
    a per-process random order, so two identical runs would otherwise write files with different sha256."""
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", None)
    ordered = {**({"__metadata__": dict(sorted(meta.items()))} if meta is not None else {}), **header}
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the format's 8-byte alignment of the data that follows
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.device):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def to_jsonable(obj: Any) -> Any:
    """Round-trips through json so dataclass dicts with Paths/devices become plain JSON values."""
    return json.loads(json.dumps(obj, default=_json_default))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def parse_assignments(items: list[str], option: str) -> dict[str, str]:
    """KEY=VALUE strings (a repeatable command-line option) -> {key: value text}; a malformed item names the option."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{option} expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        if not k.strip():
            raise ValueError(f"{option} expects KEY=VALUE with a non-empty KEY, got {item!r}")
        out[k.strip()] = v.strip()
    return out


def check_ipc(ipc: Any, option: str = "--ipc") -> int:
    """Refuses an images-per-class count that is not a positive integer, naming the option it came from."""
    if isinstance(ipc, bool) or not isinstance(ipc, numbers.Integral) or ipc < 1:
        raise ValueError(f"{option} must be a positive integer (images per class), got {ipc!r}")
    return int(ipc)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    """sha256 of `obj` as sorted-key JSON (Paths and devices as strings): the digest of a config or a settings dict."""
    return sha256_bytes(json.dumps(to_jsonable(obj), sort_keys=True).encode())


def cosine_decay(step: float, total: float) -> float:
    """0.5 (1 + cos(pi step / total)): 1 at step 0, 0 at `total`, the factor of every cosine schedule (lr, crop)."""
    return 0.5 * (1.0 + math.cos(math.pi * step / total))


def dict_diff(old: dict, new: dict, was: str = "recorded", prefix: str = "") -> list[str]:
    """'key: {was} OLD, now NEW' for every key whose value differs (nested dicts by dotted key), sorted by key: what
    an error says when an output directory holds another run's or another configuration's files."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += dict_diff(a, b, was, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {was} {a!r}, now {b!r}")
    return out


def safetensors_header(path: str | os.PathLike) -> Optional[dict]:
    """A safetensors file's string metadata without reading its tensors; None when it is absent or unreadable."""
    try:
        return read_safetensors(path, tensors=False)[0]
    except Exception:
        return None


def read_safetensors(path: str | os.PathLike, tensors: bool = True) -> tuple[dict, dict]:
    """(metadata, {name: tensor}) of a safetensors file on the CPU; raises what safetensors raises on a bad file
    (callers say which artifact it was). tensors=False reads the header only."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        return dict(f.metadata() or {}), ({k: f.get_tensor(k) for k in f.keys()} if tensors else {})


# a '/' that starts a word (not after a letter, ':', '/', '.', '-' or '~') and the path that follows it
_ABS_PATH = re.compile(r"(?<![\w.:/\-~])/[^\s'\"`|,;()\[\]{}<>]+")


def relative_paths(obj: Any, base: str | os.PathLike) -> Any:
    """A JSON-able object (or text) with every absolute path in its strings, alone or inside a command line, written
    relative to `base` (the directory of the file that holds it): generated reports never name the producing
    machine's directories. `folder:/x`-style names and URLs are left as they are."""
    root = os.path.abspath(base)
    if isinstance(obj, str):
        return _ABS_PATH.sub(lambda m: os.path.relpath(m.group(0), root), obj) if "/" in obj else obj
    if isinstance(obj, dict):
        return {k: relative_paths(v, root) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [relative_paths(v, root) for v in obj]
    return obj
