"""Coreset baselines (dd.coresets, dd.eval.baselines): selection rules against hand and brute-force computations,
the test split never read, report budgets equal to hand-computed tensor sizes, --protocols with both regimes."""
import itertools
import json
import os
import math

import pytest
import torch
from safetensors.torch import save_file

import dd.coresets as C
from dd.buffers import BufferConfig, TrajectoryStore, record_buffer
from dd.cli import main
from dd.eval import Protocol
from dd.eval.baselines import check_baselines
from dd.eval.harness import build_report, random_row, set_row
from dd.models import build_model
from dd.synset import SyntheticSet

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- the rules by hand and by brute force ---------------------------------------------------------------------

def test_herding_picks_match_a_hand_computation():
    # mu = (0.75, 1). Step 1: ||mu - x||: 1.25, 1.60, 2.14, 0.25 -> x3. Step 2: ||2mu - x3 - x|| = ||(0.5, 1) - x||:
    # x0 1.12, x1 1.80, x2 2.06 -> x0. Step 3: ||(1.25, 2) - x||: x1 2.14, x2 1.60 -> x2.
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    assert C.herding(x, 3) == [3, 0, 2]
    assert C.herding(x, 4) == [3, 0, 2, 1]
    # DeepCore's argmax of the same distance would start from x2, the point farthest from the mean
    mu = x.mean(0)
    assert int((mu - x).norm(dim=1).argmax()) == 2


def brute_kcenter(points, first, k):
    """Farthest-point order recomputed directly: each step scans every point's nearest chosen center."""
    chosen = [first]
    while len(chosen) < k:
        best, best_d = None, -1.0
        for i, p in enumerate(points):
            d = min(math.dist(p, points[c]) for c in chosen)
            if d > best_d:  # strict: the first of equal distances wins
                best, best_d = i, d
        chosen.append(best)
    return chosen


def brute_radius(points, centers):
    return max(min(math.dist(p, points[c]) for c in centers) for p in points)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kcenter_greedy_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(9, 3, generator=g, dtype=torch.float64)
    points = x.tolist()
    k = 3
    picks = C.kcenter_greedy(x, k, torch.Generator().manual_seed(100 + seed))
    first = int(torch.randint(9, (1,), generator=torch.Generator().manual_seed(100 + seed)))
    assert picks[0] == first  # the first center comes from the seeded generator
    assert picks == brute_kcenter(points, first, k)
    radius = C.cover_radius(x, picks)
    assert radius == pytest.approx(brute_radius(points, picks), rel=1e-12)
    # the greedy's cover radius is within twice the optimal k-center radius (every 3-subset of the 9 points)
    optimum = min(brute_radius(points, list(c)) for c in itertools.combinations(range(9), k))
    assert optimum <= radius <= 2 * optimum + 1e-12


def test_forgetting_counts_on_a_hand_made_correctness_matrix():
    correct = torch.tensor([[1, 0, 0, 1],   # snapshots (rows) x examples (columns)
                            [1, 1, 0, 0],
                            [1, 0, 0, 0],
                            [1, 1, 0, 1],
                            [1, 0, 0, 1]])
    # ex0 always right: 0; ex1 flips 1->0 twice; ex2 never learned: 0 (DeepCore's convention); ex3 once
    assert C.forgetting_counts(correct).tolist() == [0, 2, 0, 1]
    counts = torch.tensor([0, 2, 0, 1])
    assert C.most_forgotten(counts, 2, torch.Generator().manual_seed(0)) == [1, 3]
    third = {C.most_forgotten(counts, 3, torch.Generator().manual_seed(s))[2] for s in range(20)}
    assert third == {0, 2}  # ties go to a seeded random order, not always the lowest index


def test_k_larger_than_a_class_is_refused():
    with pytest.raises(ValueError, match="cannot select 5 of 4"):
        C.herding(torch.zeros(4, 2), 5)


# ---- selections read only the training split --------------------------------------------------------------------

class Forbidden:
    """Stands in for the test split: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the test split was read (.{name})")

    def __len__(self):
        raise AssertionError("the test split was read (len)")

    def __getitem__(self, item):
        raise AssertionError("the test split was read ([])")


@pytest.fixture(scope="module")
def small_buffer(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("coreset_buf") / "b"
    cfg = BufferConfig(dataset="digits", model="convnet-d1", model_options={"width": 8}, experts=1, epochs=4,
                       batch_size=64, lr=0.1)
    return record_buffer(cfg, out, device="cpu", dataset=digits, progress=False, log=lambda s: None)


def guarded(digits):
    ds = digits.with_train(digits.train, digits.train_labels)
    ds.test, ds.test_labels = Forbidden(), Forbidden()
    return ds


def test_selections_never_read_the_test_split(digits, small_buffer, monkeypatch):
    monkeypatch.setattr(C, "FEATURE_EPOCHS", 1)  # the default network, trained here: one epoch is enough to test
    ds = guarded(digits)
    trained = C.Selector(ds, None, seed=0)
    from_buffer = C.Selector(ds, str(small_buffer), seed=0)
    for sel, methods in ((trained, ("herding", "kcenter")), (from_buffer, C.SELECTIONS)):
        for m in methods:
            s = sel.select(m, 2, torch.Generator().manual_seed(0))
            assert s.labels.tolist() == [c for c in range(10) for _ in range(2)]
            assert s.meta["method"] == m and s.meta["wall_seconds"] >= 0
    # the report rows are planned (selections made) without the test split either
    rows = [random_row(ds, 2, "mlp", Protocol(epochs=1), 1)]
    from dd.eval.baselines import coreset_row

    rows += [coreset_row(from_buffer, m, 2, "mlp", Protocol(epochs=1), 2) for m in C.SELECTIONS]
    assert [r.name for r in rows] == ["random-real", *C.SELECTIONS]


def test_selected_images_are_training_images_and_forgetting_counts_the_buffer(digits, small_buffer):
    sel = C.Selector(digits, str(small_buffer))
    store = TrajectoryStore(small_buffer)
    c = 3
    x = digits.real().all_of(c)
    direct = torch.stack([store.module(0, e)(x).argmax(1) == c for e in range(1, store.num_epochs)])
    assert torch.equal(sel.forgetting()[c], C.forgetting_counts(direct))
    s = sel.select("forgetting", 4, torch.Generator().manual_seed(0))
    picked = s.images[s.labels == c]
    rank = sel.forgetting()[c]
    idx = [int(((x - p).flatten(1).abs().sum(1) == 0).nonzero()[0]) for p in picked]
    assert sorted(rank[idx].tolist(), reverse=True) == sorted(rank.tolist(), reverse=True)[:4]
    h = sel.select("herding", 3, torch.Generator())
    assert torch.equal(h.images[h.labels == c], x[C.herding(sel.features()[c], 3)])


def test_forgetting_needs_a_buffer(digits):
    net = build_model("mlp", 1, 10, (8, 8))
    with pytest.raises(ValueError, match="--coreset-net DIR"):
        C.Selector(digits, net).select("forgetting", 2, torch.Generator())
    with pytest.raises(ValueError, match="unknown baseline"):
        check_baselines(["random", "herd"])


# ---- budgets --------------------------------------------------------------------------------------------------

def test_budget_bytes_equal_hand_computed_tensor_sizes(digits):
    images = torch.zeros(20, 1, 8, 8)  # 20 * 64 float32 = 5,120 bytes
    hard = SyntheticSet(images, torch.arange(10).repeat_interleave(2), 10, meta={"wall_seconds": 12.5})
    row = set_row(hard, "mlp", Protocol(epochs=1), 1, dataset=digits)
    assert (row.extra["image_bytes"], row.extra["label_bytes"], row.extra["made_seconds"]) == (5120, 160, 12.5)
    assert row.extra["labels_exceed_images"] is False
    soft = SyntheticSet(images[:2], torch.full((2, 10), 0.1), 10)  # 2 * 64 * 4 = 512 bytes of images, 80 of labels
    row = set_row(soft, "mlp", Protocol(name="soft", labels="soft", epochs=1), 1, dataset=digits)
    assert (row.extra["image_bytes"], row.extra["label_bytes"], row.extra["made_seconds"]) == (512, 80, None)
    half = SyntheticSet(images.half(), torch.arange(10).repeat_interleave(2), 10)  # 20 * 64 * 2 = 2,560 bytes
    assert set_row(half.to("cpu"), "mlp", Protocol(epochs=1), 1, dataset=digits).extra["image_bytes"] == 2560
    rnd = random_row(digits, 3, "mlp", Protocol(epochs=1), 1)
    assert (rnd.extra["image_bytes"], rnd.extra["label_bytes"]) == (3 * 10 * 64 * 4, 3 * 10 * 8)


def test_a_row_whose_labels_outweigh_its_images_says_so(digits):
    from dd.eval.baselines import set_budget
    from dd.eval.harness import EvalResult
    from dd.eval.report import Report

    extra = set_budget(torch.zeros(2, 1, 2, 2), torch.full((2, 10), 0.1), Protocol(name="soft", labels="soft"))
    assert (extra["image_bytes"], extra["label_bytes"], extra["labels_exceed_images"]) == (32, 80, True)
    hard = set_budget(torch.zeros(2, 1, 2, 2), torch.full((2, 10), 0.1), Protocol(name="hard", labels="hard"))
    assert (hard["label_bytes"], hard["labels_exceed_images"]) == (2 * 8, False)  # trains on the argmax: 2 int64 ids
    assert hard["label_source"].startswith("class ids")
    row = EvalResult("x", "mlp", "digits", [0.5], Protocol(epochs=1).to_dict(), ipc=1, extra=extra)
    md = Report([row]).to_markdown()
    assert "| 32 | 80 (> images) | — |" in md and "exceeds its image budget" in md


# ---- the command line: coreset baselines, --protocols ---------------------------------------------------------

@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory, digits):
    torch.manual_seed(0)
    net = build_model("mlp", 1, 10, (8, 8))
    path = tmp_path_factory.mktemp("teacher") / "mlp.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path),
              metadata={"model": "mlp", "dataset": "digits"})
    return path


def test_protocols_hard_and_teacher_in_one_report(tmp_path, teacher_file):
    out = tmp_path / "rep"
    code = main(["eval", "--dataset", "digits", "--baseline", "random", "--baseline", "herding", "--ipc", "2",
                 "--models", "mlp", "--runs", "1", "--epochs", "1", "--protocols", "hard,teacher",
                 "--teacher", str(teacher_file), "--device", "cpu", "--out", str(out)])
    assert code == 0
    rep = json.loads((out / "eval.json").read_text())
    got = [(r["name"], r["protocol"]["name"]) for r in rep["rows"]]
    assert got == [("random-real", "hard"), ("herding", "hard"), ("random-real", "teacher"), ("herding", "teacher")]
    assert all(r["extra"]["image_bytes"] == 2 * 10 * 64 * 4 and r["extra"]["label_bytes"] == 2 * 10 * 8
               for r in rep["rows"])
    # herding read the teacher's features (named relative to the report, like every path a report holds)
    assert rep["meta"]["coreset_network"] == os.path.relpath(teacher_file, out)
    md = (out / "eval.md").read_text()
    assert "| herding | mlp | digits | 2 | hard |" in md and "| herding | mlp | digits | 2 | teacher |" in md
    assert "labels from teacher on every view (not stored): random-real (teacher), herding (teacher)" in md


def test_distill_scores_coreset_baselines_beside_its_set_with_its_budget(tmp_path, small_buffer):
    out = tmp_path / "run"
    assert main(["distill", "--method", "dm", "--dataset", "digits", "--ipc", "2", "--model", "convnet-d1",
                 "--iterations", "2", "--eval-every", "0", "--eval-runs", "1", "--eval-epochs", "1",
                 "--eval-models", "mlp", "--baseline", "random", "--baseline", "forgetting",
                 "--coreset-net", str(small_buffer), "--device", "cpu", "--out", str(out)]) == 0
    rep = json.loads((out / "eval.json").read_text())
    assert [r["name"] for r in rep["rows"]] == ["dm", "random-real", "forgetting"]
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    made = rep["rows"][0]["extra"]["made_seconds"]
    assert made == pytest.approx(sum(r["sec"] for r in logged if "sec" in r)) and made > 0
    assert "made_seconds" not in SyntheticSet.load(out / "synset.safetensors").meta  # the file stays reproducible
    assert "wall_seconds" not in SyntheticSet.load(out / "synset.safetensors").meta
    with pytest.raises(SystemExit):  # argparse's choices: exit 2 naming the option
        main(["distill", "--baseline", "herd"])


def test_lr_search_of_a_coreset_row_selects_outside_the_validation_split(digits):
    from dd.eval.baselines import coreset_row

    torch.manual_seed(0)
    sel = C.Selector(digits, build_model("mlp", 1, 10, (8, 8)))
    row = coreset_row(sel, "kcenter", 2, "mlp", Protocol(epochs=1), 1, lr_search=[0.01, 0.1])
    images, labels, val = row.search.data()
    held_out = val.test_images.flatten(1)
    assert len(images) == 20 and not any(bool((held_out == x.flatten()).all(1).any()) for x in images)
    assert row.search.candidates == [0.01, 0.1]
