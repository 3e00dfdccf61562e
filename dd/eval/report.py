"""Evaluation reports as JSON and a Markdown table."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from dd.utils import atomic_write_json, atomic_write_text, relative_paths, to_jsonable, versions


@dataclass
class Report:
    rows: list  # list[EvalResult]
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return to_jsonable({"rows": [r.to_dict() for r in self.rows], "meta": self.meta, "versions": versions()})

    def to_markdown(self) -> str:
        budgeted = any("image_bytes" in r.extra for r in self.rows)
        cols = " image bytes | label bytes | made in (s) |" if budgeted else ""
        lines = ["| set | arch | dataset | IPC | protocol | epochs | runs | accuracy (%) |" + cols,
                 "|---|---|---|---|---|---|---|---|" + ("---|---|---|" if budgeted else "")]
        for r in self.rows:
            ipc = "all" if r.ipc is None else r.ipc
            lines.append(f"| {r.name} | {r.arch} | {r.dataset} | {ipc} | {r.protocol.get('name', '?')} | "
                         f"{r.protocol['epochs']} | {len(r.accs)} | {100 * r.mean:.2f} ± {100 * r.std:.2f} |"
                         + (_budget_cells(r.extra) if budgeted else ""))
        notes = []
        sources = {}
        for r in self.rows:
            source = r.extra.get("label_source")
            if source and source != "class ids":
                sources.setdefault(source, []).append(f"{r.name} ({r.protocol.get('name', '?')})")
        for source, names in sources.items():
            notes.append(f"labels from {source}: {', '.join(dict.fromkeys(names))}")
        if any(r.extra.get("labels_exceed_images") for r in self.rows):
            notes.append("'> images': the row's label budget exceeds its image budget")
        if budgeted:
            notes.append("bytes: float32 images and int64 class ids or float labels as stored (stored teacher labels: "
                         "their files); made in: the wall time that made the set, from its metadata ('—' when not "
                         "recorded; random and full: 0, nothing is made)")
        searched = [r for r in self.rows if "lr_search" in r.extra]
        if searched:
            candidates = ", ".join(f"{c:g}" for c in self.meta.get("lr_search", [])) or "the given candidates"
            chosen = "; ".join(f"{r.name} on {r.arch}: {r.extra['lr']:g}" for r in searched)
            notes.append(f"lr chosen per architecture from {candidates} on a validation split "
                         f"({searched[0].extra['lr_search_split']}), never the test split: {chosen}; the full-data "
                         "baseline keeps the protocol lr")
        taught = {r.protocol.get("name"): r.protocol for r in self.rows if _needs_teacher(r.protocol)}
        for name, p in taught.items():  # every protocol that distils a teacher (a user's too), once each
            notes.append(f"{name} protocol: KL x T^2 with T={p['temperature']}, {p['optimizer']} lr {p['lr']} wd "
                         f"{p['weight_decay']}, {p['schedule']} schedule, batch {p['batch_size']}, crop scale "
                         f"{tuple(p['crop_scale'])}, mix {p['mix']}, teacher BN {p['teacher_bn']}")
        return "\n".join(lines) + "\n" + "".join(f"\n{n}\n" for n in notes)

    def save(self, out_dir: str | Path, stem: str = "eval") -> tuple[Path, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        j, m = out / f"{stem}.json", out / f"{stem}.md"
        atomic_write_json(j, relative_paths(self.to_dict(), out))  # paths relative to the report's directory
        atomic_write_text(m, relative_paths(self.to_markdown(), out))
        return j, m

    @classmethod
    def load_json(cls, path: str | Path) -> dict:
        return json.loads(Path(path).read_text())


def report_matches(path: str | Path, protocol, archs: list, runs: int, baselines: list,
                   lr_search: Optional[list], set_name: Optional[str] = None) -> bool:
    """Was the eval.json at `path` made under this protocol (its to_dict(); a list of them: a report of several, in
    this order), these architectures in this order, this many runs, these baseline rows (their report names:
    'random-real', 'full', a coreset's name) and lr search, with a row of the set named `set_name` (None: a report of
    baselines alone)?"""
    path = Path(path)
    if not path.is_file():
        return False
    report = json.loads(path.read_text())
    meta, rows = report.get("meta", {}), report.get("rows", [])
    names = list(dict.fromkeys(r.get("arch") for r in rows))
    others = sorted({r.get("name") for r in rows if r.get("name") != set_name})
    if set_name is not None and not any(r.get("name") == set_name for r in rows):
        return False
    made = meta.get("protocols") or [meta.get("protocol")]
    return (made == (list(protocol) if isinstance(protocol, list) else [protocol]) and meta.get("runs") == runs
            and names == list(archs)
            and others == sorted(baselines) and meta.get("lr_search") == lr_search)


def _budget_cells(extra: dict) -> str:
    """A row's image bytes, label bytes ('> images' when they exceed the images) and wall time, as table cells."""
    if "image_bytes" not in extra:
        return " — | — | — |"
    over = " (> images)" if extra.get("labels_exceed_images") else ""
    made = extra.get("made_seconds")
    return (f" {extra['image_bytes']:,} | {extra['label_bytes']:,}{over} | "
            f"{'—' if made is None else f'{made:.1f}'} |")


def _needs_teacher(protocol: dict) -> bool:
    """Does the protocol a row records train from a teacher (its registered rule says so; unknown: no)?"""
    from dd.eval.protocol import protocol_rule

    try:
        return protocol_rule(protocol.get("labels", "hard")).needs_teacher
    except (KeyError, ValueError):
        return False
