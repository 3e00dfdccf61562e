"""Images in files, decoded on demand: `FileImages`, an `ImageSource` over an index of paths and labels.

Images are decoded (resized and cropped to the dataset's resolution) in DataLoader worker processes for whole passes
and in threads for random access, so memory does not grow with the number of images. An unreadable or truncated
file is reported by path and class (`BadImageError`), or left out with a warning when the dataset was loaded with
`skip_bad_images=True`.
"""
from __future__ import annotations

import math
import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Optional, Sequence

import numpy as np
import torch

from dd.data.errors import BadImageError
from dd.data.sources import ImageSource, normalize_pixels, stats_tensor

# images decoded from files in this process (batches from DataLoader workers included), for benchmarks and tests
DECODE_TOTALS: Counter = Counter()

DECODE_CHUNK = 64  # images a DataLoader worker decodes at a time; batches are assembled from chunks
SKIP_HINT = "fix or delete the file, or load the dataset with --skip-bad-images (skip_bad_images=True) to leave it out"


# ---------------------------------------------------------------- decoding one file

def load_image(path, res: int, resize: str = "center") -> np.ndarray:
    """One image as uint8 (res, res, 3) RGB; raises whatever PIL raises for an unreadable file.

    resize="center": scale the shorter side to `res` (bilinear, antialiased) then center-crop res x res;
    resize="stretch": scale both sides to `res` ignoring the aspect ratio (what MTT's Resize((128, 128)) does).
    Images already res x res are returned untouched. Large JPEGs are decoded at a reduced DCT scale that
    still covers the target (libjpeg's draft mode), which is several times faster.
    """
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        if im.format == "JPEG" and min(w, h) >= 2 * res:
            s = res / min(w, h)
            im.draft("RGB", (math.ceil(w * s), math.ceil(h * s)) if resize == "center" else (res, res))
        im = im.convert("RGB")
        w, h = im.size
        if (w, h) != (res, res):
            if resize == "stretch":
                im = im.resize((res, res), Image.BILINEAR)
            else:
                s = res / min(w, h)
                nw, nh = max(res, round(w * s)), max(res, round(h * s))
                if (nw, nh) != (w, h):
                    im = im.resize((nw, nh), Image.BILINEAR)
                left, top = (nw - res) // 2, (nh - res) // 2
                im = im.crop((left, top, left + res, top + res))
        return np.asarray(im, dtype=np.uint8)


def _try_decode(path: str, res: int, resize: str) -> tuple[Optional[np.ndarray], Optional[str]]:
    """(pixels, None) or (None, 'ErrorType: message'): a bad file becomes data, never an exception in a worker."""
    try:
        return load_image(path, res, resize), None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError ... for bad files
        return None, f"{type(e).__name__}: {e}"


def _stack_chw(arrays: list, res: int) -> torch.Tensor:
    """HWC uint8 arrays -> one contiguous uint8 (N, 3, res, res) tensor."""
    out = torch.empty((len(arrays), 3, res, res), dtype=torch.uint8)
    view = out.numpy()  # PIL's arrays are read-only: copy through numpy, not torch.from_numpy
    for k, a in enumerate(arrays):
        view[k] = a.transpose(2, 0, 1)
    return out


class _DecodeDataset(torch.utils.data.Dataset):
    """What a DataLoader worker sees: positions -> (position, pixels or None, error or None). No Python object per
    file (the paths are one numpy bytes array), so forked workers do not copy the index page by page."""

    def __init__(self, root: str, rel: np.ndarray, res: int, resize: str):
        self.root, self.rel, self.res, self.resize = root, rel, res, resize

    def __len__(self) -> int:
        return len(self.rel)

    def __getitem__(self, i: int):
        path = os.path.join(self.root, self.rel[i].decode())
        pixels, err = _try_decode(path, self.res, self.resize)
        return i, pixels, err


def _collate(items, res: int):
    """A worker's chunk: (positions decoded, uint8 (n, 3, res, res), [(position, error)] of the failures, positions
    asked for)."""
    ok = [(i, a) for i, a, e in items if e is None]
    pos = torch.tensor([i for i, _ in ok], dtype=torch.long)
    return pos, _stack_chw([a for _, a in ok], res), [(i, e) for i, _, e in items if e is not None], len(items)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding is PIL's work; one torch thread per worker keeps the cores for it


class _Chunks(torch.utils.data.Sampler):
    """The batch sampler of one pass: each batch of `order` (a numpy array) as chunks of at most `chunk` positions
    (a chunk never spans two batches), produced lazily."""

    def __init__(self, order: np.ndarray, batch_size: int, chunk: int):
        self.order, self.batch_size, self.chunk = order, batch_size, chunk

    def __len__(self) -> int:
        full, last = divmod(len(self.order), self.batch_size)
        return full * math.ceil(self.batch_size / self.chunk) + math.ceil(last / self.chunk)

    def __iter__(self):
        for i in range(0, len(self.order), self.batch_size):
            batch = self.order[i:i + self.batch_size]
            for j in range(0, len(batch), self.chunk):
                yield batch[j:j + self.chunk].tolist()


class _Buffer:
    """One float32 batch buffer of a pass, allocated on first use (see ImageSource.batches(reuse=True))."""

    def __init__(self, batch_size: int, shape: tuple[int, ...], device):
        self.batch_size, self.shape, self.device = batch_size, shape, torch.device(device)
        self.tensor: Optional[torch.Tensor] = None

    def take(self, n: int) -> torch.Tensor:
        if self.tensor is None:
            self.tensor = torch.empty((self.batch_size, *self.shape), dtype=torch.float32, device=self.device)
        return self.tensor[:n]


def default_workers() -> int:
    """Decoding workers when none are given: the cores, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


class FileImages(ImageSource):
    """An index of image files (paths relative to `root`, labels) decoded on demand to res x res, then normalized.

    `workers` DataLoader processes decode whole passes (`batches`), the same number of threads random accesses
    (`fetch`); 0 decodes in this process. `skip_bad=True` leaves unreadable files out (each warned once) instead of
    raising BadImageError. `stats` counts decoded images (shared with subsets and device copies).
    """

    kind = "files"
    file_backed = True

    def __init__(self, root, rel: np.ndarray, labels: np.ndarray, *, res: int, resize: str, mean, std,
                 class_names: Sequence[str], what: str, workers: Optional[int] = None, skip_bad: bool = False,
                 device="cpu", _shared: Optional[dict] = None):
        if len(rel) != len(labels):
            raise ValueError(f"{len(rel)} paths but {len(labels)} labels")
        self.root, self.rel, self.labels = str(root), rel, np.asarray(labels, dtype=np.int64)
        self.res, self.resize = int(res), resize
        self.mean, self.std = tuple(mean), tuple(std)
        self.class_names, self.what = list(class_names), what
        self.workers = default_workers() if workers is None else int(workers)
        self.skip_bad = bool(skip_bad)
        self.device = torch.device(device)
        self.shared = _shared if _shared is not None else {"bad": {}, "stats": Counter()}
        self._m, self._s = stats_tensor(self.mean, self.device), stats_tensor(self.std, self.device)

    # -- structure -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rel)

    @property
    def shape(self):
        return (len(self.rel), 3, self.res, self.res)

    @property
    def stats(self) -> Counter:
        return self.shared["stats"]

    @property
    def bad(self) -> dict:
        """{path: 'class ...: error'} of the unreadable files met so far (skipped ones, with skip_bad)."""
        return self.shared["bad"]

    def path(self, i: int) -> str:
        return os.path.join(self.root, self.rel[i].decode())

    def _clone(self, rel, labels, device) -> "FileImages":
        return FileImages(self.root, rel, labels, res=self.res, resize=self.resize, mean=self.mean, std=self.std,
                          class_names=self.class_names, what=self.what, workers=self.workers, skip_bad=self.skip_bad,
                          device=device, _shared=self.shared)

    def subset(self, indices):
        idx = torch.as_tensor(indices).cpu().numpy()
        return self._clone(self.rel[idx], self.labels[idx], self.device)

    def to(self, device):
        device = torch.device(device)
        return self if device == self.device else self._clone(self.rel, self.labels, device)

    def materialize(self, what: str = "images"):
        raise RuntimeError(f"{self.what} is file-backed ({len(self)} images decoded from disk on demand), so it has no "
                           f"{what} tensor; read it in batches with .batches(batch_size) or .batch(indices), or load "
                           "the dataset in memory with a larger --file-backed-above (file_backed_above_mib)")

    # -- bad files ---------------------------------------------------------------------------------
    def describe_file(self, i: int) -> str:
        k = int(self.labels[i])
        name = self.class_names[k] if 0 <= k < len(self.class_names) else "?"
        return f"{self.path(i)} (class {name!r}, label {k}, {self.what})"

    def _failed(self, failures: list[tuple[int, str]]) -> None:
        """Raises BadImageError for the first failure, or (skip_bad) warns once per file and records it."""
        if not failures:
            return
        if not self.skip_bad:
            i, err = failures[0]
            more = f" ({len(failures) - 1} more unreadable in the same batch)" if len(failures) > 1 else ""
            raise BadImageError(f"cannot read image {self.describe_file(i)}: {err}{more}; {SKIP_HINT}")
        for i, err in failures:
            path = self.path(i)
            if path not in self.bad:
                self.bad[path] = f"{self.describe_file(i)}: {err}"
                warnings.warn(f"skipping unreadable image {self.describe_file(i)}: {err}", stacklevel=3)
        self.stats["skipped"] += len(failures)

    # -- decoding ---------------------------------------------------------------------------------
    def decode(self, positions: np.ndarray, threads: Optional[int] = None) -> tuple[np.ndarray, torch.Tensor]:
        """(positions decoded, uint8 (n, 3, res, res)) in this process, `threads` at a time; bad files as _failed says."""
        threads = self.workers if threads is None else threads
        paths = [self.path(int(i)) for i in positions]
        work = partial(_try_decode, res=self.res, resize=self.resize)
        if threads <= 1 or len(paths) < 4:
            results = [work(p) for p in paths]
        else:
            with ThreadPoolExecutor(min(threads, len(paths))) as pool:  # PIL releases the GIL while decoding
                results = list(pool.map(work, paths))
        self._failed([(int(i), e) for i, (_, e) in zip(positions, results) if e is not None])
        keep = np.array([e is None for _, e in results], dtype=bool)
        self._count(int(keep.sum()))
        return np.asarray(positions)[keep], _stack_chw([a for a, e in results if e is None], self.res)

    def _count(self, n: int) -> None:
        self.stats["decoded"] += n
        DECODE_TOTALS["decoded"] += n

    def _stats(self, device) -> tuple[torch.device, torch.Tensor, torch.Tensor]:
        """(device, mean, std) for images going to `device` (None: this source's)."""
        device = self.device if device is None else torch.device(device)
        if device == self.device:
            return device, self._m, self._s
        return device, stats_tensor(self.mean, device), stats_tensor(self.std, device)

    def _normalize(self, pixels: torch.Tensor, device, buffer: Optional["_Buffer"] = None) -> torch.Tensor:
        device, m, s = self._stats(device)
        return normalize_pixels(pixels.to(device), m, s, buffer.take(len(pixels)) if buffer is not None else None)

    def fetch(self, indices):
        pos = torch.as_tensor(indices)
        kept, pixels = self.decode(pos.cpu().numpy())
        if len(kept) < len(pos):
            pos = torch.as_tensor(kept, dtype=torch.long).to(pos.device)
        return pos, self._normalize(pixels, None)

    def batches(self, batch_size, order=None, device=None, reuse: bool = False):
        """A pass decoded by `workers` DataLoader processes in chunks of DECODE_CHUNK images (uint8 travels between
        processes); this one normalizes each chunk into its place in the batch (one reused buffer with reuse=True),
        so the first images arrive sooner and decoding overlaps the consumer's work at a finer grain."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out_dev = order.device if order is not None else torch.device("cpu")
        order_np = np.arange(len(self)) if order is None else order.cpu().numpy()
        buffer = _Buffer(batch_size, (3, self.res, self.res), self.device if device is None else device) if reuse else None
        if self.workers <= 0:
            for i in range(0, len(order_np), batch_size):
                kept, pixels = self.decode(order_np[i:i + batch_size], threads=1)
                if len(kept):  # a batch of unreadable files only (skipped) is no batch
                    yield torch.as_tensor(kept, dtype=torch.long).to(out_dev), self._normalize(pixels, device, buffer)
            return
        chunk = min(batch_size, DECODE_CHUNK)
        loader = torch.utils.data.DataLoader(
            _DecodeDataset(self.root, self.rel, self.res, self.resize),
            batch_sampler=_Chunks(order_np, batch_size, chunk), num_workers=self.workers,
            collate_fn=partial(_collate, res=self.res), worker_init_fn=_worker_init, pin_memory=False)
        chunks = iter(loader)
        dev, m, s = self._stats(device)
        for i in range(0, len(order_np), batch_size):
            want = min(batch_size, len(order_np) - i)
            out = buffer.take(want) if buffer is not None else torch.empty((want, 3, self.res, self.res), device=dev)
            kept, filled, asked = [], 0, 0
            while asked < want:  # the batch's chunks, in order
                pos, pixels, failures, n = next(chunks)
                self._failed(failures)
                self._count(len(pos))
                normalize_pixels(pixels.to(dev), m, s, out[filled:filled + len(pos)])
                kept.append(pos)
                filled, asked = filled + len(pos), asked + n
            if filled:  # a batch of unreadable files only (skipped) is no batch
                yield torch.cat(kept).to(out_dev), out[:filled]

    @property
    def nbytes(self) -> int:
        return self.rel.nbytes + self.labels.nbytes

    def load_all(self, chunk: int = 2048) -> tuple[np.ndarray, torch.Tensor]:
        """(positions kept, uint8 (n, 3, res, res)) of every file, decoded with threads into one buffer."""
        out = torch.empty((len(self), 3, self.res, self.res), dtype=torch.uint8)
        kept_all, filled = [], 0
        for i in range(0, len(self), chunk):
            kept, pixels = self.decode(np.arange(i, min(i + chunk, len(self))))
            out[filled:filled + len(kept)] = pixels
            kept_all.append(kept)
            filled += len(kept)
        kept = np.concatenate(kept_all) if kept_all else np.zeros(0, dtype=np.int64)
        return kept, (out if filled == len(self) else out[:filled].clone())
