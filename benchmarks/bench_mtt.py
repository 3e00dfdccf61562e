"""Seconds per MTT outer iteration, ours vs a reference written as the original MTT code does it, and the peak
memory of the unrolled vs constant-memory gradient as syn_steps grows.

The reference (after `distill.py`/`reparam_module.py` of Cazenavette et al.): a flat-parameter module whose
forward re-binds every parameter view onto the submodules, `autograd.grad(create_graph=True)` in a Python loop
over a growing list of flat parameter vectors, then `.backward()` of the normalized MSE.
Usage: python benchmarks/bench_mtt.py [--iters 5] [--skip-memory]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from dd.augment.dsa import dsa_for
from dd.data import load_dataset
from dd.methods.trajectory import ConvNetForward, ParamLayout, constant_memory_grad, draw_plans, unrolled_grad
from dd.models import build_model
from dd.synset import SyntheticSet

MODEL = "convnet-w32"


class FlatParamNet:
    """Reference-style flat-parameter module: each forward rebinds views of one flat vector onto the submodules."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.slots = []
        for name, p in list(model.named_parameters()):
            mod_name, _, attr = name.rpartition(".")
            mod = model.get_submodule(mod_name)
            self.slots.append((mod, attr, p.shape, p.numel()))
            delattr(mod, attr)
            setattr(mod, attr, p.detach().clone())

    def __call__(self, x: torch.Tensor, flat_param: torch.Tensor) -> torch.Tensor:
        for (mod, attr, shape, _), t in zip(self.slots, flat_param.split([s[3] for s in self.slots])):
            setattr(mod, attr, t.view(shape))
        return self.model(x)


def setup(ipc: int, seed: int = 0):
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
    return ds, s.images.clone(), s.labels.clone(), model, layout, start, target, g


def reference_iteration(net, images, labels, syn_lr, opt_img, opt_lr, start, target, steps, dsa, g):
    student_params = [start.clone().requires_grad_(True)]
    num_params = start.numel()
    indices_chunks = []
    for _ in range(steps):
        if not indices_chunks:
            indices_chunks = list(torch.randperm(len(images), generator=g).split(len(images)))
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
    plans = draw_plans(len(images), steps, None, dsa, tuple(ds.image_size), g)
    fn = unrolled_grad if mode == "unrolled" else constant_memory_grad
    res = fn(fwd, layout, start, target, images, labels, syn_lr, plans)
    opt_img.zero_grad(set_to_none=True)
    opt_lr.zero_grad(set_to_none=True)
    images.grad, syn_lr.grad = res.images_grad, res.lr_grad
    opt_img.step()
    opt_lr.step()
    return res.loss


def time_pair(ipc: int, steps: int, iters: int) -> dict:
    ds, imgs, labels, model, layout, start, target, _ = setup(ipc)
    dsa = dsa_for(ds.flip_ok)
    out = {}
    for name in ("reference", "ours"):
        images = imgs.clone().requires_grad_(True)
        syn_lr = torch.tensor(0.01, requires_grad=True)
        opt_img = torch.optim.SGD([images], lr=1000, momentum=0.5)
        opt_lr = torch.optim.SGD([syn_lr], lr=1e-5, momentum=0.5)
        g = torch.Generator().manual_seed(1)
        if name == "reference":
            net = FlatParamNet(build_model(MODEL, ds.channels, ds.num_classes, ds.image_size))
            run = lambda: reference_iteration(net, images, labels, syn_lr, opt_img, opt_lr, start, target, steps, dsa, g)
        else:
            fwd = ConvNetForward.of(model)
            run = lambda: ours_iteration(fwd, layout, images, labels, syn_lr, opt_img, opt_lr, start, target, steps, dsa, g, ds)
        run()  # warm-up
        t = time.perf_counter()
        for _ in range(iters):
            run()
        out[name] = (time.perf_counter() - t) / iters
    return out


def memory_child(mode: str, steps: int, ipc: int) -> None:
    ds, imgs, labels, model, layout, start, target, g = setup(ipc)
    fwd = ConvNetForward.of(model)
    images = imgs.clone().requires_grad_(True)
    syn_lr = torch.tensor(0.01, requires_grad=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode != "baseline":
        plans = draw_plans(len(images), steps, None, dsa_for(ds.flip_ok), tuple(ds.image_size), g)
        fn = unrolled_grad if mode == "unrolled" else constant_memory_grad
        fn(fwd, layout, start, target, images, labels, syn_lr, plans)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mb": peak / 1024, "setup_mb": before / 1024}))


def measure_memory(mode: str, steps: int, ipc: int) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", mode, str(steps), str(ipc)], capture_output=True, text=True,
                       check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--steps", default="10,20,40,80", help="syn_steps of the memory table")
    ap.add_argument("--memory-ipc", type=int, default=2)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        memory_child(a.child[0], int(a.child[1]), int(a.child[2]))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, mnist10k, {MODEL}, per-sample DSA, batch_syn all")
    print("| setting | reference s/it | ours s/it | speed-up |\n|---|---|---|---|")
    for ipc, steps in (() if a.skip_timing else ((1, 50), (10, 30))):
        t = time_pair(ipc, steps, a.iters)
        print(f"| IPC {ipc}, {steps} steps | {t['reference']:.3f} | {t['ours']:.3f} | {t['reference'] / t['ours']:.2f}x |",
              flush=True)
    if a.skip_memory:
        return
    base = measure_memory("baseline", 0, a.memory_ipc)["peak_mb"]
    print(f"\npeak RSS (MB) of one gradient at IPC {a.memory_ipc}, fresh process each; setup alone peaks at {base:.0f} MB")
    print("| syn_steps | unrolled peak | unrolled above setup | constant peak | constant above setup |\n|---|---|---|---|---|")
    rows = {}
    for steps in [int(v) for v in a.steps.split(",")]:
        u = measure_memory("unrolled", steps, a.memory_ipc)["peak_mb"]
        c = measure_memory("constant", steps, a.memory_ipc)["peak_mb"]
        rows[steps] = c
        print(f"| {steps} | {u:.0f} | {u - base:.0f} | {c:.0f} | {c - base:.0f} |", flush=True)
    lo, hi = min(rows), max(rows)
    print(f"constant-memory peak at {hi} steps / at {lo} steps: {rows[hi] / rows[lo]:.3f} (target <= 1.3)")


if __name__ == "__main__":
    main()
