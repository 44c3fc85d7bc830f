"""The corpus of exported models and what onnx-near makes of each (used by test_goldens.py).

Also renders the coverage table of docs/exporters.md from the same evaluation, so the table is
never written by hand:

    python tests/corpus.py --write-readme
"""

from __future__ import annotations

import argparse
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import onnx_near

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
README = ROOT / "docs" / "exporters.md"
START, END = "<!-- coverage:start -->", "<!-- coverage:end -->"
REL_TOL = 1e-4


def cases() -> list[Path]:
    """Every golden file under models/ (shipped models first, then the corpus)."""
    return sorted(MODELS.rglob("*.golden.json"), key=lambda p: (p.parent != MODELS, str(p)))


def case_id(path: Path) -> str:
    return str(path.relative_to(MODELS)).removesuffix(".golden.json")


@dataclass(frozen=True)
class Outcome:
    """onnx-near's result on one case, against the framework's goldens (rows = all)."""

    case: str
    exporter: str
    kind: str
    opset: int
    got: tuple[float, ...]  # sorted per-tap eranks
    want: tuple[float, ...]
    got_shapes: tuple[tuple[int, int], ...]
    want_shapes: tuple[tuple[int, int], ...]
    score: float
    total: float
    ops: tuple[str, ...]

    @property
    def max_rel_error(self) -> float:
        if len(self.got) != len(self.want):
            return math.inf
        errs = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(self.got, self.want)]
        return max([*errs, abs(self.score - self.total) / max(abs(self.total), 1e-12)])

    @property
    def ok(self) -> bool:
        return self.max_rel_error <= REL_TOL and self.got_shapes == self.want_shapes


@functools.cache
def evaluate(path: Path) -> Outcome:
    """Score the case with all rows of its inputs and pair the result with its goldens."""
    golden = json.loads(path.read_text())
    result = onnx_near.score(
        path.parent / golden["model"], data=path.parent / golden["inputs"], rows="all", batchnorm="running"
    )  # the goldens are eval-mode (running statistics)
    return Outcome(
        case=case_id(path),
        exporter=golden.get("exporter") or "?",
        kind=golden.get("kind") or "",
        opset=int(golden.get("opset", 0)),
        got=tuple(sorted(layer.erank for layer in result.layers)),
        want=tuple(sorted(t["erank"] for t in golden["taps"])),
        got_shapes=tuple(sorted(layer.shape for layer in result.layers)),
        want_shapes=tuple(sorted((int(t["shape"][0]), int(t["shape"][1])) for t in golden["taps"])),
        score=result.score,
        total=float(golden["total"]),
        ops=tuple(sorted({layer.op for layer in result.layers})),
    )


def render(outcomes: list[Outcome]) -> str:
    """The README's coverage section: a summary per exporter, then one row per case."""
    by_exporter: dict[str, list[Outcome]] = {}
    for o in outcomes:
        by_exporter.setdefault(o.exporter, []).append(o)
    lines = [
        START,
        "| exporter | cases | opsets | taps scored | matches the framework (1e-4) |",
        "|---|---|---|---|---|",
    ]
    for exporter, group in by_exporter.items():
        opsets = sorted({o.opset for o in group})
        span = f"{opsets[0]}–{opsets[-1]}" if len(opsets) > 1 else str(opsets[0])
        good = sum(o.ok for o in group)
        lines.append(f"| {exporter} | {len(group)} | {span} | {sum(len(o.got) for o in group)} | {good}/{len(group)} |")
    lines += [
        "",
        "<details><summary>Every case</summary>",
        "",
        "| case | exporter | model | opset | taps | result |",
        "|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        result = "✓" if o.ok else f"✗ ({len(o.got)} taps, framework has {len(o.want)})"
        lines.append(f"| `{o.case}` | {o.exporter} | {o.kind} | {o.opset} | {len(o.got)} | {result} |")
    lines += ["", "</details>", END]
    return "\n".join(lines)


def readme_section() -> str:
    """The coverage section as it stands in the README."""
    text = README.read_text()
    return text[text.index(START) : text.index(END) + len(END)]


def main() -> None:
    ap = argparse.ArgumentParser(description="Render the README's coverage table from the corpus.")
    ap.add_argument("--write-readme", action="store_true", help="replace the table in docs/exporters.md")
    args = ap.parse_args()
    table = render([evaluate(p) for p in cases()])
    if args.write_readme:
        text = README.read_text()
        if START in text:
            text = text[: text.index(START)] + table + text[text.index(END) + len(END) :]
        else:
            text += "\n" + table + "\n"
        README.write_text(text)
    else:
        print(table)


if __name__ == "__main__":
    main()
