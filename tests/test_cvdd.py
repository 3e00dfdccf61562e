"""CV-DD: the weighted committee loss and voted labels by hand, BN normalization, voter choice, priors and metadata."""
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dd.buffers import record_buffer
from dd.buffers.config import BufferConfig
from dd.data import load_dataset
from dd.methods import build_method, distill
from dd.methods.cvdd import bn_scales, committee_loss, select_voters, softmax_weights
from dd.methods.recover import bn_distance
from dd.teachers import Committee


def tiny(seed: int, width: int = 2) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(4 * width, 3)).eval()
    net[1].running_mean.uniform_(-0.5, 0.5)
    net[1].running_var.uniform_(0.5, 1.5)
    return net


def widened(net: nn.Sequential, k: int) -> nn.Sequential:
    """The same function with every channel repeated k times: each BN term is sqrt(k) times the original's."""
    w = net[0].out_channels
    out = tiny(0, w * k)
    with torch.no_grad():
        out[0].weight.copy_(net[0].weight.repeat(k, 1, 1, 1))
        out[0].bias.copy_(net[0].bias.repeat(k))
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(out[1], name).copy_(getattr(net[1], name).repeat(k))
        lin = net[5].weight.view(3, w, 4).repeat(1, k, 1).view(3, w * k * 4) / k
        out[5].weight.copy_(lin)
        out[5].bias.copy_(net[5].bias)
    return out.eval()


def test_committee_loss_and_voted_labels_match_a_hand_computation():
    a, b = tiny(1), tiny(2)
    x = torch.randn(4, 1, 5, 5)
    y = torch.tensor([0, 2, 1, 0])
    priors = [62.0, 55.0]
    w = softmax_weights(priors, 5.0)
    assert w[0] == pytest.approx(1 / (1 + math.exp(-7 / 5))) and sum(w) == pytest.approx(1.0)
    loss, ces, bns = committee_loss([a, b], w, [2.0, 0.5], x, y, r_bn=0.01, first_bn_weight=10.0)
    expect = 0.0
    for net, wi, s in ((a, w[0], 2.0), (b, w[1], 0.5)):
        ce = F.cross_entropy(net(x), y)
        bn = 10.0 * bn_distance(net[0](x), net[1].running_mean, net[1].running_var)  # the only BN layer is the first
        expect += wi * (ce + 0.01 * bn / s)
    assert float(loss.detach()) == pytest.approx(float(expect.detach()), rel=1e-6)
    lw = softmax_weights(priors, 10.0)
    voted = Committee([a, b], lw)(x)
    assert torch.allclose(voted, lw[0] * a(x) + lw[1] * b(x))
    p = F.softmax(voted / 20.0, 1)  # what the student is distilled towards at T = 20
    assert torch.allclose(p.sum(1), torch.ones(4))


def test_normalization_makes_two_copies_at_different_bn_scales_weigh_equally():
    a = tiny(3)
    b = widened(a, 100)  # the same function, BN loss 10x larger
    x0 = torch.randn(6, 1, 5, 5)
    x = (x0 + 0.3 * torch.randn_like(x0)).requires_grad_(True)
    assert torch.allclose(a(x0), b(x0), atol=1e-5)
    bn_a = bn_distance(a[0](x0), a[1].running_mean, a[1].running_var).detach()
    bn_b = bn_distance(b[0](x0), b[1].running_mean, b[1].running_var).detach()
    assert float(bn_b / bn_a) == pytest.approx(10.0, rel=1e-4)
    y = torch.tensor([0, 1, 2, 0, 1, 2])

    def grads(scales):
        out = []
        for net, s in ((a, scales[0]), (b, scales[1])):
            loss, _, _ = committee_loss([net], [0.5], [s], x, y, r_bn=1.0, first_bn_weight=1.0)
            out.append(torch.autograd.grad(loss, x)[0])
        return out

    init = bn_scales([float(bn_a), float(bn_b)])  # bn_normalize='init': relative to each member's start
    assert init == pytest.approx([2 / 11, 20 / 11], rel=1e-4)  # 1 : 10, mean 1
    ga, gb = grads(init)
    assert torch.allclose(ga, gb, atol=1e-5)
    ga, gb = grads([1.0, 1.0])  # the paper's plain sum: the widened copy's BN term dominates
    assert (gb - ga).norm() > (ga.norm())


def test_voter_selection():
    priors = [50.0, 70.0, 60.0, 40.0]
    assert [select_voters(i, priors, 2, "cycle") for i in range(3)] == [[0, 1], [2, 3], [0, 1]]
    assert select_voters(5, priors, 2, "top") == [1, 2]
    picks = {tuple(select_voters(0, priors, 2, "random", torch.Generator().manual_seed(s))) for s in range(20)}
    assert len(picks) > 1 and all(len(set(p)) == 2 for p in picks)
    with pytest.raises(ValueError, match="unknown selection"):
        select_voters(0, priors, 2, "best")


@pytest.fixture(scope="module")
def committee(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("committee") / "bn"
    cfg = BufferConfig(dataset="digits", model="convnet-bn", model_options={"width": 8, "depth": 2}, experts=3, epochs=6,
                       lr=0.05, batch_size=128)
    record_buffer(cfg, root, device="cpu", progress=False, log=lambda s: None)
    return [str(root), f"{root}@1"]  # two members (experts 0 and 1 of one buffer; expert 2 is a third, distinct one)


def test_cvdd_records_members_priors_and_weights_and_caches_priors(committee, tmp_path, capsys):
    run = {"iterations": 3, "eval_every": 0, "eval_runs": 0, "progress": False}
    cfg = {"batch_classes": 10, "prior": "teacher", "model": "convnet-d2"}
    res = distill("cvdd", "digits", 2, out=tmp_path / "a", teachers=committee, config=cfg, run=run, device="cpu")
    members = res.synset.meta["committee"]
    assert [m["spec"] for m in members] == committee
    assert all(len(m["sha256"]) == 64 and 0 < m["prior"]["value"] <= 100 for m in members)
    weights = [m["label_weight"] for m in members]
    assert weights == pytest.approx(softmax_weights([m["prior"]["value"] for m in members], 10.0))
    assert res.synset.meta["evaluation"]["teacher_weights"] == pytest.approx(weights)
    assert res.synset.meta["evaluation"]["protocol"]["batch_size"] == 16
    assert res.synset.meta["evaluation"]["protocol"]["teacher_bn"] == "train"
    cache = json.loads(open(committee[0] + "/priors.json").read())  # both members live in that buffer directory
    assert sorted(v["value"] for v in cache.values()) == sorted(m["prior"]["value"] for m in members)
    assert {v["settings"]["member"] for v in cache.values()} == {m["sha256"] for m in members}
    again = distill("cvdd", "digits", 2, out=tmp_path / "b", teachers=committee, config=cfg, run=run, device="cpu")
    assert all(m["prior"]["cached"] for m in again.synset.meta["committee"])
    from dd.cli import main

    capsys.readouterr()
    assert main(["show", str(tmp_path / "a" / "synset.safetensors")]) == 0
    shown = capsys.readouterr().out
    assert '"committee"' in shown and '"label_weight"' in shown and committee[1] in shown
    with pytest.raises(ValueError, match="at least 2 teachers"):
        distill("cvdd", "digits", 2, teachers=committee[:1], config=cfg, run=run)


def test_distilled_priors_are_scored_the_way_the_committee_set_is(committee, tmp_path):
    """A member's distilled prior is CDA from it alone, started as the committee's set is (real for 'medium'), scored
    under the committee's post-training protocol: another post-training batch is another prior, measured anew."""
    from dd.methods.priors import member_priors

    m = build_method("cvdd", "digits", 2, {"batch_classes": 10, "prior": "teacher"}, teachers=committee, seed=0)
    cfg = dataclasses.replace(m.config, prior="distilled", prior_ipc=1, prior_iterations=2, prior_epochs=2)
    first = member_priors(m.sources[:1], m.dataset, cfg, "cpu", m.post_protocol())
    cache = json.loads(open(committee[0] + "/priors.json").read())
    settings = cache[first[0]["key"]]["settings"]
    assert settings["init"] == "real" and settings["prior_iterations"] == 2
    assert settings["protocol"]["batch_size"] == 16 and settings["protocol"]["cosine_eta"] == 2.0
    assert settings["protocol"]["teacher_bn"] == "train" and settings["protocol"]["labels"] == "teacher"
    assert 0 <= first[0]["value"] <= 100 and not first[0]["cached"]
    assert member_priors(m.sources[:1], m.dataset, cfg, "cpu", m.post_protocol())[0] == {**first[0], "cached": True}
    other = member_priors(m.sources[:1], m.dataset, cfg, "cpu", m.post_protocol().with_(batch_size=32))
    assert other[0]["key"] != first[0]["key"] and not other[0]["cached"]
    noise = dataclasses.replace(cfg, init="noise")
    key = member_priors(m.sources[:1], m.dataset, noise, "cpu", m.post_protocol())[0]["key"]
    assert json.loads(open(committee[0] + "/priors.json").read())[key]["settings"]["init"] == "noise"


def test_medium_init_and_recovery_with_voters(committee):
    m = build_method("cvdd", "digits", 2, {"batch_classes": 10, "prior": "teacher", "voters": 2, "selection": "cycle"},
                     teachers=committee + [f"{committee[0]}@2"], seed=1)
    assert m.current_set().meta["init"] == "medium"
    real = load_dataset("digits").train_images
    first = m.current_set().images[0]
    assert any(torch.equal(first, r) for r in real)  # a real image
    n = m.num_steps(3)
    for it in range(n):
        out = m.step(it)
    assert m.voters == [2, 0]  # IPC index 1 of a 3-member committee, pairs in turn
    assert any(k.startswith("bn/") for k in out)


@pytest.fixture
def own_committee(committee, tmp_path):
    """The committee's buffer copied without its prior caches: a test that counts prior runs starts from none."""
    import shutil

    root = tmp_path / "bn"
    shutil.copytree(committee[0], root, ignore=shutil.ignore_patterns("priors*", ".*"))
    return [str(root), f"{root}@1"]


def old_loop_prior(source, dataset, config, protocol):
    """The prior as measured before it was a nested plan: CDA stepped by hand outside the driver (the reference)."""
    from dd.eval import evaluate
    from dd.methods.base import Inputs
    from dd.methods.sre2l import CDA, CDAConfig

    train, val = dataset.split_validation(0.1, seed=0)
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(CDAConfig)}
    cfg = CDAConfig(**{**values, "init": "real" if config.init in ("real", "medium") else "noise", "relabel_epochs": 0})
    m = CDA(cfg, train, config.prior_ipc, "cpu", torch.Generator().manual_seed(0), Inputs(teachers=[source]))
    m.init_synset()
    for it in range(m.num_steps(config.prior_iterations)):
        m.step(it)
    s = m.current_set()
    s.meta["dataset"] = "digits"
    row = evaluate(s, config.model, protocol.with_(epochs=config.prior_epochs), runs=1, dataset=val, device="cpu",
                   teacher=source.module(dataset), progress=False)
    return s, 100.0 * row.mean


def _prior_setup(specs, **prior):
    m = build_method("cvdd", "digits", 2, {"batch_classes": 10, "prior": "teacher"}, teachers=specs, seed=0)
    cfg = dataclasses.replace(m.config, prior="distilled", prior_ipc=2, prior_iterations=3, prior_epochs=2, **prior)
    return m, cfg


def test_a_distilled_prior_is_a_nested_cda_run_with_the_old_loops_set_and_value(own_committee):
    """The member's CDA run goes through the driver into a directory of its own beside the teacher (named in
    priors.json); its set and the prior are bit-identical to the hand-stepped loop's, for both starts."""
    from dd.methods.priors import member_priors
    from dd.synset import SyntheticSet

    root = Path(own_committee[0])
    for init in ("medium", "noise"):
        m, cfg = _prior_setup(own_committee, init=init)
        [got] = member_priors(m.sources[:1], m.dataset, cfg, "cpu", m.post_protocol())
        want_set, want = old_loop_prior(m.sources[0], m.dataset, cfg, m.post_protocol())
        assert got["value"] == want and not got["cached"]
        run = root / json.loads((root / "priors.json").read_text())[got["key"]]["run"]
        assert run.parent == root / "priors" and run.name.startswith("cda-ipc2-")
        saved = SyntheticSet.load(run / "synset.safetensors")
        assert torch.equal(saved.images, want_set.images) and torch.equal(saved.labels, want_set.labels)
        ident = json.loads((run / "config.json").read_text())
        assert ident["method"] == "cda" and ident["seed"] == 0 and ident["ipc"] == 2
        assert ident["config"]["init"] == ("real" if init == "medium" else "noise")
        assert ident["config"]["relabel_epochs"] == 0
        assert [t["sha256"] for t in ident["inputs"]["teachers"]] == [m.sources[0].sha256]
    assert len(list((root / "priors").iterdir())) == 2  # one run per start


def test_a_killed_prior_run_resumes_from_its_checkpoint(own_committee, monkeypatch, capsys):
    """Killed after 4 of its 6 steps (2 batches x 3 iterations, a checkpoint after every step), the prior's rerun
    takes the 2 steps left and measures the value the uninterrupted loop does."""
    from dd.methods import priors
    from dd.methods.sre2l import CDA

    m, cfg = _prior_setup(own_committee)
    monkeypatch.setattr(priors, "PRIOR_RUN", {**priors.PRIOR_RUN, "checkpoint_every": 1})
    step, calls = CDA.step, []

    def killed_after_4(self, it):
        if len(calls) == 4:
            raise KeyboardInterrupt("killed")
        calls.append(it)
        return step(self, it)

    monkeypatch.setattr(CDA, "step", killed_after_4)
    with pytest.raises(KeyboardInterrupt):
        priors.member_priors(m.sources[:1], m.dataset, cfg, "cpu", m.post_protocol())
    root = Path(own_committee[0])
    cache = json.loads((root / "priors.json").read_text())  # the committee's 'teacher' priors only
    assert {v["settings"]["prior"] for v in cache.values()} == {"teacher"}
    assert len(list((root / "priors").iterdir())) == 1  # the killed run's directory, with its checkpoint
    calls.clear()
    monkeypatch.setattr(CDA, "step", lambda self, it: calls.append(it) or step(self, it))
    capsys.readouterr()
    [got] = priors.member_priors(m.sources[:1], m.dataset, cfg, "cpu", m.post_protocol())
    assert calls == [4, 5] and "resuming cda from iteration 4" in capsys.readouterr().out
    assert got["value"] == old_loop_prior(m.sources[0], m.dataset, cfg, m.post_protocol())[1]


def test_a_second_committee_reuses_the_prior_runs(own_committee, tmp_path, monkeypatch):
    """A second CV-DD run with the same members runs no prior: the values come from priors.json; without it, the
    nested runs are found finished by their identity (the driver resumes them at their last step: no step runs)."""
    from dd.methods import driver
    from dd.methods.sre2l import CDA

    plans, steps = [], []
    run_plan, step = driver.run_plan, CDA.step
    monkeypatch.setattr(driver, "run_plan", lambda plan: plans.append(plan.method.name) or run_plan(plan))
    monkeypatch.setattr(CDA, "step", lambda self, it: steps.append(self.name) or step(self, it))
    run = {"iterations": 2, "eval_every": 0, "eval_runs": 0, "progress": False}
    cfg = {"batch_classes": 10, "prior": "distilled", "prior_ipc": 1, "prior_iterations": 2, "prior_epochs": 1,
           "model": "convnet-d2"}
    first = distill("cvdd", "digits", 1, out=tmp_path / "a", teachers=own_committee, config=cfg, run=run, device="cpu")
    assert plans == ["cvdd", "cda", "cda"] and steps.count("cda") == 2 * 2  # 1 batch x 2 iterations per member
    values = [c["prior"]["value"] for c in first.synset.meta["committee"]]
    plans.clear(), steps.clear()
    again = distill("cvdd", "digits", 1, out=tmp_path / "b", teachers=own_committee, config=cfg, run=run, device="cpu")
    assert plans == ["cvdd"] and "cda" not in steps
    assert [c["prior"] for c in again.synset.meta["committee"]] == [{**c["prior"], "cached": True}
                                                                     for c in first.synset.meta["committee"]]
    Path(own_committee[0], "priors.json").unlink()
    plans.clear(), steps.clear()
    third = distill("cvdd", "digits", 1, out=tmp_path / "c", teachers=own_committee, config=cfg, run=run, device="cpu")
    assert plans == ["cvdd", "cda", "cda"] and "cda" not in steps
    assert [c["prior"]["value"] for c in third.synset.meta["committee"]] == values
    assert torch.equal(third.synset.images, first.synset.images)


def test_a_prior_run_held_by_another_process_is_waited_for_then_reused(own_committee, monkeypatch, capsys):
    """While another writer holds the prior's directory (the same member's prior for another committee) the
    measurement waits instead of failing; once the holder lets go it runs (here: the whole run) and measures."""
    import threading

    from dd.lock import OutputLock
    from dd.methods import priors

    m, cfg = _prior_setup(own_committee)
    monkeypatch.setattr(priors, "LOCK_POLL_S", 0.05)
    train, _ = m.dataset.split_validation(0.1, seed=0)
    out = priors.prior_plan(m.sources[0], train, cfg, "cpu").out
    holder = OutputLock(out, command="another committee").acquire()
    threading.Timer(0.5, holder.release).start()
    [got] = priors.member_priors(m.sources[:1], m.dataset, cfg, "cpu", m.post_protocol())
    printed = capsys.readouterr().out
    assert "waiting for the prior run" in printed and "command another committee" in printed  # names the holder
    assert got["value"] == old_loop_prior(m.sources[0], m.dataset, cfg, m.post_protocol())[1]
    assert (out / "synset.safetensors").is_file()


def test_prior_runs_live_beside_their_teachers_value_cache():
    """DIR/priors.json and DIR/priors/ for a buffer expert, FILE.priors.json and FILE.priors/ for a checkpoint; a
    callable member has neither (its prior run has no directory, its value no cache)."""
    from dd.methods.priors import cache_path, runs_dir
    from dd.teachers import TeacherSource

    buffer = TeacherSource("runs/bn@2", "buffer", "0" * 64)
    file = TeacherSource("runs/t.safetensors", "file", "1" * 64)
    call = TeacherSource("pkg.mod:net", "callable", "2" * 64)
    assert (cache_path(buffer), runs_dir(buffer)) == (Path("runs/bn/priors.json"), Path("runs/bn/priors"))
    assert (cache_path(file), runs_dir(file)) == (Path("runs/t.safetensors.priors.json"), Path("runs/t.safetensors.priors"))
    assert cache_path(call) is None and runs_dir(call) is None
