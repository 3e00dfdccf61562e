"""Evaluation harness: losses by hand, the DC/MTT protocol's schedule, baselines, reports, the CLI, CUDA."""
import json
import math

import pytest
import torch
from PIL import Image
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

import dd.eval.harness as H
import dd.eval.train as T
from dd.cli import main
from dd.data import load_dataset
from dd.eval import (EvalResult, Protocol, Report, accuracy, cross_arch, distillation_loss, evaluate, evaluate_full,
                     evaluate_random, get_protocol, soft_cross_entropy, train_model)
from dd.models import build_model
from dd.synset import SyntheticSet

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


pytestmark = pytest.mark.usefixtures("one_thread")




@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist10k")


def tiny(epochs, **kw):
    return Protocol(epochs=epochs, **kw)


# ---- losses by hand ------------------------------------------------------------------------------

def test_soft_cross_entropy_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    p = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    lse = 3 + math.log(1 + math.exp(-1) + math.exp(-2))
    row0 = -(0.2 * (1 - lse) + 0.3 * (2 - lse) + 0.5 * (3 - lse))
    row1 = math.log(3)  # uniform prediction, one-hot target
    assert soft_cross_entropy(logits, p).item() == pytest.approx((row0 + row1) / 2, abs=1e-6)


def test_distillation_loss_by_hand():
    student = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    teacher = torch.tensor([[2.0, 0.0], [1.0, -1.0]])  # second row: identical, KL 0
    t = 2.0
    pt = [math.e / (math.e + 1), 1 / (math.e + 1)]  # softmax([2, 0] / 2)
    kl = sum(q * math.log(q / 0.5) for q in pt)
    assert distillation_loss(student, teacher, t).item() == pytest.approx(kl * t * t / 2, abs=1e-6)


# ---- the protocol --------------------------------------------------------------------------------

def test_default_protocol_is_dc_mtt():
    p = get_protocol("hard")
    assert (p.lr, p.momentum, p.weight_decay, p.batch_size, p.lr_decay_at, p.lr_decay) == (0.01, 0.9, 5e-4, 256, 0.5, 0.1)
    assert p.dsa and p.dsa_strategy == "color_crop_cutout_flip_scale_rotate" and p.labels == "hard"
    assert p.use_learned_lr and p.epochs == 1000
    with pytest.raises(KeyError, match="known protocols: (.*, )?hard, soft, stored, teacher"):
        get_protocol("fancy")
    with pytest.raises(ValueError, match="labels"):
        Protocol(labels="mixed")


@pytest.fixture
def opt_log():
    """Records (lr, momentum, weight_decay) of every SGD step."""
    log = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: log.append((opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"],
                                              opt.param_groups[0]["weight_decay"])))
    yield log
    handle.remove()


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


@pytest.mark.parametrize("epochs,batch,steps_per_epoch,high_epochs", [(6, 256, 1, 3), (5, 256, 1, 2), (4, 2, 3, 2)])
def test_lr_is_multiplied_by_0_1_exactly_at_half(opt_log, epochs, batch, steps_per_epoch, high_epochs):
    x, y = torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    train_model(small_model(), x, y, tiny(epochs, batch_size=batch, dsa=False))
    lrs = [round(lr, 12) for lr, _, _ in opt_log]
    expected = [0.01] * (high_epochs * steps_per_epoch) + [0.001] * ((epochs - high_epochs) * steps_per_epoch)
    assert lrs == expected
    assert {(m, wd) for _, m, wd in opt_log} == {(0.9, 5e-4)}


def test_training_uses_per_sample_dsa_without_flip_for_digits(monkeypatch):
    calls = []

    class Probe(T.DSA):
        def __call__(self, x, generator=None):
            calls.append(("call", len(x), self.strategy))
            return super().__call__(x, generator)

        def siamese(self, *a, **k):  # pragma: no cover - must not be used by the evaluation
            raise AssertionError("evaluation must draw per-sample parameters")

    monkeypatch.setattr(T, "DSA", Probe)
    x, y = torch.randn(10, 1, 4, 4), torch.arange(10) % 3
    train_model(small_model(), x, y, tiny(3, batch_size=4), flip_ok=False)
    assert [c[1] for c in calls] == [4, 4, 2] * 3
    assert {c[2] for c in calls} == {"color_crop_cutout_scale_rotate"}
    calls.clear()
    train_model(small_model(), x, y, tiny(1, batch_size=4, dsa=False))
    assert calls == []


def test_soft_protocol_accepts_class_ids_with_an_absent_last_class():
    x, y = torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 0, 1, 0, 1])  # class 2 has no sample
    out = train_model(small_model(), x, y, tiny(2, labels="soft", dsa=False))
    assert math.isfinite(out["final_loss"])


def test_stored_protocol_needs_stored_labels():
    with pytest.raises(ValueError, match="replays stored teacher labels: pass labels="):
        train_model(small_model(), torch.randn(3, 1, 4, 4), torch.arange(3), get_protocol("stored", epochs=1))


def test_teacher_protocol_needs_a_teacher():
    with pytest.raises(ValueError, match="teacher"):
        train_model(small_model(), torch.randn(3, 1, 4, 4), torch.arange(3), get_protocol("teacher", epochs=1))


def digits_set(digits, ipc=2, lr=None, seed=0):
    s = SyntheticSet.from_real(digits, ipc, torch.Generator().manual_seed(seed))
    s.lr = lr
    return s


def test_learned_lr_is_used_unless_the_protocol_ignores_it(digits, opt_log):
    s = digits_set(digits, lr=0.037)
    r = evaluate(s, "convnet-w32", tiny(2), runs=1, device="cpu", progress=False)
    assert {round(lr, 12) for lr, _, _ in opt_log[:1]} == {0.037} and r.extra["lr"] == 0.037
    opt_log.clear()
    r = evaluate(s, "convnet-w32", tiny(2, use_learned_lr=False), runs=1, device="cpu", progress=False)
    assert round(opt_log[0][0], 12) == 0.01 and r.extra["lr"] == 0.01


def test_evaluate_reports_the_last_epoch_of_fresh_seeded_networks(digits):
    s = digits_set(digits, ipc=3)
    proto = tiny(4)
    r = evaluate(s, "convnet-w32", proto, runs=2, device="cpu", progress=False, seed=5)
    assert len(r.accs) == 2 and r.ipc == 3 and r.name == "synthetic"
    # by hand: a fresh network seeded 5 (then 6), trained the whole schedule, tested once at the end
    for k, seed in enumerate((5, 6)):
        torch.manual_seed(seed)
        m = build_model("convnet-w32", 1, 10, (8, 8))
        train_model(m, s.images, s.labels, proto, seed=seed, flip_ok=False)
        assert r.accs[k] == accuracy(m, digits.test_images, digits.test_labels)
    assert r.mean == pytest.approx(sum(r.accs) / 2) and r.std == pytest.approx(abs(r.accs[0] - r.accs[1]) / 2)


def test_evaluate_refuses_a_set_from_another_dataset(digits, mnist):
    with pytest.raises(ValueError, match="set images are"):
        evaluate(digits_set(digits), "convnet-w32", tiny(1), runs=1, dataset=mnist, device="cpu", progress=False)


def test_random_baseline_draws_a_fresh_subset_per_run_and_full_uses_all(digits, monkeypatch):
    seen = []

    def fake(images, labels, dataset, arch, protocol, **kw):
        # the full-data baseline passes the training split as a source (read batch by batch), sets pass tensors
        seen.append((images.clone() if torch.is_tensor(images) else images, labels.clone(), protocol, kw["seed"]))
        return 0.5

    monkeypatch.setattr(H, "train_and_test", fake)
    r = evaluate_random(digits, 3, "convnet-w32", tiny(7), runs=4, device="cpu", progress=False)
    assert r.accs == [0.5] * 4 and r.name == "random-real" and r.ipc == 3
    assert [s[3] for s in seen] == [0, 1, 2, 3]
    for i in range(4):
        assert torch.bincount(seen[i][1], minlength=10).tolist() == [3] * 10
        for j in range(i):
            assert not torch.equal(seen[i][0], seen[j][0])
    first = [s[0] for s in seen]
    seen.clear()
    evaluate_random(digits, 3, "convnet-w32", tiny(7), runs=4, device="cpu", progress=False)
    assert all(torch.equal(a, s[0]) for a, s in zip(first, seen))  # reproducible from the seed
    seen.clear()
    r = evaluate_full(digits, "convnet-w32", tiny(7), runs=1, epochs=3, device="cpu", progress=False)
    assert seen[0][0] is digits.train and seen[0][2].epochs == 3 and r.ipc is None
    assert torch.equal(seen[0][0].materialize(), digits.train_images)


def test_random_real_ipc10_on_mnist10k_is_well_above_chance(mnist):
    r = evaluate_random(mnist, 10, "convnet-w32", tiny(100), runs=1, device="cpu", progress=False)
    assert r.accs[0] > 0.80, r


def test_cross_arch_evaluates_one_set_on_several_architectures(digits):
    rows = cross_arch(digits_set(digits), ["convnet-w32", "convnet-d1"], tiny(1), runs=1, device="cpu", progress=False)
    assert [r.arch for r in rows] == ["convnet-w32", "convnet-d1"] and all(len(r.accs) == 1 for r in rows)


# ---- reports -------------------------------------------------------------------------------------

def test_report_markdown_and_json_round_trip(tmp_path):
    p = tiny(300).to_dict()
    rows = [EvalResult("dm", "convnet", "mnist10k", [0.90, 0.92, 0.94], p, ipc=10),
            EvalResult("full", "convnet", "mnist10k", [0.985], {**p, "epochs": 30})]
    rep = Report(rows, meta={"dataset": "mnist10k"})
    # population std of (90, 92, 94) = sqrt(8/3) = 1.63
    assert rep.to_markdown() == ("| set | arch | dataset | IPC | protocol | epochs | runs | accuracy (%) |\n"
                                 "|---|---|---|---|---|---|---|---|\n"
                                 "| dm | convnet | mnist10k | 10 | hard | 300 | 3 | 92.00 ± 1.63 |\n"
                                 "| full | convnet | mnist10k | all | hard | 30 | 1 | 98.50 ± 0.00 |\n")
    j, m = rep.save(tmp_path)
    loaded = Report.load_json(j)
    assert loaded == json.loads(json.dumps(rep.to_dict()))
    assert loaded["rows"][0]["accs"] == [0.90, 0.92, 0.94] and loaded["rows"][0]["std"] == pytest.approx(math.sqrt(8 / 3) / 100)
    assert m.read_text() == rep.to_markdown()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json", "eval.md"]


# ---- CUDA ----------------------------------------------------------------------------------------

@needs_cuda
def test_evaluate_runs_on_cuda(digits):
    s = digits_set(digits, ipc=5)
    r = evaluate(s, "convnet-w32", tiny(60), runs=1, device="cuda", progress=False)
    assert r.accs[0] > 0.3  # chance is 0.1; 0.57 on CPU with these settings
    rnd = evaluate_random(digits, 5, "convnet-w32", tiny(2), runs=2, device="cuda", progress=False)
    assert len(rnd.accs) == 2


@needs_cuda
def test_dsa_on_cuda_matches_cpu():
    from dd.augment import DSAParams, apply, draw

    x = torch.randn(4, 3, 16, 16)
    for fam in ("color", "crop", "cutout", "flip", "scale", "rotate"):
        prm = draw(fam, 4, (16, 16), DSAParams(), torch.Generator().manual_seed(0))
        xc = x.to("cuda").requires_grad_()
        out = apply(fam, xc, prm)
        out.sum().backward()
        torch.testing.assert_close(out.detach().cpu(), apply(fam, x, prm), atol=1e-5, rtol=1e-5)
        assert xc.grad is not None and xc.grad.device.type == "cuda"


def test_cuda_request_without_a_gpu_is_a_clear_error(digits):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        evaluate(digits_set(digits), "convnet-w32", tiny(1), runs=1, device="cuda", progress=False)


# ---- the command line ----------------------------------------------------------------------------

def test_dd_eval_baseline_writes_json_and_markdown(tmp_path, capsys):
    rc = main(["eval", "--dataset", "digits", "--baseline", "random", "--ipc", "2", "--model", "convnet-w32",
               "--epochs", "2", "--runs", "2", "--device", "cpu", "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "eval.json").read_text())
    assert [(r["name"], r["ipc"], r["runs"], r["protocol"]["epochs"]) for r in data["rows"]] == [("random-real", 2, 2, 2)]
    md = (tmp_path / "eval.md").read_text()
    assert "| random-real | convnet-w32 | digits | 2 | hard | 2 | 2 |" in md
    assert "random-real [convnet-w32, digits, ipc=2]" in capsys.readouterr().out


def test_dd_eval_a_set_file_beside_both_baselines(tmp_path, digits):
    path = digits_set(digits, lr=0.02).save(tmp_path / "set.safetensors")
    rc = main(["eval", str(path), "--models", "convnet-w32,convnet-d1", "--epochs", "1", "--runs", "1",
               "--device", "cpu"])
    assert rc == 0
    rows = json.loads((tmp_path / "eval.json").read_text())["rows"]
    assert [(r["name"], r["arch"]) for r in rows] == [
        ("synthetic", "convnet-w32"), ("random-real", "convnet-w32"), ("full", "convnet-w32"),
        ("synthetic", "convnet-d1"), ("random-real", "convnet-d1"), ("full", "convnet-d1")]
    assert rows[0]["extra"]["lr"] == 0.02 and rows[1]["ipc"] == 2


def test_dd_eval_errors_are_clear(capsys, tmp_path):
    assert main(["eval", "--dataset", "digits", "--baseline", "random", "--epochs", "1"]) == 2
    assert "--baseline random needs --ipc" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing.safetensors")]) == 2
    assert "no synthetic set at" in capsys.readouterr().err


def test_dd_show_writes_a_png_grid(tmp_path, digits, capsys):
    path = digits_set(digits, ipc=3).save(tmp_path / "set.safetensors")
    assert main(["show", str(path)]) == 0
    img = Image.open(tmp_path / "set.png")
    assert img.size == (3 * 66 + 2, 10 * 66 + 2)  # 8 px upscaled to 64, padding 2, one row per class
    out = capsys.readouterr().out
    assert json.loads(out[:out.rindex("}") + 1])["ipc"] == 3


def test_dd_lists_registered_names(capsys):
    for cmd, names in (("datasets", ["mnist10k", "digits"]), ("models", ["convnet", "convnet-w32"]),
                       ("methods", ["dm"])):
        assert main([cmd]) == 0
        listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
        assert set(names) <= set(listed) and listed == sorted(listed)


def test_dd_eval_full_baseline_defaults_to_30_epochs_not_the_protocols_1000(tmp_path, digits, monkeypatch):
    monkeypatch.setattr(H, "train_and_test", lambda *a, **k: 0.5)
    path = digits_set(digits).save(tmp_path / "set.safetensors")
    assert main(["eval", str(path), "--model", "convnet-w32", "--runs", "1", "--device", "cpu"]) == 0
    rows = json.loads((tmp_path / "eval.json").read_text())["rows"]
    assert [(r["name"], r["protocol"]["epochs"]) for r in rows] == [("synthetic", 1000), ("random-real", 1000),
                                                                    ("full", 30)]


USER_PROTOCOL = '''
import torch
import torch.nn.functional as F
from dd.eval.rules import ProtocolRule

class AllZero(ProtocolRule):
    """Trains every network to answer class 0: its own batches (the set's first image, repeated) and its own loss."""

    settings = {"epochs": 4, "lr": 0.5, "dsa": False, "use_learned_lr": False}

    def batches(self, job, epoch):
        x = job.images[:1].expand(8, *job.images.shape[1:])
        yield x, torch.zeros(8, dtype=torch.long, device=job.device)

    def loss(self, logits, y, protocol):
        return F.cross_entropy(logits, y) * 2.0

def all_zero():
    return AllZero()
'''


def test_an_outside_protocol_goes_through_ddtk_eval(tmp_path, digits, monkeypatch, capsys):
    """A protocol defined in a user module (its batches and its loss) trains every run of `ddtk eval --protocol
    package.module:callable`: each network then answers class 0, so its accuracy is class 0's share of the test split,
    whatever the set; the report records the protocol by its spec, and the set reloads it from there."""
    (tmp_path / "zero_protocol.py").write_text(USER_PROTOCOL)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = digits_set(digits).save(tmp_path / "set.safetensors")
    share = float((digits.test_labels == 0).float().mean())
    assert main(["eval", str(path), "--protocol", "zero_protocol:all_zero", "--models", "mlp", "--runs", "2",
                 "--baseline", "random", "--ipc", "1", "--device", "cpu"]) == 0
    rows = json.loads((tmp_path / "eval.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["synthetic", "random-real"]
    for r in rows:
        assert r["accs"] == [pytest.approx(share)] * 2
        assert r["protocol"]["name"] == r["protocol"]["labels"] == "zero_protocol:all_zero"
        assert r["protocol"]["epochs"] == 4 and r["protocol"]["lr"] == 0.5  # the protocol's own settings
    assert get_protocol(rows[0]["protocol"]).labels == "zero_protocol:all_zero"
    assert main(["eval", str(path), "--protocol", "zero_protocol:nothing", "--no-baselines"]) == 2
    assert "cannot load user protocol 'zero_protocol:nothing'" in capsys.readouterr().err
