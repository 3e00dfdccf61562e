"""Seconds per MTT outer iteration, ours vs a reference written as the original MTT code does it, and the peak
memory of the unrolled vs constant-memory gradient as syn_steps grows.

The reference (after `distill.py`/`reparam_module.py` of Cazenavette et al.): a flat-parameter module whose
forward re-binds every parameter view onto the submodules, `autograd.grad(create_graph=True)` in a Python loop
over a growing list of flat parameter vectors, then `.backward()` of the normalized MSE; its augmentation is
computed the way the original DSA code computes it (`--reference-dsa dd` uses dd's DSA there instead).
Usage: python benchmarks/bench_mtt.py [--iters 5] [--skip-memory] [--skip-timing] [--reference-dsa original|dd]
       [--device cpu|cuda]
On CUDA the timings synchronize the device and the memory table reports peak allocated GPU memory instead of RSS.
Results measured on the 2-core CPU: benchmarks/bench_mtt.md.
"""
from __future__ import annotations

import argparse
import math
import json
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import rss

from dd.augment.dsa import DSAParams, dsa_for
from dd.data import load_dataset
from dd.methods.trajectory import ConvNetForward, ParamLayout, constant_memory_grad, draw_plans, unrolled_grad
from dd.models import build_model
from dd.synset import SyntheticSet
from dd.utils import resolve_device

MODEL = "convnet-w32"


class FlatParamNet:
    """Reference-style flat-parameter module: each forward walks the module path of every parameter, binds a view of
    the flat vector there, runs the module, and puts the previous views back (as the original code's context manager)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.slots = []
        for name, p in list(model.named_parameters()):
            path, _, attr = name.rpartition(".")
            self.slots.append((path, attr, p.shape, p.numel()))
            mod = self._module(path)
            delattr(mod, attr)
            setattr(mod, attr, p.detach().clone())

    def _module(self, path: str) -> torch.nn.Module:
        m = self.model
        for part in path.split(".") if path else ():
            m = getattr(m, part)
        return m

    def __call__(self, x: torch.Tensor, flat_param: torch.Tensor) -> torch.Tensor:
        flat_param = torch.squeeze(flat_param)
        saved = [getattr(self._module(path), attr) for path, attr, _, _ in self.slots]
        views = (t.view(shape) for t, (_, _, shape, _) in zip(flat_param.split([s[3] for s in self.slots]), self.slots))
        for (path, attr, _, _), v in zip(self.slots, views):
            setattr(self._module(path), attr, v)
        try:
            return self.model(x)
        finally:
            for (path, attr, _, _), v in zip(self.slots, saved):
                setattr(self._module(path), attr, v)


class OriginalStyleDSA:
    """DSA the way the original DSA/MTT code computes it, for the reference loop only.

    Same operation families and parameter ranges as dd's DSA (one family per call, per-sample draws), but built
    as that code builds them: per-sample affine matrices assembled from Python lists and converted with
    `torch.tensor`, crop as a gather over a meshgrid of clamped indices into a padded channels-last copy, cutout as
    an index-assigned mask, colour as three separate passes. dd's DSA computes the same maps with batched tensor
    ops; `--reference-dsa dd` swaps it into the reference to isolate the network part of the speed-up.
    """

    def __init__(self, families: list[str], p: DSAParams):
        self.families, self.p = families, p

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        fam = self.families[int(torch.randint(0, len(self.families), (1,), generator=generator))]
        return getattr(self, "_" + fam)(x, generator).contiguous()

    def _affine(self, x, rows):
        theta = torch.tensor(rows, dtype=torch.float)  # built on the host, as the original code does
        grid = F.affine_grid(theta, list(x.shape), align_corners=True).to(x.device)
        return F.grid_sample(x, grid, align_corners=True)

    def _scale(self, x, g):
        r = self.p.scale
        sx = torch.rand(x.shape[0], generator=g) * (r - 1.0 / r) + 1.0 / r
        sy = torch.rand(x.shape[0], generator=g) * (r - 1.0 / r) + 1.0 / r
        return self._affine(x, [[[sx[i], 0, 0], [0, sy[i], 0]] for i in range(x.shape[0])])

    def _rotate(self, x, g):
        a = (torch.rand(x.shape[0], generator=g) - 0.5) * 2 * self.p.rotate / 180 * math.pi
        return self._affine(x, [[[torch.cos(a[i]), torch.sin(-a[i]), 0], [torch.sin(a[i]), torch.cos(a[i]), 0]]
                                for i in range(x.shape[0])])

    def _color(self, x, g):
        n = x.shape[0]
        d = x.device
        x = x + (torch.rand(n, 1, 1, 1, generator=g).to(d) - 0.5) * self.p.brightness
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * (torch.rand(n, 1, 1, 1, generator=g).to(d) * self.p.saturation) + m
        m = x.mean(dim=[1, 2, 3], keepdim=True)
        return (x - m) * (torch.rand(n, 1, 1, 1, generator=g).to(d) + self.p.contrast) + m

    def _grid(self, n, h, w, device):
        return torch.meshgrid(torch.arange(n, device=device), torch.arange(h, device=device),
                              torch.arange(w, device=device), indexing="ij")

    def _crop(self, x, g):
        n, _, h, w = x.shape
        sh, sw = int(h * self.p.crop + 0.5), int(w * self.p.crop + 0.5)
        tx = torch.randint(-sh, sh + 1, (n, 1, 1), generator=g).to(x.device)
        ty = torch.randint(-sw, sw + 1, (n, 1, 1), generator=g).to(x.device)
        gb, gx, gy = self._grid(n, h, w, x.device)
        gx = torch.clamp(gx + tx + 1, 0, h + 1)
        gy = torch.clamp(gy + ty + 1, 0, w + 1)
        padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1).contiguous()
        return padded[gb, gx, gy].permute(0, 3, 1, 2)

    def _cutout(self, x, g):
        n, _, h, w = x.shape
        ch, cw = int(h * self.p.cutout + 0.5), int(w * self.p.cutout + 0.5)
        ox = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), generator=g).to(x.device)
        oy = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), generator=g).to(x.device)
        gb, gx, gy = self._grid(n, ch, cw, x.device)
        gx = torch.clamp(gx + ox - ch // 2, min=0, max=h - 1)
        gy = torch.clamp(gy + oy - cw // 2, min=0, max=w - 1)
        mask = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
        mask[gb, gx, gy] = 0
        return x * mask.unsqueeze(1)

    def _flip(self, x, g):
        return torch.where(torch.rand(x.shape[0], 1, 1, 1, generator=g).to(x.device) < self.p.flip, x.flip(3), x)


def setup(ipc: int, seed: int = 0, device: torch.device = torch.device("cpu")):
    ds = load_dataset("mnist10k")
    g = torch.Generator().manual_seed(seed)
    s = SyntheticSet.from_real(ds, ipc, g)
    torch.manual_seed(seed)
    model = build_model(MODEL, ds.channels, ds.num_classes, ds.image_size)
    layout = ParamLayout.of(model)
    start = layout.flatten(dict(model.named_parameters())).detach()
    target = start + 0.01 * torch.randn(start.shape, generator=g)
    for p in model.parameters():
        p.requires_grad_(False)
    return (ds, s.images.clone().to(device), s.labels.clone().to(device), model.to(device), layout, start.to(device),
            target.to(device), g)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_iteration(net, images, labels, syn_lr, opt_img, opt_lr, start, target, steps, dsa, g):
    student_params = [start.clone().requires_grad_(True)]
    num_params = start.numel()
    indices_chunks = []
    for _ in range(steps):
        if not indices_chunks:
            indices_chunks = list(torch.randperm(len(images), generator=g).to(images.device).split(len(images)))
        idx = indices_chunks.pop()
        x = dsa(images[idx], generator=g)
        out = net(x, flat_param=student_params[-1])
        ce = F.cross_entropy(out, labels[idx])
        grad = torch.autograd.grad(ce, student_params[-1], create_graph=True)[0]
        student_params.append(student_params[-1] - syn_lr * grad)
    param_loss = F.mse_loss(student_params[-1], target, reduction="sum") / num_params
    param_dist = F.mse_loss(start, target, reduction="sum") / num_params
    loss = param_loss / param_dist
    opt_img.zero_grad()
    opt_lr.zero_grad()
    loss.backward()
    opt_img.step()
    opt_lr.step()
    return float(loss.detach())


def ours_iteration(fwd, layout, images, labels, syn_lr, opt_img, opt_lr, start, target, steps, dsa, g, ds, mode="unrolled"):
    plans = draw_plans(len(images), steps, None, dsa, tuple(ds.image_size), g, images.device)
    fn = unrolled_grad if mode == "unrolled" else constant_memory_grad
    res = fn(fwd, layout, start, target, images, labels, syn_lr, plans)
    opt_img.zero_grad(set_to_none=True)
    opt_lr.zero_grad(set_to_none=True)
    images.grad, syn_lr.grad = res.images_grad, res.lr_grad
    opt_img.step()
    opt_lr.step()
    return res.loss


def time_pair(ipc: int, steps: int, iters: int, reference_dsa: str = "original",
              device: torch.device = torch.device("cpu")) -> dict:
    ds, imgs, labels, model, layout, start, target, _ = setup(ipc, device=device)
    dsa = dsa_for(ds.flip_ok)
    ref_dsa = OriginalStyleDSA(dsa.families, dsa.params) if reference_dsa == "original" else dsa
    out = {}
    for name in ("reference", "ours"):
        images = imgs.clone().requires_grad_(True)
        syn_lr = torch.tensor(0.01, device=device, requires_grad=True)
        opt_img = torch.optim.SGD([images], lr=1000, momentum=0.5)
        opt_lr = torch.optim.SGD([syn_lr], lr=1e-5, momentum=0.5)
        g = torch.Generator().manual_seed(1)
        if name == "reference":
            net = FlatParamNet(build_model(MODEL, ds.channels, ds.num_classes, ds.image_size).to(device))
            run = lambda: reference_iteration(net, images, labels, syn_lr, opt_img, opt_lr, start, target, steps, ref_dsa, g)
        else:
            fwd = ConvNetForward.of(model)
            run = lambda: ours_iteration(fwd, layout, images, labels, syn_lr, opt_img, opt_lr, start, target, steps, dsa, g, ds)
        run()  # warm-up
        sync(device)
        t = time.perf_counter()
        for _ in range(iters):
            run()
        sync(device)
        out[name] = (time.perf_counter() - t) / iters
    return out


def memory_child(mode: str, steps: int, ipc: int, device: str = "cpu") -> None:
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if not cuda:
        rss.reset_peak()
    ds, imgs, labels, model, layout, start, target, g = setup(ipc, device=dev)
    fwd = ConvNetForward.of(model)
    images = imgs.clone().requires_grad_(True)
    syn_lr = torch.tensor(0.01, device=dev, requires_grad=True)
    if cuda:
        sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        before = rss.peak_mib()
    if mode != "baseline":
        plans = draw_plans(len(images), steps, None, dsa_for(ds.flip_ok), tuple(ds.image_size), g, dev)
        fn = unrolled_grad if mode == "unrolled" else constant_memory_grad
        fn(fwd, layout, start, target, images, labels, syn_lr, plans)
    if cuda:
        sync(dev)
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak = rss.peak_mib()
    print(json.dumps({"peak_mb": peak, "setup_mb": before}))


def measure_memory(mode: str, steps: int, ipc: int, device: str = "cpu") -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", mode, str(steps), str(ipc), device], capture_output=True,
                       text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--steps", default="10,20,40,80", help="syn_steps of the memory table")
    ap.add_argument("--memory-ipc", type=int, default=2)
    ap.add_argument("--reference-dsa", choices=("original", "dd"), default="original",
                    help="augmentation inside the reference loop: the original code's way (default) or dd's DSA")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto (CUDA when present)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        memory_child(a.child[0], int(a.child[1]), int(a.child[2]), a.child[3])
        return
    device = resolve_device(a.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, mnist10k, {MODEL}, per-sample DSA, batch_syn all, "
          f"reference augmentation: {a.reference_dsa}")
    print("| setting | reference s/it | ours s/it | speed-up |\n|---|---|---|---|")
    for ipc, steps in (() if a.skip_timing else ((1, 50), (10, 30))):
        t = time_pair(ipc, steps, a.iters, a.reference_dsa, device)
        print(f"| IPC {ipc}, {steps} steps | {t['reference']:.3f} | {t['ours']:.3f} | {t['reference'] / t['ours']:.2f}x |",
              flush=True)
    if a.skip_memory:
        return
    dev = str(device)
    base = measure_memory("baseline", 0, a.memory_ipc, dev)["peak_mb"]
    what = "peak allocated GPU memory" if device.type == "cuda" else "peak RSS"
    print(f"\n{what} (MB) of one gradient at IPC {a.memory_ipc}, fresh process each; setup alone peaks at {base:.0f} MB")
    print("| syn_steps | unrolled peak | unrolled above setup | constant peak | constant above setup |\n|---|---|---|---|---|")
    rows = {}
    for steps in [int(v) for v in a.steps.split(",")]:
        u = measure_memory("unrolled", steps, a.memory_ipc, dev)["peak_mb"]
        c = measure_memory("constant", steps, a.memory_ipc, dev)["peak_mb"]
        rows[steps] = c
        print(f"| {steps} | {u:.0f} | {u - base:.0f} | {c:.0f} | {c - base:.0f} |", flush=True)
    lo, hi = min(rows), max(rows)
    print(f"constant-memory peak at {hi} steps / at {lo} steps: {rows[hi] / rows[lo]:.3f} (target <= 1.3)")


if __name__ == "__main__":
    main()
