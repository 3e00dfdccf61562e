"""RDED: crop scores, selection and stitching by hand on a linear teacher; the method against a brute-force
re-selection on digits; resume; refusals; `ddtk distill` end to end with the teacher recorded and labels stored."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dd.eval import get_protocol
from dd.eval.labels import StoredLabels
from dd.eval.views import draw_crops
from dd.methods import build_method
from dd.methods.rded import pad_center, realism_scores, select_crops, square_crops, stitch
from dd.synset import SyntheticSet
from dd.utils import relative_paths
from dd.teachers import open_teacher
from helpers import digits_buffer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A small BatchNorm ConvNet trained on digits (`ddtk buffer --experts 1`)."""
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("teacher") / "bn"
    return digits_buffer(path, model="convnet-bn", width=16, experts=1, epochs=6)


class CenterSum(nn.Module):
    """Linear teacher on 1x4x4 images: logit 0 = sum of the central 2x2 pixels, logit 1 = 0."""

    def forward(self, x):
        s = x[:, 0, 1:3, 1:3].sum((1, 2))
        return torch.stack([s, torch.zeros_like(s)], 1)


def const(v, side=2):
    return torch.full((1, side, side), float(v))


# ---- by hand ------------------------------------------------------------------------------------------------

def test_scores_keep_and_order_crops_as_computed_by_hand():
    # 3 images x 2 crops; crop sums (pixel value x 4): image 0: 1, 3; image 1: 2, 0; image 2: 5, 4
    sums = [[1, 3], [2, 0], [5, 4]]
    crops = torch.stack([torch.stack([const(s / 4) for s in row]) for row in sums])  # (3, 2, 1, 2, 2)
    scores = realism_scores(CenterSum(), crops.flatten(0, 1), 0, (4, 4)).view(3, 2)
    # CE of class 0 with logits (s, 0) is log(1 + e^-s); the crop sits on the teacher's central 2x2 only if centered
    expect = torch.tensor([[math.log1p(math.exp(-s)) for s in row] for row in sums])
    assert torch.allclose(scores, expect, atol=1e-6)
    kept, kept_scores = select_crops(scores, crops, keep=2)
    # per image the higher sum wins (3, 2, 5); across images ascending CE = descending sum: image 2, then image 0
    assert torch.equal(kept, torch.stack([const(5 / 4), const(3 / 4)]))
    assert torch.allclose(kept_scores, torch.tensor([math.log1p(math.exp(-5)), math.log1p(math.exp(-3))]))
    # a tie inside an image keeps its first crop
    k, _ = select_crops(torch.tensor([[0.3, 0.3]]), torch.stack([const(1), const(2)])[None], keep=1)
    assert torch.equal(k, const(1)[None])


def test_padding_is_centered_with_the_odd_pixel_bottom_right():
    x = torch.ones(1, 1, 2, 3)
    p = pad_center(x, (5, 6))
    assert p.shape == (1, 1, 5, 6)
    assert torch.equal(p[0, 0].nonzero()[:, 0].unique(), torch.tensor([1, 2]))  # 3 rows of margin: 1 above, 2 below
    assert torch.equal(p[0, 0].nonzero()[:, 1].unique(), torch.tensor([1, 2, 3]))


def test_stitch_puts_sorted_crop_k_times_ipc_plus_i_in_slot_k_row_major():
    crops = torch.stack([const(v) for v in range(8)])  # 2 images x 4 slots
    out = stitch(crops, 2, 2, (4, 4))
    img0 = torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2], [4, 4, 6, 6], [4, 4, 6, 6]], dtype=torch.float)
    assert torch.equal(out[0, 0], img0) and torch.equal(out[1, 0], img0 + 1)
    # 5 px: the first row and column of slots are one pixel larger (the crop resized, nearest)
    odd = stitch(crops, 2, 2, (5, 5))
    img0 = torch.tensor([[0, 0, 0, 2, 2]] * 3 + [[4, 4, 4, 6, 6]] * 2, dtype=torch.float)
    assert torch.equal(odd[0, 0], img0) and torch.equal(odd[1, 0], img0 + 1)
    assert torch.equal(stitch(crops[:2], 1, 2, (2, 2)), crops[:2])  # factor 1: the crops themselves


def test_square_crops_match_torchvision_resized_crop():
    from torchvision.transforms.functional import resized_crop

    g = torch.Generator().manual_seed(3)
    x = torch.rand(6, 3, 16, 16, generator=g)
    boxes = draw_crops(6, (16, 16), (0.08, 1.0), g, ratio=(1.0, 1.0))
    assert torch.equal(boxes[:, 2], boxes[:, 3])  # square
    got = square_crops(x, boxes, 8)
    for i, (t, l, h, w) in enumerate(boxes.tolist()):
        assert torch.allclose(got[i], resized_crop(x[i], t, l, h, w, [8, 8], antialias=True), atol=1e-5)


# ---- the method -------------------------------------------------------------------------------------------

def brute_force_class(m, k):
    """Class k's images recomputed crop by crop from the class's draws: explicit padding, Python sorting."""
    c, side, hw = m.config, m.side, tuple(m.dataset.image_size)
    g = m.class_generator(k)
    n = min(c.mipc, m.real.count(k))
    images = m.real.sample(k, n, g)
    boxes = draw_crops(n * c.num_crop, hw, c.crop_scale, g, ratio=(1.0, 1.0)).tolist()
    best = []
    for i in range(n):
        cands = []
        for j in range(c.num_crop):
            t, l, h, w = boxes[i * c.num_crop + j]
            crop = F.interpolate(images[i:i + 1, :, t:t + h, l:l + w], size=(side, side), mode="bilinear",
                                 align_corners=False, antialias=True)[0]
            canvas = torch.zeros(m.dataset.channels, *hw)
            top, left = (hw[0] - side) // 2, (hw[1] - side) // 2
            canvas[:, top:top + side, left:left + side] = crop
            with torch.no_grad():
                ce = -torch.log_softmax(m.teacher(canvas[None]), 1)[0, k]
            cands.append((float(ce), j, crop))
        best.append(min(cands, key=lambda e: (e[0], e[1])))
    chosen = [e[2] for e in sorted(best, key=lambda e: e[0])[:m.keep]]
    f = c.factor
    out = torch.zeros(m.ipc, m.dataset.channels, *hw)
    for i in range(m.ipc):
        for slot in range(f * f):
            r, col = divmod(slot, f)
            out[i, :, r * side:(r + 1) * side, col * side:(col + 1) * side] = chosen[slot * m.ipc + i]
    return out


def test_selection_matches_a_brute_force_reselection(digits, teacher_dir):
    m = build_method("rded", digits, 2, {"factor": 2, "mipc": 12, "num_crop": 3}, teachers=[str(teacher_dir)], seed=4)
    assert m.num_steps(1000) == digits.num_classes  # one step per class, whatever --iterations says
    for k in (0, 7):
        metrics = m.step(k)
        assert torch.allclose(m.images[k * 2:(k + 1) * 2], brute_force_class(m, k), atol=1e-5)
        assert metrics["candidates"] == 12 and metrics["loss"] <= metrics["ce_max"]
    s = m.current_set()
    assert torch.equal(s.labels, torch.arange(10).repeat_interleave(2))


def test_resumed_selection_continues_exactly(digits, teacher_dir):
    opts = {"mipc": 20, "num_crop": 2}
    a = build_method("rded", digits, 3, opts, teachers=[str(teacher_dir)], seed=1)
    for k in range(10):
        a.step(k)
    b = build_method("rded", digits, 3, opts, teachers=[str(teacher_dir)], seed=1)
    for k in range(4):
        b.step(k)
    tensors, info = b.state()
    c = build_method("rded", digits, 3, opts, teachers=[str(teacher_dir)], seed=1)
    c.load_state(tensors, info)
    for k in range(4, 10):
        c.step(k)
    assert torch.equal(c.current_set().images, a.current_set().images)


def test_refusals_name_the_option(digits, teacher_dir):
    with pytest.raises(ValueError, match="ipc x factor\\^2 = 400 crops per class.*raise mipc"):
        build_method("rded", digits, 100, {"factor": 2}, teachers=[str(teacher_dir)])
    with pytest.raises(ValueError, match="factor must be in 1..8"):
        build_method("rded", digits, 1, {"factor": 9}, teachers=[str(teacher_dir)])
    with pytest.raises(ValueError, match="init must be 'real'"):
        build_method("rded", digits, 1, {"init": "noise"}, teachers=[str(teacher_dir)])
    with pytest.raises(ValueError, match="needs 1 teacher"):
        build_method("rded", digits, 1)


def test_command_line_distill_records_the_teacher_and_stores_region_labels(teacher_dir, tmp_path, capsys):
    from dd.cli import main

    out = tmp_path / "run"
    assert main(["distill", "--method", "rded", "--dataset", "digits", "--ipc", "2", "--teacher", str(teacher_dir),
                 "--set", "mipc=30", "--eval-runs", "1", "--eval-epochs", "2", "--eval-models", "convnet-d2",
                 "--no-full-baseline", "--device", "cpu", "--out", str(out)]) == 0
    s = SyntheticSet.load(out / "synset.safetensors")
    record = open_teacher(str(teacher_dir)).describe()
    assert s.meta["inputs"]["teachers"] == [record] and len(record["sha256"]) == 64
    assert s.meta["evaluation"]["teachers"] == [record] and s.meta["evaluation"]["protocol"]["name"] == "teacher"
    assert s.meta["factor"] == 1 and s.images.shape == (20, 1, 8, 8)  # digits preset: factor 1
    labels = StoredLabels(s.meta["evaluation"]["labels"])  # stored like `ddtk relabel`: one epoch per training epoch
    # the manifest names the teacher relative to the label directory
    assert labels.manifest["teachers"] == [relative_paths(record, labels.path)] and labels.epochs == 2
    labels.check(s.images, get_protocol("teacher"))
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["class"] for x in lines if "class" in x] == list(range(10))
    assert "| rded | convnet-d2 | digits | 2 | teacher | 2 | 1 |" in (out / "eval.md").read_text()
