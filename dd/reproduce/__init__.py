"""`ddtk reproduce SPEC`: one table of results (a paper's, or the CPU bench) rebuilt from nothing by one command.

A spec (JSON, `experiments/tables/`) names the rows of one table. A row is a method run on a dataset at an IPC
(a config file from `experiments/` and/or inline options; its expert buffer or teachers named by recipe, so rows
share them), how the result is scored (protocol, architectures, epochs, runs, baselines) and the number it is
compared with (the paper's, with its source; or, for the CPU bench, the number recorded in the repository). For every
row it records the buffers, distils and scores by calling the library (dd.buffers.record_buffer, dd.methods.distill,
dd.eval.run.evaluate_set) in this process, and prints the equivalent `ddtk buffer` -> `ddtk distill` -> `ddtk eval`
commands for people; each stage writes its own directory under OUT:

  OUT/buffers/NAME/              one per buffer recipe, shared by every row that names it
  OUT/rows/ID/distill.json       the row's whole config (what `ddtk distill --config` reads)
  OUT/rows/ID/distill/           the distill output (synset.safetensors, checkpoint, metrics.jsonl, config.json)
  OUT/rows/ID/eval/              the row's report (eval.json, eval.md)
  OUT/state.json                 wall times, and which set file each report was computed from
  OUT/table.md, OUT/table.json   ours beside the paper's number, the difference, the protocol and the wall times

An artifact that exists and matches is reused rather than recomputed: a buffer whose manifest records the recipe's
config hash; a distill output whose config.json identity (the row's RunPlan identity) and set metadata match
the run; a report computed from the same set (its tensors' recorded sha256) with the same protocol, architectures,
runs and baselines. A partial buffer or distill resumes (both commands resume); a distill made with other settings
starts over (`--restart`); a buffer recorded with other settings is refused with the differences named (it may have
taken hours: delete it or rename the recipe). A run's identity compares its buffers and teachers by content (sha256),
not by path, so an OUT moved or copied elsewhere is still reused.

The package, by concept: spec.py (the spec's schema and loading), plan.py (a row -> its configs, inputs and the
equivalent commands), fresh.py (state.json and what can be reused), stages.py (running one stage), scheduler.py
(--jobs), runner.py (the entry point) and table.py (table.md/json).
"""
from dd.reproduce.spec import (BASELINE_ROWS, EVAL_KEYS, KINDS, ROW_KEYS, SPEC_KEYS, EvalSpec, Row, Spec, SpecError,
                               load_spec, select_rows)
from dd.reproduce.plan import (SMOKE_BUFFER, SMOKE_EVAL, SMOKE_RUN, Context, command_text, distill_argv, distill_config,
                               distill_plan, eval_argv, input_specs, missing_inputs, recipes_of, row_eval, smoke_config)
from dd.reproduce.fresh import State, buffer_status, distill_status, eval_status, set_fingerprint
from dd.reproduce.stages import ensure_buffer, ensure_distill, ensure_eval, row_result
from dd.reproduce.table import PENDING, render_markdown, table_entry, write_table
from dd.reproduce.runner import default_out, describe, reproduce

__all__ = ["BASELINE_ROWS", "EVAL_KEYS", "KINDS", "PENDING", "ROW_KEYS", "SMOKE_BUFFER", "SMOKE_EVAL",
           "SMOKE_RUN", "SPEC_KEYS", "Context", "EvalSpec", "Row", "Spec", "SpecError", "State", "buffer_status",
           "command_text", "default_out", "describe", "distill_argv", "distill_config", "distill_plan",
           "distill_status", "ensure_buffer", "ensure_distill", "ensure_eval", "eval_argv", "eval_status",
           "input_specs", "load_spec", "missing_inputs", "recipes_of", "render_markdown",
           "reproduce", "row_eval", "row_result", "select_rows", "set_fingerprint", "smoke_config", "table_entry",
           "write_table"]
