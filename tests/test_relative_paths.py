"""Generated files name the paths of their inputs relative to themselves, never the machine's directories; a run is
its inputs' content, so a run directory recorded with absolute paths (before) or moved elsewhere is the same run."""
import json
import os
import shutil

import pytest
import torch

from dd.cli import main
from dd.methods import make_plan, run_plan
from dd.methods.driver import CHECKPOINT, _checkpoint_digest, run_finished
from dd.synset import SyntheticSet
from dd.utils import read_safetensors, safetensors_bytes
from helpers import digits_buffer

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = {"iterations": 2, "eval_every": 0, "eval_runs": 0, "checkpoint_every": 1, "progress": False}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A one-expert convnet-bn buffer on digits: SRe2L's teacher (recorded once for the module)."""
    return digits_buffer(tmp_path_factory.mktemp("inputs") / "teacher", model="convnet-bn", width=8, experts=1,
                         epochs=1)


def _texts(root):
    """Every text file under root, and the JSON headers of its safetensors files (sets, checkpoints, shards)."""
    for p in sorted(root.rglob("*")):
        if p.suffix in (".json", ".md", ".jsonl", ".txt", ".csv"):
            yield p, p.read_text()
        elif p.suffix == ".safetensors":
            yield p, json.dumps(read_safetensors(p)[0])


def test_distill_eval_relabel_export_name_no_absolute_directory(teacher, tmp_path):
    """Every file a distill -> relabel -> eval -> export chain writes (set headers and checkpoints included) names its
    inputs relative to itself; the relative names lead back to the files, and the set reopens its teacher."""
    root = tmp_path / "work"
    shutil.copytree(teacher, root / "teacher")
    run, labels, ev, exp = root / "run", root / "labels", root / "ev", root / "export"
    assert main(["distill", "--method", "sre2l", "--dataset", "digits", "--ipc", "1",
                 "--teacher", str(root / "teacher"), "--iterations", "2", "--set", "batch_classes=10",
                 "--eval-runs", "1", "--eval-epochs", "1",
                 "--eval-models", "convnet-d1", "--no-full-baseline", "--baseline", "kcenter", "--coreset-net",
                 str(root / "teacher@0"), "--device", "cpu", "--out", str(run)]) == 0
    synset = run / "synset.safetensors"
    assert main(["relabel", str(synset), "--epochs", "1", "--batch-size", "4", "--topk", "3", "--out", str(labels),
                 "--device", "cpu"]) == 0
    assert main(["eval", str(synset), "--labels", str(labels), "--batch-size", "4", "--epochs", "1", "--models",
                 "convnet-d1", "--runs", "1", "--baseline", "herding", "--device", "cpu", "--out", str(ev)]) == 0
    assert main(["export", str(synset), "--format", "ddranking", "--out", str(exp)]) == 0
    written = dict(_texts(root / "run")) | dict(_texts(labels)) | dict(_texts(ev)) | dict(_texts(exp))
    assert {p.name for p in written} >= {"config.json", "synset.safetensors", CHECKPOINT, "eval.json", "eval.md",
                                         "manifest.json", "export.json", "metrics.jsonl"}
    for where in (str(root), os.path.realpath(root)):
        named = sorted(str(p.relative_to(root)) for p, text in written.items() if where in text)
        assert not named, f"absolute paths of this machine in {named}"
    config = json.loads((run / "config.json").read_text())
    assert (run / config["inputs"]["teachers"][0]["spec"]).resolve() == (root / "teacher").resolve()
    # the set writes its teacher relative to itself and reads it back as a path that exists: eval reopens it
    s = SyntheticSet.load(synset)
    assert s.meta["evaluation"]["teachers"][0]["spec"] == str(root / "teacher")
    assert s.meta["run"]["coreset_net"] == str(root / "teacher@0")
    assert run_finished(run, json.loads((run / "config.json").read_text()), s.meta["run"])  # read back, it matches
    moved = tmp_path / "moved"
    shutil.move(root, moved)
    assert SyntheticSet.load(moved / "run" / "synset.safetensors").meta["evaluation"]["teachers"][0]["spec"] == \
        str(moved / "teacher")
    assert main(["eval", str(moved / "run" / "synset.safetensors"), "--epochs", "1", "--models", "convnet-d1",
                 "--runs", "1", "--no-baselines", "--device", "cpu", "--out", str(moved / "ev2")]) == 0


def _old_form(identity: dict, where: str) -> dict:
    """An identity as written before paths were relative: the inputs' paths absolute (here: another machine's)."""
    inputs = identity["inputs"]
    return {**identity, "inputs": {"buffers": [{**b, "path": f"{where}/{os.path.basename(b['path'])}"}
                                               for b in inputs["buffers"]],
                                   "teachers": [{**t, "spec": f"{where}/{os.path.basename(t['spec'])}"}
                                                for t in inputs["teachers"]]}}


def _rewrite_checkpoint(path, identity: dict) -> None:
    header, tensors = read_safetensors(path)
    header = {**header, "identity": json.dumps(identity, sort_keys=True)}
    header["integrity"] = _checkpoint_digest(header, tensors)
    path.write_bytes(safetensors_bytes(tensors, metadata=header))


def test_a_run_recorded_with_absolute_input_paths_is_still_the_same_run(teacher, tmp_path, capsys):
    """Migration: config.json, the set's header and the checkpoint of a run made before (absolute input paths, here
    of a directory that no longer exists) still name the same run: it is reused, and its checkpoint resumed; an
    input with other content is another run."""
    out = tmp_path / "run"
    plan = make_plan("sre2l", "digits", 1, teachers=[str(teacher)], config={"batch_classes": 10}, run=RUN,
                     device="cpu", out=out)
    assert plan.identity["inputs"]["teachers"][0]["spec"] == os.path.relpath(teacher, out)
    run_plan(plan)
    assert run_finished(out, plan.identity, plan.run)
    old = _old_form(plan.identity, "/old/machine/buffers")
    assert old != plan.identity
    (out / "config.json").write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")
    images = SyntheticSet.load(out / "synset.safetensors").images.clone()  # clone: the file is rewritten below
    header, tensors = read_safetensors(out / "synset.safetensors")  # the set's header as the old code wrote it
    header["meta"] = json.dumps({**json.loads(header["meta"]), "inputs": old["inputs"]}, sort_keys=True)
    (out / "synset.safetensors").write_bytes(safetensors_bytes(tensors, metadata=header))
    assert run_finished(out, plan.identity, plan.run)
    other = {**old, "inputs": {**old["inputs"], "teachers": [{**old["inputs"]["teachers"][0], "sha256": "0" * 64}]}}
    (out / "config.json").write_text(json.dumps(other))
    assert not run_finished(out, plan.identity, plan.run)  # the content is what is compared

    # the checkpoint of such a run resumes (the set gone, as if the run had been killed before writing it)
    (out / "synset.safetensors").unlink()
    _rewrite_checkpoint(out / CHECKPOINT, old)
    capsys.readouterr()
    again = run_plan(plan)
    assert "resuming sre2l from iteration 2" in capsys.readouterr().out
    assert torch.equal(again.synset.images, images)
    assert json.loads((out / "config.json").read_text()) == plan.identity  # rewritten in the new form
    _rewrite_checkpoint(out / CHECKPOINT, other)
    with pytest.raises(ValueError, match="checkpoint of a different run.*sha256"):
        run_plan(plan)


def test_an_output_directory_moved_with_its_inputs_is_reused(teacher, tmp_path):
    """The identity names the inputs relative to OUT: a tree moved elsewhere (OUT and its buffer) plans the very
    identity it recorded, so nothing is recomputed."""
    root = tmp_path / "a"
    shutil.copytree(teacher, root / "buffers" / "teacher")
    plan = make_plan("sre2l", "digits", 1, teachers=[str(root / "buffers" / "teacher")], config={"batch_classes": 10},
                     run=RUN, device="cpu", out=root / "rows" / "r")
    run_plan(plan)
    shutil.move(root, tmp_path / "b")
    moved = make_plan("sre2l", "digits", 1, teachers=[str(tmp_path / "b" / "buffers" / "teacher")],
                      config={"batch_classes": 10}, run=RUN, device="cpu", out=tmp_path / "b" / "rows" / "r")
    assert moved.identity == plan.identity
    assert json.loads((tmp_path / "b" / "rows" / "r" / "config.json").read_text()) == moved.identity
    assert run_finished(moved.out, moved.identity, moved.run)
