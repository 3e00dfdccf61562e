"""`ddtk reproduce`: every spec parses and names its sources, the dry run names what is missing and prints the commands,
the bench spec runs end to end in smoke size, a rerun reuses every artifact without training, a changed row is rerun and
an interrupted one resumed."""
import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from dd.buffers.config import BufferConfig
from dd.buffers.recorder import config_sha256
from dd.buffers.store import FORMAT as BUFFER_FORMAT
from dd.cli import main
from dd.eval.baselines import BASELINES
from dd.lock import LOCK_NAME
from dd.methods import METHODS
from dd.reproduce import SpecError, load_spec, reproduce
from dd.synset import SyntheticSet

ROOT = Path(__file__).resolve().parents[1]
TABLES = ROOT / "experiments" / "tables"
SPECS = sorted(TABLES.glob("*.json"))
BENCH = TABLES / "bench_mnist10k.json"
PAPER_TABLES = {"mtt_table1", "ftd", "datm", "datadam", "sre2l_cda", "cvdd"}


def _raw(path: Path) -> dict:
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------------------------- specs

def test_the_bench_and_every_paper_table_have_a_spec():
    assert {p.stem for p in SPECS} >= PAPER_TABLES | {"bench_mnist10k"}


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_spec_parses_and_every_row_is_known_and_sourced(path, tmp_path):
    raw = _raw(path)
    spec = load_spec(path)
    assert [r.id for r in spec.rows] == [r["id"] for r in raw["rows"]]
    for row in raw["rows"]:
        assert row["method"] in METHODS.names() or row["method"] in BASELINES, row["id"]
        if raw["kind"] == "paper":
            assert isinstance(row["paper"]["value"], (int, float)) and row["paper"]["source"].strip(), row["id"]
        if "config" in row:
            config = _raw(path.parent / row["config"])
            assert config["method"] == row["method"] and config["dataset"] == row["dataset"], row["id"]
        evaluated = (row.get("eval") or {}).get("teachers", (raw.get("eval") or {}).get("teachers", []))
        for name in [row.get("buffer")] + row.get("teachers", []) + evaluated:
            if name and "/" not in name:
                assert name in raw["buffers"], f"{row['id']}: unknown recipe {name}"
    # every row's config, options and commands check out: the dry run builds them all, and writes nothing
    lines: list[str] = []
    reproduce(path, out=tmp_path / "out", dry_run=True, data_root=str(tmp_path / "data"), log=lines.append)
    assert not (tmp_path / "out").exists()
    text = "\n".join(lines)
    for row in raw["rows"]:
        assert f"row {row['id']}:" in text


def test_paper_trajectory_rows_name_only_method_dataset_and_ipc():
    for stem in ("mtt_table1", "ftd", "datm"):
        for row in _raw(TABLES / f"{stem}.json")["rows"]:
            assert "config" not in row and "options" not in row, f"{stem}/{row['id']}: the preset fills the options"


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_every_recipe_fits_the_rows_that_use_it(path):
    """A row's buffer must be recorded on its dataset, with the model and ZCA setting its resolved config uses (the
    driver refuses anything else hours later); a teacher recipe must be trained on the row's dataset."""
    from dd.methods.base import Inputs
    from dd.methods.driver import method_class

    raw = _raw(path)
    for row in raw["rows"]:
        base = _raw(path.parent / row["config"]) if "config" in row else {}
        values = {k: v for k, v in {**base, **row.get("options", {})}.items()
                  if k not in ("method", "dataset", "ipc", "run", "notes", "teachers", "buffer", "teacher_model")}
        if row.get("buffer"):
            recipe = raw["buffers"][row["buffer"]]
            cfg = method_class(row["method"]).resolve_config(values, row["dataset"], row["ipc"], Inputs())
            assert (recipe["dataset"], recipe["model"], bool(recipe.get("zca"))) == (row["dataset"], cfg.model, cfg.zca), \
                row["id"]
        for name in row.get("teachers", []):
            if name in raw["buffers"]:
                assert raw["buffers"][name]["dataset"] == row["dataset"], row["id"]


def test_dry_run_names_missing_dataset_directories_and_prints_the_commands(tmp_path, capsys):
    root = tmp_path / "data"
    code = main(["reproduce", str(TABLES / "mtt_table1.json"), "--dry-run", "--data-root", str(root),
                 "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 1, "missing data is a failed check"
    for folder in ("cifar-10-batches-py", "cifar-100-python", "tiny-imagenet-200"):
        assert str(root / folder) in out
    assert (f"ddtk buffer --dataset cifar10 --model convnet --experts 100 --epochs 50 --zca --data-root {root} "
            f"--out {tmp_path / 'out'}") in out  # buffers read the same --data-root as the rows
    assert "ddtk buffer --dataset tinyimagenet --model convnet-d4 --experts 100 --epochs 50 --data-root" in out
    assert out.count("ddtk distill --config") == 9 and out.count("ddtk eval ") == 9
    assert not (tmp_path / "out").exists()


def test_dry_run_names_missing_imagenet_and_teacher_weights(tmp_path, capsys):
    root = tmp_path / "data"
    assert main(["reproduce", str(TABLES / "sre2l_cda.json"), "--dry-run", "--data-root", str(root),
                 "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert f"missing {root / 'train'}, {root / 'val'}" in out
    assert "input weights/resnet18-f37072fd.pth does not exist; needed by sre2l-imagenet-ipc50, cda-imagenet-ipc50" in out


def test_dry_run_of_the_bench_finds_its_data(tmp_path):
    lines: list[str] = []
    assert reproduce(BENCH, out=tmp_path / "out", dry_run=True, log=lines.append) == 0
    assert "data: everything the rows read is present" in lines


def _write(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def _one_row(**row) -> dict:
    base = {"id": "a", "method": "dm", "dataset": "mnist10k", "ipc": 1, "paper": {"value": 1.0, "source": "somewhere"}}
    return {"kind": "paper", "rows": [{**base, **row}]}


@pytest.mark.parametrize("row, message", [
    ({"iterations": 5}, "unknown key(s) ['iterations']"),
    ({"paper": None}, "needs the paper's number and its source"),
    ({"paper": {"value": 1.0}}, "'paper' must be null or"),
    ({"method": "nope"}, "unknown method 'nope'"),
    ({"buffer": "no_recipe"}, "'no_recipe' is neither a buffer recipe"),
    ({"ipc": 0}, "'ipc' must be a positive integer"),
    ({"config": "missing.json"}, "config 'missing.json' not found"),
    ({"eval": {"baselines": ["best"]}}, "eval baselines must be among"),
    ({"method": "random"}, "give eval.archs"),
    ({"eval": {"protocol": "hard", "protocols": ["hard", "teacher"]}}, "give one (a list for several regimes)"),
    ({"eval": {"protocols": ["hard", "hard"]}}, "a list of distinct protocol names"),
    ({"eval": {"teachers": "t"}}, "eval 'teachers' must be a list"),
    ({"eval": {"teachers": ["no_recipe"]}}, "'no_recipe' is neither a buffer recipe"),
])
def test_spec_errors_name_the_row_and_the_fix(tmp_path, row, message):
    with pytest.raises(SpecError) as e:
        load_spec(_write(tmp_path, _one_row(**row)))
    assert message in str(e.value) and "row 1 (a)" in str(e.value)


def test_an_unknown_option_is_refused_before_anything_runs(tmp_path):
    path = _write(tmp_path, _one_row(options={"lr_imgg": 1.0}))
    with pytest.raises(SpecError, match="lr_imgg"):
        reproduce(path, out=tmp_path / "out", dry_run=True, log=lambda _: None)
    path = _write(tmp_path, {**_one_row(), "buffers": {"b": {"dataset": "mnist10k", "epoch": 3}}})
    with pytest.raises(SpecError, match=r"buffer recipe 'b': unknown key\(s\) \['epoch'\]"):
        load_spec(path)


def test_rows_selects_by_id_and_refuses_unknown_ids(tmp_path):
    with pytest.raises(SpecError, match="no row 'dm-ipc3'.*its rows: random-ipc1"):
        reproduce(BENCH, rows=["dm-ipc3"], out=tmp_path / "out", dry_run=True, log=lambda _: None)
    lines: list[str] = []
    reproduce(BENCH, rows=["dm-ipc1"], out=tmp_path / "out", dry_run=True, log=lines.append)
    assert [ln for ln in lines if ln.startswith("row ")] == [ln for ln in lines if ln.startswith("row dm-ipc1:")]


def test_a_buffer_recorded_with_other_settings_is_named_not_overwritten(tmp_path):
    out = tmp_path / "out"
    other = BufferConfig(dataset="mnist10k", model="convnet-w32", experts=5, epochs=7)  # the recipe says 20 epochs
    (out / "buffers" / "w32_lr001").mkdir(parents=True)
    manifest = {"format": BUFFER_FORMAT, "complete": True, "config": other.to_dict(), "config_sha256": config_sha256(other)}
    (out / "buffers" / "w32_lr001" / "manifest.json").write_text(json.dumps(manifest))
    lines: list[str] = []
    reproduce(BENCH, rows=["mtt-ipc1"], out=out, dry_run=True, log=lines.append)
    conflict = next(ln for ln in lines if "w32_lr001" in ln and "ddtk buffer" in ln)
    assert "conflict" in conflict and "epochs: recorded 7, now 20" in conflict and "delete that directory" in conflict


# ----------------------------------------------------------------------------------------------- the driver's identity

def test_run_identity_predicts_the_config_json_a_run_writes(tmp_path):
    from dd.methods import distill
    from dd.methods.driver import run_identity

    kwargs = dict(config={"model": "convnet-w32", "batch_real": 4}, run={"iterations": 2, "eval_every": 0, "eval_runs": 0,
                                                                         "progress": False}, seed=3)
    distill("dm", "digits", 1, out=tmp_path / "run", device="cpu", **kwargs)
    written = json.loads((tmp_path / "run" / "config.json").read_text())
    assert run_identity("dm", "digits", 1, **kwargs) == written
    assert run_identity("dm", "digits", 1, **{**kwargs, "seed": 4}) != written


def test_a_run_that_starts_over_logs_afresh(tmp_path):
    from dd.methods import distill

    run = {"iterations": 3, "eval_every": 0, "eval_runs": 0, "progress": False}
    for _ in range(2):
        distill("dm", "digits", 1, out=tmp_path / "run", device="cpu", config={"model": "convnet-w32", "batch_real": 4},
                run=run, resume=False)
    its = [json.loads(ln)["it"] for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert its == [0, 1, 2]


# ----------------------------------------------------------------------------------------------- the smoke bench

@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The bench spec in smoke size, run once for the tests below: (out dir, exit code, seconds, log lines)."""
    out = tmp_path_factory.mktemp("reproduce") / "bench"
    lines: list[str] = []
    t0 = time.perf_counter()
    code = reproduce(BENCH, out=out, smoke=True, device="cpu", log=lines.append)
    return out, code, time.perf_counter() - t0, lines


def _table(out: Path) -> dict:
    return {e["id"]: e for e in json.loads((out / "table.json").read_text())["rows"]}


@pytest.mark.slow
def test_smoke_bench_runs_end_to_end_and_tables_every_row(smoke):
    out, code, seconds, lines = smoke
    assert code == 0, "\n".join(lines[-30:])
    raw = _raw(BENCH)
    table = _table(out)
    assert list(table) == [r["id"] for r in raw["rows"]]
    markdown = (out / "table.md").read_text()
    for rid, e in table.items():
        assert e["error"] is None, f"{rid}: {e['error']}"
        assert set(e["ours"]) == set(e["archs"]) and e["runs"] == 1 and e["epochs"] == 1, rid
        assert all(0 <= v["mean"] <= 100 and len(v["accs"]) == 1 for v in e["ours"].values()), rid
        assert f"| {rid} |" in markdown
    # what the configs and methods say, checked independently of the code under test
    assert table["sre2l-ipc10"]["archs"] == _raw(ROOT / "experiments" / "sre2l_mnist10k_ipc10.json")["run"]["eval_models"]
    assert table["datm-ipc10"]["protocol"] == "soft" and table["mtt-ipc1"]["protocol"] == "hard"
    assert {table[r]["protocol"] for r in ("sre2l-ipc10", "cda-ipc50", "cvdd-ipc10")} == {"teacher"}
    assert table["cvdd-ipc10"]["random_real"] and table["dm-ipc1"]["random_real"] is None
    assert table["mtt-ipc10"]["recorded"]["value"] == 96.62 and table["mtt-ipc10"]["diff_recorded"] == pytest.approx(
        table["mtt-ipc10"]["ours"]["convnet-w32"]["mean"] - 96.62)
    for name in raw["buffers"]:
        manifest = json.loads((out / "buffers" / name / "manifest.json").read_text())
        assert manifest["complete"] and manifest["config"]["experts"] == 1 and manifest["config"]["epochs"] == 1
    synset = SyntheticSet.load(out / "rows" / "mtt-ipc10" / "distill" / "synset.safetensors")
    assert synset.meta["run"]["iterations"] == 2 and synset.meta["config"]["syn_steps"] == 2


@pytest.mark.slow
def test_jobs_run_rows_in_parallel_processes_with_the_same_results(smoke, tmp_path):
    """--jobs 2: rows (and the buffers they wait for) in two spawned processes give the sequential run's numbers,
    and state.json keeps every job's entries. One buffer is recorded by a job, the other was made before (copied
    from the sequential run, as an OUT that already holds it; recording both took a third of this test's time)."""
    out, code, _, _ = smoke
    assert code == 0
    rows = ["random-ipc1", "dm-ipc1", "mtt-ipc1", "mtt-ipc10"]
    shutil.copytree(out / "buffers" / "w32_lr005", tmp_path / "par" / "buffers" / "w32_lr005",
                    ignore=shutil.ignore_patterns(LOCK_NAME))
    lines: list[str] = []
    assert reproduce(BENCH, rows=rows, out=tmp_path / "par", smoke=True, device="cpu", jobs=2, log=lines.append) == 0, \
        "\n".join(lines[-30:])
    par, seq = _table(tmp_path / "par"), _table(out)
    assert list(par) == list(seq)  # every row of the spec, in its order
    for rid in rows:
        assert par[rid]["error"] is None and par[rid]["ours"] == seq[rid]["ours"], rid
        assert par[rid]["stages"]["eval"]["status"] == "ran", rid
    assert par["mtt-ipc1"]["stages"]["buffer w32_lr001"]["status"] == "ran"
    assert par["mtt-ipc10"]["stages"]["buffer w32_lr005"]["status"] == "reused"
    state = json.loads((tmp_path / "par" / "state.json").read_text())
    # the buffer a job recorded (a reused one adds no entry)
    assert set(state["rows"]) == set(rows) and set(state["buffers"]) == {"w32_lr001"}
    assert all(par[r].get("skipped") for r in par if r not in rows)
    assert json.loads((tmp_path / "par" / "table.json").read_text())["jobs"] == 2
    with pytest.raises(ValueError, match="--jobs"):
        reproduce(BENCH, out=tmp_path / "x", smoke=True, jobs=0)


@pytest.mark.slow
def test_rerun_with_every_artifact_present_trains_nothing(smoke, monkeypatch):
    out, code, seconds, _ = smoke
    assert code == 0
    before = _table(out)

    def no_training(*args, **kwargs):
        raise AssertionError("a rerun with every artifact present must not train")

    monkeypatch.setattr("dd.buffers.recorder.train_expert", no_training)
    monkeypatch.setattr("dd.methods.driver._distill", no_training)
    monkeypatch.setattr("dd.eval.harness.train_and_test", no_training)
    lines: list[str] = []
    t0 = time.perf_counter()
    assert reproduce(BENCH, out=out, smoke=True, device="cpu", log=lines.append) == 0, "\n".join(lines[-20:])
    rerun = time.perf_counter() - t0
    assert rerun < min(30.0, seconds / 3), f"rerun took {rerun:.1f} s (first run {seconds:.1f} s)"
    after = _table(out)
    for rid, e in after.items():
        assert e["error"] is None and {s["status"] for s in e["stages"].values()} == {"reused"}, rid
        assert e["ours"] == before[rid]["ours"], rid
    assert sum("reused" in ln for ln in lines) >= len(after)


@pytest.mark.slow
def test_a_changed_row_is_rerun_and_the_others_reused(smoke, tmp_path):
    out, code, _, _ = smoke
    assert code == 0
    raw = _raw(BENCH)
    for row in raw["rows"]:  # the copy lives elsewhere: its config paths must still find experiments/
        if "config" in row:
            row["config"] = str((TABLES / row["config"]).resolve())
    changed = next(r for r in raw["rows"] if r["id"] == "dm-ipc10")
    changed["options"] = {"lr_img": 5.0}
    spec = tmp_path / "bench_changed.json"
    spec.write_text(json.dumps(raw))
    assert reproduce(spec, rows=["dm-ipc1", "dm-ipc10"], out=out, smoke=True, device="cpu", log=lambda _: None) == 0
    table = _table(out)
    assert table["dm-ipc10"]["stages"]["distill"]["status"] == "restarted"
    assert table["dm-ipc10"]["stages"]["eval"]["status"] == "ran"
    assert {s["status"] for s in table["dm-ipc1"]["stages"].values()} == {"reused"}
    assert table["mtt-ipc1"]["stages"]["distill"]["status"] == "reused", "rows outside --rows keep their numbers"
    run_dir = out / "rows" / "dm-ipc10" / "distill"
    assert SyntheticSet.load(run_dir / "synset.safetensors").meta["config"]["lr_img"] == 5.0
    its = [json.loads(ln)["it"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert its == [0, 1], "the restarted run's log holds its own iterations once"


@pytest.mark.slow
def test_an_interrupted_distill_resumes_from_its_checkpoint(smoke, capsys):
    out, code, _, _ = smoke
    assert code == 0
    run_dir = out / "rows" / "mtt-ipc1" / "distill"
    before = SyntheticSet.load(run_dir / "synset.safetensors")
    (run_dir / "synset.safetensors").unlink()  # as if killed after its last checkpoint, before writing the set
    assert reproduce(BENCH, rows=["mtt-ipc1"], out=out, smoke=True, device="cpu", log=lambda _: None) == 0
    table = _table(out)
    assert table["mtt-ipc1"]["stages"]["distill"]["status"] == "resumed"
    assert "resuming mtt from iteration 2" in capsys.readouterr().out
    after = SyntheticSet.load(run_dir / "synset.safetensors")
    assert torch.equal(before.images, after.images)
    assert table["mtt-ipc1"]["stages"]["eval"]["status"] == "reused", "the same set keeps its report"


def test_rows_left_out_are_listed_as_not_run(tmp_path):
    out = tmp_path / "out"
    assert reproduce(BENCH, rows=["random-ipc1"], out=out, smoke=True, device="cpu", log=lambda _: None) == 0
    table = _table(out)
    assert list(table) == [r["id"] for r in _raw(BENCH)["rows"]]
    assert table["random-ipc1"]["stages"]["eval"]["status"] == "ran" and "skipped" not in table["random-ipc1"]
    assert all(e.get("skipped") for rid, e in table.items() if rid != "random-ipc1")
    assert "| dm-ipc1 | dm | mnist10k | 1 | convnet-w32 | not run |" in (out / "table.md").read_text()
    from dd.reproduce import load_spec, render_markdown  # a row a --jobs run has not finished says so

    raw = json.loads((out / "table.json").read_text())
    entries = [{**e, "skipped": "not finished yet"} if e["id"] == "dm-ipc1" else e for e in raw["rows"]]
    md = render_markdown(load_spec(BENCH), entries, raw["buffers"], raw)
    assert "| dm-ipc1 | dm | mnist10k | 1 | convnet-w32 | not finished yet |" in md
    assert "| dm-ipc10 | dm | mnist10k | 10 | convnet-w32 | not run |" in md


def test_a_second_writer_on_the_output_directory_is_refused(tmp_path):
    from dd.lock import OutputLock, OutputLocked

    out = tmp_path / "out"
    with OutputLock(out, command="another reproduce"):
        with pytest.raises(OutputLocked, match="another reproduce"):
            reproduce(BENCH, rows=["random-ipc1"], out=out, smoke=True, device="cpu", log=lambda _: None)
    assert not (out / "table.json").exists()


@pytest.mark.slow
def test_generated_files_name_no_directory_of_the_machine_that_made_them(smoke):
    """table.md/json, state.json, eval.md/json, distill.json, the buffers' manifests and the runs' config.json name
    paths relative to OUT (or the file's own directory); a run compares its inputs by content, not path."""
    out, code, _, _ = smoke
    assert code == 0
    root = str(out.parent)
    texts = [p for p in out.rglob("*") if p.suffix in (".json", ".md", ".jsonl", ".txt")]
    assert {p.name for p in texts} >= {"table.md", "table.json", "state.json", "eval.json", "eval.md", "distill.json",
                                       "manifest.json"}
    named = [str(p.relative_to(out)) for p in texts if root in p.read_text()]
    assert not named, f"absolute paths of this machine in {named}"
    table = json.loads((out / "table.json").read_text())
    assert (out / table["spec"]).resolve() == BENCH.resolve()  # relative to OUT, and still right
    assert "--out buffers/w32_lr001" in table["buffers"]["w32_lr001"]["command"]
    report = json.loads((out / "rows" / "sre2l-ipc10" / "eval" / "eval.json").read_text())
    spec = report["meta"]["synset"]["evaluation"]["teachers"][0]["spec"]
    assert (out / "rows" / "sre2l-ipc10" / "eval" / spec).resolve() == (out / "buffers" / "teacher_bn_w32").resolve()


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
@pytest.mark.parametrize("smoke", [False, True], ids=["full", "smoke"])
def test_the_commands_shown_mean_what_reproduce_runs(path, smoke, tmp_path):
    """reproduce calls the library directly and shows the equivalent `ddtk` commands: parsed by the commands' own
    parsers, each gives the very config / keyword arguments / protocol that reproduce runs with."""
    import shlex

    from dd.cli import command_parser
    from dd.commands.buffer import buffer_config
    from dd.commands.distill import distill_arguments
    from dd.commands.eval import parse_lr_list, parse_models, parse_protocols, protocol_from_args, report_baselines
    from dd.reproduce import Context, distill_argv, distill_config, eval_argv
    from dd.reproduce.plan import distill_kwargs, eval_kwargs, recipe_plan

    spec = load_spec(path)
    ctx = Context(spec, tmp_path / "out", smoke=smoke, device="cpu", data_root=str(tmp_path / "data"))
    for name in spec.buffers:
        plan = recipe_plan(name, ctx)
        argv = shlex.split(plan.command)
        assert argv[:2] == ["ddtk", "buffer"]
        assert buffer_config(command_parser("buffer").parse_args(argv[2:])) == plan.config, name
    for row in spec.rows:
        if not row.baseline:
            args = command_parser("distill").parse_args(distill_argv(row, ctx))
            assert distill_arguments(args, config_data=distill_config(row, smoke)) == distill_kwargs(row, ctx), row.id
        args = command_parser("eval").parse_args(eval_argv(row, ctx))
        want = eval_kwargs(row, ctx)
        wanted = want["protocol"] if isinstance(want["protocol"], list) else [want["protocol"]]
        assert [protocol_from_args(args, name=n).to_dict() for n in parse_protocols(args)] == \
            [p.to_dict() for p in wanted], row.id
        assert args.teachers == want["teachers"], row.id
        assert (parse_models(args.models), args.runs, report_baselines(args), args.ipc, args.dataset) == \
            (want["archs"], want["runs"], want["baselines"], want["ipc"], want["dataset"]), row.id
        assert (parse_lr_list(args.lr_search) if args.lr_search else None) == want["lr_search"], row.id
        assert (args.full_epochs or args.epochs or 30, args.runs if args.baseline else 1, args.seed) == \
            (want["full_epochs"], want["full_runs"], want["seed"]), row.id


def test_rows_score_several_label_regimes_with_one_teacher_beside_coreset_rows(tmp_path):
    """A budget-style spec: coreset and random rows beside a distilled set, each scored under hard and teacher in one
    report with the spec's teacher recipe; the table has one line per regime with its image and label bytes, a
    rerun reuses everything, and a row scored with another teacher (or other regimes) is scored again."""
    teacher = {"dataset": "digits", "model": "mlp-bn", "experts": 1, "epochs": 1, "dsa": False}
    regimes = {"archs": ["mlp"], "epochs": 1, "runs": 1, "protocols": ["hard", "teacher"], "teachers": ["t"]}
    rows = [{"id": "random", "method": "random", "dataset": "digits", "ipc": 1},
            {"id": "herding", "method": "herding", "dataset": "digits", "ipc": 1},
            {"id": "dm", "method": "dm", "dataset": "digits", "ipc": 1, "run": {"iterations": 1, "eval_every": 0}}]
    spec = {"kind": "bench", "eval": regimes, "buffers": {"t": teacher, "t2": {**teacher, "lr": 0.02}}, "rows": rows}
    path = _write(tmp_path, spec)
    lines: list[str] = []
    assert reproduce(path, out=tmp_path / "out", device="cpu", log=lines.append) == 0, "\n".join(lines[-20:])
    table = _table(tmp_path / "out")
    image_bytes = 10 * 1 * 8 * 8 * 4  # one float32 8x8 image per class
    for rid, e in table.items():
        assert [g["protocol"] for g in e["regimes"]] == ["hard", "teacher"], rid
        assert all(set(g["ours"]) == {"mlp"} for g in e["regimes"]), rid
        assert [g["budget"]["image_bytes"] for g in e["regimes"]] == [image_bytes] * 2, rid
        assert [g["budget"]["label_bytes"] for g in e["regimes"]] == [10 * 8] * 2, rid  # int64 class ids
        assert e["regimes"][1]["budget"]["label_source"].startswith("teacher on every view"), rid
    report = json.loads((tmp_path / "out" / "rows" / "herding" / "eval" / "eval.json").read_text())
    assert [p["name"] for p in report["meta"]["protocols"]] == ["hard", "teacher"]
    assert report["meta"]["coreset_network"].endswith("buffers/t")  # the coreset reads the same teacher
    markdown = (tmp_path / "out" / "table.md").read_text()
    assert markdown.count("| herding | herding |") == 2 and "| 2,560 | 80 + teacher |" in markdown
    assert reproduce(path, out=tmp_path / "out", device="cpu", log=lines.append) == 0
    assert all(s["status"] == "reused" for e in _table(tmp_path / "out").values() for s in e["stages"].values())
    spec["rows"][1]["eval"] = {"teachers": ["t2"]}
    spec["rows"][2]["eval"] = {"protocols": ["hard"]}
    lines.clear()
    assert reproduce(_write(tmp_path, spec), out=tmp_path / "out", device="cpu", log=lines.append) == 0
    after = _table(tmp_path / "out")
    assert [after[r]["stages"]["eval"]["status"] for r in ("random", "herding", "dm")] == ["reused", "ran", "ran"]
    assert "regimes" in after["dm"] and [g["protocol"] for g in after["dm"]["regimes"]] == ["hard"]


def test_budget_cells_of_reports_made_before_label_sources_were_recorded():
    from dd.reproduce.table import _bytes

    assert _bytes({"image_bytes": 31360, "label_bytes": 80, "label_source": None}) == ["31,360", "80"]
    assert _bytes({"image_bytes": 31360, "label_bytes": 80, "label_source": "teacher on every view (not stored)",
                   "labels_exceed_images": False}) == ["31,360", "80 + teacher"]
    assert _bytes({"image_bytes": 32, "label_bytes": 80, "labels_exceed_images": True}) == ["32", "80 (> images)"]
    assert _bytes({"image_bytes": None, "label_bytes": None}) == ["", ""] and _bytes(None) == ["", ""]
