"""Where one split's images live, behind one interface: `ImageSource`, and the two in-memory kinds.

Every consumer (the buffer recorder, the evaluation harness, class-indexed sampling, the methods) reads images
through an `ImageSource`:

- `batch(indices)` / `fetch(indices)`: the normalized float32 images (N, C, H, W) at those positions;
- `batches(batch_size, order=None)`: the whole split (or `order`) as (positions, images) batches, for passes
  over all of it (an epoch, a test-set pass);
- `subset(indices)`, `to(device)`, `len()`, `shape`.

Kinds held in memory here:

- `Uint8Images`: pixels kept as uint8 and normalized per batch with exactly the arithmetic the loaders used to
  apply to the whole split ((x / 255 - mean) / std in float32), so the values are the same floats at a quarter of
  the memory;
- `TensorImages`: a float32 tensor used as is (ZCA-whitened data, or tensors a user hands in).

Images in files decoded on demand (`FileImages`) live in dd.data.file_images.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch

CACHE_BLOCK = 4  # images normalized at a time into a given buffer on CPU (4 x 224 px floats: 2.4 MB)
EVAL_BATCH_CAP = 128  # file-backed test passes decode at most this many images per batch: less memory and a
# shorter wait for the first batch; accuracy in eval mode does not depend on it


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


def as_source(images) -> ImageSource:
    """An ImageSource as is; a uint8 tensor needs its mean/std, so anything else is wrapped as TensorImages."""
    return images if isinstance(images, ImageSource) else TensorImages(images)


def eval_batch_size(source, batch_size: int) -> int:
    """The batch of a test pass: as asked in memory; capped for file-backed sources (decoded batches cost memory)."""
    return min(batch_size, EVAL_BATCH_CAP) if getattr(source, "file_backed", False) else batch_size
