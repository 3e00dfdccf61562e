"""Where one split's images live: in memory (uint8 or float32) or in files decoded on demand, behind one interface.

Every consumer (the buffer recorder, the evaluation harness, class-indexed sampling, the methods) reads images
through an `ImageSource`:

- `batch(indices)` / `fetch(indices)`: the normalized float32 images (N, C, H, W) at those positions;
- `batches(batch_size, order=None)`: the whole split (or `order`) as (positions, images) batches, for passes
  over all of it (an epoch, a test-set pass);
- `subset(indices)`, `to(device)`, `len()`, `shape`.

Three kinds:

- `Uint8Images`: pixels kept as uint8 and normalized per batch with exactly the arithmetic the loaders used to
  apply to the whole split ((x / 255 - mean) / std in float32), so the values are the same floats at a quarter of
  the memory;
- `TensorImages`: a float32 tensor used as is (ZCA-whitened data, or tensors a user hands in);
- `FileImages`: an index of paths and labels; images are decoded (resized and cropped to the dataset's resolution)
  in DataLoader worker processes for whole passes and in threads for random access, so memory does not grow with
  the number of images. An unreadable or truncated file is reported by path and class (`BadImageError`), or left
  out with a warning when the dataset was loaded with `skip_bad_images=True`.
"""
from __future__ import annotations

import math
import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from dd.data.errors import BadImageError

# images decoded from files in this process (batches from DataLoader workers included), for benchmarks and tests
DECODE_TOTALS: Counter = Counter()

CACHE_BLOCK = 4  # images normalized at a time into a given buffer on CPU (4 x 224 px floats: 2.4 MB)
DECODE_CHUNK = 64  # images a DataLoader worker decodes at a time; batches are assembled from chunks
EVAL_BATCH_CAP = 128  # file-backed test passes decode at most this many images per batch: less memory and a
# shorter wait for the first batch; accuracy in eval mode does not depend on it
SKIP_HINT = "fix or delete the file, or load the dataset with --skip-bad-images (skip_bad_images=True) to leave it out"


def normalize_pixels(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                     out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 (x / 255 - mean) / std; mean/std are (1, C, 1, 1) float32 on pixels' device.

    The same operations, in the same order, as the loaders applied to whole splits, so a batch normalized here
    holds bit for bit the floats the old pre-normalized tensors held at those positions; done in place on one
    float buffer (the same results as `(x - mean) / std`, at a third of the memory and 2.5x the speed). `out`: a
    float32 buffer of pixels' shape to fill instead of a fresh one (a fresh 224 px batch costs more in page faults
    than in arithmetic).
    """
    if out is None:
        return pixels.float().div_(255.0).sub_(mean).div_(std)
    step = CACHE_BLOCK if out.device.type == "cpu" else len(out)
    for i in range(0, len(out), step):  # a few images at a time: the three passes stay in the CPU's cache
        torch.div(pixels[i:i + step], 255.0, out=out[i:i + step]).sub_(mean).div_(std)
    return out


def stats_tensor(values: Sequence[float], device) -> torch.Tensor:
    """(1, C, 1, 1) float32 mean or std on `device`."""
    return torch.tensor(tuple(values), dtype=torch.float32, device=device).view(1, -1, 1, 1)


class ImageSource:
    """One split's images; see the module docstring. Subclasses implement `__len__`, `shape`, `fetch`, `subset`, `to`."""

    kind: str = "abstract"
    file_backed: bool = False
    device: torch.device = torch.device("cpu")

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, ...]:
        """(N, C, H, W), like a tensor's."""
        raise NotImplementedError

    @property
    def ndim(self) -> int:
        return 4

    def fetch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions kept, their normalized images on self.device); all of them unless unreadable files are skipped."""
        raise NotImplementedError

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """The normalized images at `indices` (fewer only when skipping unreadable files; `fetch` says which)."""
        return self.fetch(indices)[1]

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Images start..stop-1 (a contiguous run: in-memory sources slice instead of gathering)."""
        return self.batch(torch.arange(start, stop))

    def batches(self, batch_size: int, order: Optional[torch.Tensor] = None, device=None,
                reuse: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(positions, images) per batch of `batch_size`, in `order` (default: 0..N-1).

        Positions come back on `order`'s device (CPU without an order), images on `device` (default self.device).
        A file-backed source that skips unreadable files yields the positions it read (a batch may be smaller, and one
        that read nothing is left out). reuse=True lets a source write every batch into one buffer, so a batch is
        valid only until the next one is asked for: for loops that are done with a batch when they take the next (a
        test pass, a training epoch).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self) if order is None else len(order)
        for i in range(0, n, batch_size):
            if order is None:
                j = min(i + batch_size, n)
                idx, x = torch.arange(i, j), self.rows(i, j)
            else:
                idx, x = self.fetch(order[i:i + batch_size])
            yield idx, (x if device is None else x.to(device))

    def subset(self, indices: torch.Tensor) -> "ImageSource":
        raise NotImplementedError

    def to(self, device) -> "ImageSource":
        raise NotImplementedError

    def materialize(self, what: str = "images") -> torch.Tensor:
        """The whole split as one normalized float32 tensor (in-memory sources only)."""
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        """Bytes this source holds in memory for its images."""
        return 0


class TensorImages(ImageSource):
    """A tensor used as is (float32 normalized, ZCA-whitened, or anything tensor-like a caller sets)."""

    kind = "float32"

    def __init__(self, images):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self):
        return tuple(self.images.shape)

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return getattr(self.images, "device", torch.device("cpu"))

    def fetch(self, indices):
        return indices, self.images[indices.to(self.device)]

    def rows(self, start, stop):
        return self.images[start:stop]

    def subset(self, indices):
        return TensorImages(self.images[torch.as_tensor(indices).to(self.device)])

    def to(self, device):
        return TensorImages(self.images.to(device))

    def materialize(self, what: str = "images"):
        return self.images

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size()


class Uint8Images(ImageSource):
    """uint8 pixels (N, C, H, W) normalized per batch with the dataset's mean/std (see `normalize_pixels`)."""

    kind = "uint8"

    def __init__(self, pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]):
        if not isinstance(pixels, torch.Tensor) or pixels.dtype != torch.uint8 or pixels.ndim != 4:
            raise ValueError(f"Uint8Images needs a uint8 tensor (N, C, H, W), got "
                             f"{getattr(pixels, 'dtype', type(pixels))} of shape {tuple(getattr(pixels, 'shape', ()))}")
        if len(mean) != pixels.shape[1] or len(std) != pixels.shape[1]:
            raise ValueError(f"{pixels.shape[1]} channels but mean {tuple(mean)} and std {tuple(std)}")
        self.pixels = pixels
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self._m = stats_tensor(self.mean, pixels.device)
        self._s = stats_tensor(self.std, pixels.device)

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def shape(self):
        return tuple(self.pixels.shape)

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return self.pixels.device

    def fetch(self, indices):
        return indices, normalize_pixels(self.pixels[indices.to(self.device)], self._m, self._s)

    def rows(self, start, stop):
        return normalize_pixels(self.pixels[start:stop], self._m, self._s)

    def subset(self, indices):
        return Uint8Images(self.pixels[torch.as_tensor(indices).to(self.device)], self.mean, self.std)

    def to(self, device):
        device = torch.device(device)
        return self if device == self.device else Uint8Images(self.pixels.to(device), self.mean, self.std)

    def materialize(self, what: str = "images", chunk: int = 4096):
        """A normalized float32 copy, filled chunk by chunk so the peak is one float copy, not three."""
        out = torch.empty(self.pixels.shape, dtype=torch.float32, device=self.device)
        for i in range(0, len(self.pixels), chunk):
            out[i:i + chunk] = self.rows(i, i + chunk)
        return out

    @property
    def nbytes(self) -> int:
        return self.pixels.numel()


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


def as_source(images) -> ImageSource:
    """An ImageSource as is; a uint8 tensor needs its mean/std, so anything else is wrapped as TensorImages."""
    return images if isinstance(images, ImageSource) else TensorImages(images)


def eval_batch_size(source, batch_size: int) -> int:
    """The batch of a test pass: as asked in memory; capped for file-backed sources (decoded batches cost memory)."""
    return min(batch_size, EVAL_BATCH_CAP) if getattr(source, "file_backed", False) else batch_size
