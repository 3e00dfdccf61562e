"""`--jobs N`: buffers and rows in N spawned worker processes, started in spec order as their buffers are ready."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from dd.reproduce.spec import Row, load_spec
from dd.reproduce.plan import Context, recipes_of
from dd.reproduce.fresh import State
from dd.reproduce.stages import ensure_buffer, run_row


def run_parallel(rows: list[Row], ctx: Context, jobs: int, buffers: dict[str, dict],
                  done: Callable[[Row, dict, Optional[dict], Optional[str]], None]) -> None:
    """`jobs` worker processes (spawned), each running one buffer recipe or one row (distill + eval) at a time.
    The next job is the first row in spec order that can start: the row itself when its buffers are recorded,
    else its first buffer nobody is recording yet. On a CPU each job gets cores / jobs torch threads."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    import torch

    threads = max(1, torch.get_num_threads() // jobs)
    args = (str(ctx.spec.path), str(ctx.out), ctx.smoke, ctx.device, ctx.data_root, threads)
    failed_buffers: dict[str, str] = {}
    started: set[str] = set()
    waiting = list(rows)
    running: dict = {}

    def next_job() -> Optional[tuple[str, str, Optional[Row]]]:
        for row in waiting:
            needs = recipes_of(row, ctx.spec)
            broken = [n for n in needs if n in failed_buffers]
            if broken:
                return "failed", broken[0], row
            missing = [n for n in needs if n not in buffers]
            if not missing:
                return "row", row.id, row
            free = [n for n in missing if n not in started]
            if free:
                return "buffer", free[0], None
        return None

    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        while True:
            while len(running) < jobs:
                job = next_job()
                if job is None:
                    break
                kind, name, row = job
                if kind == "failed":
                    waiting.remove(row)
                    done(row, {}, None, f"buffer recipe '{name}' failed: {failed_buffers[name]}")
                    continue
                if row is not None:
                    waiting.remove(row)
                started.add(name)
                ctx.log(f"[{name}] started ({len(running) + 1} of {jobs} jobs running)")
                running[pool.submit(_job, kind, name, *args)] = (kind, name, row)
            if not running:
                return
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                kind, name, row = running.pop(future)
                if kind == "buffer":
                    try:
                        buffers[name] = future.result()
                    except Exception as e:  # noqa: BLE001 - the rows needing it are reported; the others go on
                        failed_buffers[name] = f"{type(e).__name__}: {e}"
                        ctx.log(f"[buffer {name}] failed: {failed_buffers[name]}")
                    continue
                stages, result, error = {f"buffer {n}": buffers[n] for n in recipes_of(row, ctx.spec)}, None, None
                try:
                    row_stages, result = future.result()
                    stages.update(row_stages)
                except Exception as e:  # noqa: BLE001 - reported in the table; the other jobs go on
                    error = f"{type(e).__name__}: {e}"
                done(row, stages, result, error)


def _job(kind: str, name: str, spec_path: str, out: str, smoke: bool, device: str, data_root: Optional[str],
         threads: int):
    """One job of run_parallel, in its worker process: a buffer recipe's record, or a row's (distill and eval
    stages, result); the parent adds the buffer stages from its own records."""
    import torch

    torch.set_num_threads(threads)
    spec = load_spec(spec_path)
    ctx = Context(spec, Path(out), smoke, device, data_root, lambda line: print(f"[{name}] {line}", flush=True))
    state = State(ctx.out / "state.json")
    if kind == "buffer":
        return ensure_buffer(name, ctx, state)
    row = next(r for r in spec.rows if r.id == name)
    stages: dict = {}
    result = run_row(row, ctx, state, stages)
    return stages, result
