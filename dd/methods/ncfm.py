"""NCFM, neural characteristic function matching (Wang et al., CVPR 2025): images minimise, a sampler maximises.

Per class, real and synthetic batches go through one network interpolated between an expert's first and last
recorded epochs; the loss compares the empirical characteristic functions of their L2-normalised penultimate
features at sampled frequencies t (amplitude + phase). Optionally a sampling network psi proposes t and is
trained to maximise the same loss (min-max), and a cross-entropy term on the trained expert calibrates the images.

Settings and their sources (public code gszfwsb/NCFM; paper = the CVPR 2025 paper):
- distance: scale 300, alpha = beta = 0.5 (`NCFM/NCFM.py`, every config); phase term clamped >= 1e-12 (same file).
- num_freqs: 4096 t ~ N(0, I) rows, resampled every call (`config/ipc*/*.yaml`: num_freqs 4096); the paper says 1024.
- psi (`NCFM/SampleNet.py`): ceil(64/16) noise rows -> 3 x [Linear(D) + BatchNorm1d], LeakyReLU(0.2) x 2, Tanh,
  tiled x16 (t_batchsize 64, `condense/condense_script.py`); SGD lr 1e-3 (`lr_sampling_net`), momentum 0.5, wd 5e-4,
  stepped on -loss after the image step (`condenser/compute_loss.py`). Every shipped config sets sampling_net: False,
  so it is off here by default. That file's default branch backpropagates +loss and then -loss into psi's .grad
  before stepping, which sums to a zero gradient; here psi ascends on the loss's gradient (its ascent_scale branch).
- extractors: the reference pretrains 20 ConvNets (60 epochs) and each iteration uses one at lambda * init +
  (1 - lambda) * trained, lambda ~ U(0, 1) (`utils/utils.py`); here the experts of a `ddtk buffer` directory, init
  and trained being each expert's first and last recorded epochs.
- calibration: the trained network's cross-entropy on the augmented synthetic images, weight 1, one extra image step
  per class after the matching steps (`calib_weight: 1`, `iter_calib: 1`; `condenser/compute_loss.py`).
- images: AdamW lr 0.01 x 0.1 = 1e-3, wd 5e-4 (`lr_img`, `lr_scale_adam`, `Condenser.py`; CIFAR-100 IPC 10: SGD
  lr 0.01, momentum 0.5), one image step per class; pixels clamped to [0, 1] (in dd: the normalized image of [0, 1];
  no clamp under ZCA). 1024 real images per class, one DSA `color_crop_cutout` draw shared by both batches.
- multi-formation factor 2 (`factor: 2`, `decode_type: single`, `condenser/decode.py`): each stored image holds
  factor x factor patches, each bilinearly upsampled to a full image; init from ipc * factor^2 real images per class
  shrunk into the grids. The set handed to evaluation is the decoded one (as the reference trains on decoded data),
  so it holds ipc * factor^2 images per class; the stored budget is in meta['multi_formation'].
  Default: 2 from 32 px up (the reference's resolutions), 1 below (the 28 px bench; see experiments/ncfm_results.md).
- not implemented: the reference's ReduceLROnPlateau (x0.5, patience 500 of 20k iterations) on the image lr.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import nn

from dd.augment.dsa import DSA, DSAParams
from dd.methods.base import Method, MethodConfig, load_optimizer_state, optimizer_state
from dd.methods.registry import METHODS
from dd.synset import SyntheticSet

__all__ = ["NCFM", "NCFMConfig", "SamplingNet", "cf_terms", "decode_patches", "encode_patches", "minmax_step",
           "ncfm_distance"]

OPTIMIZERS = ("adamw", "sgd")


@dataclass
class NCFMConfig(MethodConfig):
    """The public code's CIFAR-10 settings (module docstring); factor None: 2 from 32 px up, 1 below."""

    dsa_strategy: str = "color_crop_cutout"  # the reference's aug_type for matching
    lr_img: float = 1e-3  # AdamW on the images (0.01 x lr_scale_adam 0.1)
    optimizer: str = "adamw"  # 'adamw' or 'sgd' (CIFAR-100 IPC 10 in the reference)
    weight_decay: float = 5e-4
    momentum: float = 0.5  # SGD only
    batch_real: int = 1024  # real images per class per iteration
    num_freqs: int = 4096  # t ~ N(0, I) rows per call without psi (the paper: 1024)
    alpha: float = 0.5  # amplitude weight
    beta: float = 0.5  # phase weight
    loss_scale: float = 300.0
    sampling_net: bool = False  # psi proposes t and maximises the distance (off in every shipped config)
    psi_freqs: int = 64  # t rows psi proposes (t_batchsize)
    psi_repeat: int = 16  # each unique row tiled this many times (t_repeat)
    lr_psi: float = 1e-3
    psi_momentum: float = 0.5
    psi_weight_decay: float = 5e-4
    calib_weight: float = 1.0  # cross-entropy of the trained expert on the synthetic images (0: off)
    calib_iters: int = 1
    factor: Optional[int] = None  # multi-formation: factor x factor patches per stored image
    clamp: bool = True  # keep pixels in the normalized image of [0, 1]


# -------------------------------------------------------------------------------------------- the distance
def cf_terms(real_feat: torch.Tensor, syn_feat: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per frequency row of t (T, D): amplitude (|Phi_r| - |Phi_s|)^2 and phase 2(|Phi_r||Phi_s| - Re Phi_r conj Phi_s),
    with Phi(t) = mean_j exp(i t.f_j) over the rows f_j of each (N, D) feature batch."""
    pr, ps = t @ real_feat.t(), t @ syn_feat.t()
    r_re, r_im = pr.cos().mean(1), pr.sin().mean(1)
    s_re, s_im = ps.cos().mean(1), ps.sin().mean(1)
    r_abs, s_abs = torch.sqrt(r_re ** 2 + r_im ** 2), torch.sqrt(s_re ** 2 + s_im ** 2)
    amp = (r_abs - s_abs) ** 2
    phase = 2 * (r_abs * s_abs - r_re * s_re - r_im * s_im)
    return amp, phase


def ncfm_distance(real_feat: torch.Tensor, syn_feat: torch.Tensor, t: torch.Tensor, alpha: float = 0.5,
                  beta: float = 0.5, scale: float = 300.0) -> torch.Tensor:
    """scale * mean over t of sqrt(alpha * amplitude + beta * phase), the phase clamped >= 1e-12 (NCFM.py)."""
    amp, phase = cf_terms(real_feat, syn_feat, t)
    return scale * torch.sqrt(alpha * amp + beta * phase.clamp(min=1e-12)).mean()


class SamplingNet(nn.Module):
    """psi: unique noise rows -> 3 x [Linear + BatchNorm1d] (LeakyReLU 0.2, LeakyReLU 0.2, Tanh), tiled to num_freqs."""

    def __init__(self, dim: int, num_freqs: int = 64, repeat: int = 16):
        super().__init__()
        if dim < 1 or num_freqs < 1 or repeat < 1:
            raise ValueError(f"SamplingNet needs dim, psi_freqs and psi_repeat >= 1, got {dim}, {num_freqs}, {repeat}")
        self.dim, self.num_freqs, self.repeat = dim, num_freqs, repeat
        self.unique = max(2, math.ceil(num_freqs / repeat))  # BatchNorm1d needs two rows in train mode
        acts = [nn.LeakyReLU(0.2), nn.LeakyReLU(0.2), nn.Tanh()]
        self.layers = nn.Sequential(*[m for a in acts for m in (nn.Linear(dim, dim), nn.BatchNorm1d(dim), a)])

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        """noise (unique, dim) -> t (num_freqs, dim)."""
        return self.layers(noise).repeat(self.repeat, 1)[: self.num_freqs]


def minmax_step(loss: torch.Tensor, images: torch.Tensor, opt_img: torch.optim.Optimizer,
                psi: Optional[nn.Module] = None, opt_psi: Optional[torch.optim.Optimizer] = None) -> None:
    """One image step down the loss and, with psi, one psi step up it (both from the same graph)."""
    params = [] if psi is None else [p for p in psi.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [images, *params], allow_unused=True)
    opt_img.zero_grad(set_to_none=True)
    images.grad = grads[0] if grads[0] is not None else torch.zeros_like(images)
    opt_img.step()
    if params:
        opt_psi.zero_grad(set_to_none=True)
        for p, g in zip(params, grads[1:]):
            p.grad = None if g is None else -g
        opt_psi.step()


# ------------------------------------------------------------------------------------------ multi-formation
def decode_patches(images: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, C, H, W) -> (factor^2 * N, C, H, W): patch (i, j) of every image, bilinearly upsampled, patch-major order
    as the reference (`decode_zoom`; a side not divisible by the factor is padded with the value 0.5 there, here
    with the image's own edge, since dd's pixels are normalized)."""
    if factor == 1:
        return images
    h, w = images.shape[-2:]
    s_h, s_w = math.ceil(h / factor), math.ceil(w / factor)
    x = F.pad(images, (0, s_w * factor - w, 0, s_h * factor - h), mode="replicate") if (h % factor or w % factor) else images
    patches = [x[:, :, i * s_h:(i + 1) * s_h, j * s_w:(j + 1) * s_w] for i in range(factor) for j in range(factor)]
    return F.interpolate(torch.cat(patches), size=(h, w), mode="bilinear", align_corners=False)


def encode_patches(images: torch.Tensor, factor: int) -> torch.Tensor:
    """(factor^2 * N, C, H, W) real images -> (N, C, H, W) grids: image k * N + n shrunk (bilinear) into patch k of n."""
    if factor == 1:
        return images
    n = images.shape[0] // factor ** 2
    h, w = images.shape[-2:]
    s_h, s_w = math.ceil(h / factor), math.ceil(w / factor)
    small = F.interpolate(images, size=(s_h, s_w), mode="bilinear", align_corners=False, antialias=True)
    out = images.new_zeros(n, images.shape[1], s_h * factor, s_w * factor)
    for k in range(factor ** 2):
        i, j = divmod(k, factor)
        out[:, :, i * s_h:(i + 1) * s_h, j * s_w:(j + 1) * s_w] = small[k * n:(k + 1) * n]
    return out[:, :, :h, :w]


# ------------------------------------------------------------------------------------------------ the method
@METHODS.register("ncfm", help="neural characteristic function matching (Wang et al. 2025); extractors from --buffer")
class NCFM(Method):
    """Matches characteristic functions of real and synthetic features under interpolated expert networks."""

    name = "ncfm"
    Config = NCFMConfig
    buffers = (1, 1)
    smoke: ClassVar[dict] = {"batch_real": 16, "num_freqs": 64, "psi_freqs": 8}  # `ddtk reproduce --smoke` sizes
    bookkeeping: ClassVar[frozenset] = frozenset({"expert", "lambda"})  # logged draws, not curves

    @classmethod
    def preset(cls, dataset: str, ipc: int) -> dict:
        """The reference's CIFAR configs (config/ipc{1,10,50}/cifar{10,100}.yaml): ConvNet depth 3, factor 2."""
        if dataset not in ("cifar10", "cifar100") or ipc not in (1, 10, 50):
            return {}
        p = {"model": "convnet", "factor": 2, "batch_real": 1024, "num_freqs": 4096}
        if dataset == "cifar100" and ipc == 10:
            p.update(optimizer="sgd", lr_img=0.01, momentum=0.5)
        return p

    def __init__(self, config, dataset, ipc, device, generator, inputs=None, group=None):
        super().__init__(config, dataset, ipc, device, generator, inputs, group)
        c = config
        if c.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer '{c.optimizer}' for ncfm; choose one of {OPTIMIZERS}")
        for key in ("batch_real", "num_freqs", "calib_iters"):
            if getattr(c, key) < 1:
                raise ValueError(f"option '{key}' of ncfm must be >= 1, got {getattr(c, key)}")
        if c.factor is not None and c.factor < 1:
            raise ValueError(f"option 'factor' of ncfm must be >= 1 (1: no multi-formation), got {c.factor}")
        store = self.buffer
        if store.num_epochs < 2:
            raise ValueError(f"buffer '{store.path}' stores one epoch per expert; ncfm interpolates between the first "
                             "and last: record it with `ddtk buffer --epochs 1` or more")
        self.net = store.build_model(device)
        self.teacher = store.build_model(device)
        if not hasattr(self.net, "features"):
            raise ValueError(f"model '{store.model_name}' has no features(x); ncfm matches penultimate features: "
                             "use a ConvNet variant or add features() to the model")
        for m in (self.net, self.teacher):
            for p in m.parameters():
                p.requires_grad_(False)
        self.first = [store.flat(e, 0, device=device) for e in range(store.num_experts)]
        self.last = [store.flat(e, -1, device=device) for e in range(store.num_experts)]
        self.factor = c.factor if c.factor is not None else (2 if min(dataset.image_size) >= 32 else 1)
        self.dsa = DSA(DSAParams(strategy=c.dsa_strategy), allow_flip=dataset.flip_ok) if c.dsa else None
        mean = torch.tensor(dataset.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(dataset.std, device=device).view(1, -1, 1, 1)
        self.bounds = None if (c.zca or not c.clamp) else ((0 - mean) / std, (1 - mean) / std)
        with torch.no_grad():
            probe = torch.zeros(1, dataset.channels, *dataset.image_size, device=device)
            self.feature_dim = int(self.net.features(probe).shape[1])

    # -- setup -----------------------------------------------------------------------------------
    def init_synset(self) -> SyntheticSet:
        f2 = self.factor ** 2
        if self.config.init == "real" and f2 > 1:
            s = SyntheticSet.from_real(self.dataset, self.ipc * f2, self.g, method=self.name)
            per_class = [s.images[s.labels == c] for c in range(self.dataset.num_classes)]
            s.images = torch.cat([encode_patches(x, self.factor) for x in per_class])
            s.labels = torch.arange(self.dataset.num_classes).repeat_interleave(self.ipc)
        else:
            s = self.initial_set()
        s.meta["multi_formation"] = {"factor": self.factor, "decode": "bilinear", "stored_images_per_class": self.ipc,
                                     "decoded_images_per_class": self.ipc * f2}
        self._template = s
        self.images = s.images.to(self.device).requires_grad_(True)
        self.labels = s.labels.to(self.device)
        c = self.config
        self.opt = (torch.optim.AdamW([self.images], lr=c.lr_img, weight_decay=c.weight_decay) if c.optimizer == "adamw"
                    else torch.optim.SGD([self.images], lr=c.lr_img, momentum=c.momentum, weight_decay=c.weight_decay))
        self.class_index = [torch.nonzero(self.labels == k).flatten() for k in range(self.dataset.num_classes)]
        self.psi, self.opt_psi = None, None
        if c.sampling_net:
            with self.seeded():
                self.psi = SamplingNet(self.feature_dim, c.psi_freqs, c.psi_repeat).to(self.device).train()
            self.opt_psi = torch.optim.SGD(self.psi.parameters(), lr=c.lr_psi, momentum=c.psi_momentum,
                                           weight_decay=c.psi_weight_decay)
        return s

    # -- one iteration ---------------------------------------------------------------------------
    def extractor(self, expert: int, lam: float) -> nn.Module:
        """The buffer's network at lam * first + (1 - lam) * last recorded epoch of `expert`, in train mode."""
        flat = lam * self.first[expert] + (1 - lam) * self.last[expert]
        self._load(self.net, flat)
        return self.net.train()

    def trained(self, expert: int) -> nn.Module:
        """The expert's last recorded epoch with its normalization buffers, in eval mode (the calibration network)."""
        self._load(self.teacher, self.last[expert])
        bufs = self.buffer.buffers(expert, -1, device=self.device)
        if bufs:
            self.teacher.load_state_dict(bufs, strict=False)
        return self.teacher.eval()

    def _load(self, model: nn.Module, flat: torch.Tensor) -> None:
        params = self.buffer.unflatten(flat)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(params[name])

    def frequencies(self) -> torch.Tensor:
        """t for one call: psi's proposal, or num_freqs fresh N(0, I) rows from the method's generator."""
        if self.psi is not None:
            noise = torch.randn(self.psi.unique, self.feature_dim, generator=self.g).to(self.device)
            return self.psi(noise)
        return torch.randn(self.config.num_freqs, self.feature_dim, generator=self.g).to(self.device)

    def decoded(self, c: int) -> torch.Tensor:
        return decode_patches(self.images[self.class_index[c]], self.factor)

    def project(self) -> None:
        if self.bounds is not None:
            with torch.no_grad():
                self.images.copy_(torch.maximum(torch.minimum(self.images, self.bounds[1]), self.bounds[0]))

    def step(self, it: int) -> dict[str, float]:
        c = self.config
        e = int(torch.randint(len(self.first), (1,), generator=self.g))
        lam = float(torch.rand((), generator=self.g))
        net = self.extractor(e, lam)
        match = 0.0
        for k in range(self.dataset.num_classes):
            real, syn = self.real.sample(k, c.batch_real, self.g), self.decoded(k)
            if self.dsa is not None:
                real, syn = self.dsa.siamese(real, syn, generator=self.g)
            with torch.no_grad():
                fr = F.normalize(net.features(real), dim=1)
            fs = F.normalize(net.features(syn), dim=1)
            loss = ncfm_distance(fr, fs, self.frequencies(), c.alpha, c.beta, c.loss_scale)
            minmax_step(loss, self.images, self.opt, self.psi, self.opt_psi)
            self.project()
            match += float(loss.detach())
        out = {"loss": match, "expert": e, "lambda": lam}
        if c.calib_weight > 0:
            teacher, calib = self.trained(e), 0.0
            for _ in range(c.calib_iters):
                for k in range(self.dataset.num_classes):
                    syn = self.decoded(k)
                    syn = self.dsa(syn, generator=self.g) if self.dsa is not None else syn
                    target = torch.full((len(syn),), k, dtype=torch.long, device=self.device)
                    loss = c.calib_weight * F.cross_entropy(teacher(syn), target)
                    minmax_step(loss, self.images, self.opt)
                    self.project()
                    calib += float(loss.detach())
            out["loss_calib"] = calib
        return out

    # -- results and checkpoints -----------------------------------------------------------------
    def current_set(self) -> SyntheticSet:
        """The decoded set (ipc * factor^2 images per class), the images evaluation trains on."""
        t = self._template
        with torch.no_grad():
            imgs = torch.cat([self.decoded(k) for k in range(self.dataset.num_classes)]).cpu()
        labels = torch.arange(self.dataset.num_classes).repeat_interleave(self.ipc * self.factor ** 2)
        return SyntheticSet(imgs, labels, t.num_classes, None, dict(t.meta), dict(t.extra))

    def state(self):
        tensors, info = optimizer_state(self.opt, "opt")
        tensors["images"] = self.images.detach()
        out = {"opt": info}
        if self.psi is not None:
            tp, ip = optimizer_state(self.opt_psi, "opt_psi")
            tensors.update(tp)
            tensors.update({f"psi.{k}": v.detach() for k, v in self.psi.state_dict().items()})
            out["opt_psi"] = ip
        return tensors, out

    def load_state(self, tensors, info) -> None:
        with torch.no_grad():
            self.images.copy_(tensors["images"].to(self.device))
        load_optimizer_state(self.opt, "opt", {k: v for k, v in tensors.items() if k.startswith("opt.")}, info["opt"])
        if self.psi is not None:
            self.psi.load_state_dict({k[4:]: v.to(self.device) for k, v in tensors.items() if k.startswith("psi.")})
            load_optimizer_state(self.opt_psi, "opt_psi", {k: v for k, v in tensors.items() if k.startswith("opt_psi.")},
                                 info["opt_psi"])
