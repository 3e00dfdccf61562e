"""The RunPlan: a distill run resolved and checked before any data is read, its identity the one the run records,
frozen once made; `ddtk distill` hands one to the library; a set made before a run option existed is still reused."""
import dataclasses
import json

import pytest

from dd.methods import make_plan, run_plan
from dd.methods.driver import run_finished
from dd.synset import SyntheticSet

RUN = {"iterations": 2, "eval_every": 0, "eval_runs": 0, "progress": False}
CFG = {"model": "convnet-w32", "batch_real": 4}


def test_the_plan_is_made_without_data_and_its_identity_is_what_the_run_records(tmp_path):
    # the data root is empty: making the plan reads no data, running it does
    plan = make_plan("dm", "digits", 1, config=CFG, run=RUN, seed=3, device="cpu", out=tmp_path / "run",
                     data_root=str(tmp_path / "absent"))
    assert plan.config.model == "convnet-w32" and plan.config.batch_real == 4 and plan.run.iterations == 2
    assert plan.identity["seed"] == 3 and plan.identity["config"]["batch_real"] == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.seed = 4
    res = run_plan(dataclasses.replace(plan, data_root=None))  # digits ships with scikit-learn
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == plan.identity
    assert res.synset.meta["config"] == plan.identity["config"]


def test_a_bad_option_is_refused_when_the_plan_is_made(tmp_path):
    with pytest.raises((ValueError, TypeError), match="batch_real"):
        make_plan("dm", "digits", 1, config={"batch_real": "many"}, data_root=str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="iterations"):
        make_plan("dm", "digits", 1, run={"iterations": 0})


def test_ddtk_distill_hands_its_plan_to_the_library(tmp_path, monkeypatch):
    import dd.methods
    from dd.cli import main

    seen = []
    monkeypatch.setattr(dd.methods, "run_plan", lambda plan: seen.append(plan) or run_plan(plan))
    assert main(["distill", "--method", "dm", "--dataset", "digits", "--ipc", "1", "--iterations", "2",
                 "--eval-every", "0", "--eval-runs", "0", "--set", "batch_real=4", "--model", "convnet-w32",
                 "--seed", "2", "--device", "cpu", "--out", str(tmp_path / "run")]) == 0
    (plan,) = seen
    assert plan.seed == 2 and plan.config.batch_real == 4 and plan.out == tmp_path / "run"
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == plan.identity


def test_a_set_made_before_a_run_option_existed_counts_it_as_its_default(tmp_path):
    plan = make_plan("dm", "digits", 1, config=CFG, run=RUN, device="cpu", out=tmp_path / "run")
    run_plan(plan)
    path = tmp_path / "run" / "synset.safetensors"
    assert run_finished(plan.out, plan.identity, plan.run)
    old = SyntheticSet.load(path)
    del old.meta["run"]["coreset_net"]  # as a set made before RunConfig had coreset_net records its run
    old.save(path)
    assert run_finished(plan.out, plan.identity, plan.run)
    del old.meta["run"]["full_epochs"]  # an unrecorded option is its default: a run wanting another value differs
    old.save(path)
    assert run_finished(plan.out, plan.identity, plan.run)
    assert not run_finished(plan.out, plan.identity, dataclasses.replace(plan.run, full_epochs=7))
    old.meta["run"]["full_epochs"] = 7  # a recorded option that differs still differs
    old.save(path)
    assert not run_finished(plan.out, plan.identity, plan.run)


def test_a_reproduce_row_resolves_its_model_with_its_real_teacher(tmp_path):
    """SRe2L's model is its teacher's architecture: a row with no eval architectures is scored on it and its plan
    distils with it (before, the row was resolved a second time without its inputs and got the preset's model)."""
    from dd.buffers import record_buffer
    from dd.buffers.config import BufferConfig
    from dd.reproduce import Context, load_spec
    from dd.reproduce.plan import distill_plan, row_eval

    teacher = tmp_path / "teacher"
    record_buffer(BufferConfig(dataset="digits", model="mlp-bn", experts=1, epochs=1, batch_size=256), teacher,
                  device="cpu", progress=False, log=lambda s: None)
    row = {"id": "s", "method": "sre2l", "dataset": "digits", "ipc": 1, "teachers": [str(teacher)],
           "paper": {"value": 1.0, "source": "somewhere"}}
    (tmp_path / "spec.json").write_text(json.dumps({"kind": "paper", "rows": [row]}))
    spec = load_spec(tmp_path / "spec.json")
    ctx = Context(spec, tmp_path / "out")
    assert row_eval(spec.rows[0], False).archs != ("mlp-bn",)  # the preset's model: no inputs to read
    assert row_eval(spec.rows[0], False, ctx).archs == ("mlp-bn",)
    plan = distill_plan(spec.rows[0], ctx, verify="lazy")
    assert plan.config.model == "mlp-bn" and plan.run.eval_models == ("mlp-bn",)
