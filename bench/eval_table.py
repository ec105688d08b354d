"""The README's quality tables from `interest eval`'s saved results.

    .venv/bin/python bench/eval_table.py [bench/eval_results/retail_report.json ...]

Prints, per dataset, NDCG@10 / Recall@10 (and @20, new-item recall, user x cut-off pairs) of
every method for the known and the all population, then the model against each baseline: the
ratio and the paired bootstrap 95 % interval of the difference (from the JSON's
``comparisons``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "eval_results"
COLUMNS = ("ndcg@10", "recall@10", "ndcg@20", "recall@20", "new_item_recall@10",
           "new_item_recall@20", "users")


def _cell(value: float | None, name: str) -> str:
    if value is None:
        return "–"
    return f"{int(value)}" if name == "users" else f"{value:.4f}"


def table(result: dict) -> str:
    """Markdown rows for one dataset's report."""
    name = result["dataset"] or result["landing_dir"]
    lines = [
        f"**{name}**, {len(result['cutoffs'])} cut-offs {result['cutoffs'][0][:10]} … "
        f"{result['cutoffs'][-1][:10]} every {result['every_hours']:g} h",
        "",
        "| population | method | " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for population, methods in result["results"].items():
        for method, metrics in methods.items():
            bold = "**" if method == "model" else ""
            cells = " | ".join(_cell(metrics.get(c), c) for c in COLUMNS)
            lines.append(f"| {population} | {bold}{method}{bold} | {cells} |")
    lines += ["",
              "| population | model vs | NDCG@10: ratio, Δ [95 % CI] "
              "| Recall@10: ratio, Δ [95 % CI] |",
              "|---|---|---|---|"]
    for population, baselines in result.get("comparisons", {}).items():
        for baseline, metrics in baselines.items():
            cells = []
            for metric in ("ndcg@10", "recall@10"):
                c = metrics[metric]
                ratio = "–" if c["ratio"] is None else f"{c['ratio']:.2f}×"
                cells.append(f"{ratio}, {c['mean_diff']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}]")
            lines.append(f"| {population} | {baseline} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    paths = [Path(p) for p in argv] or sorted(RESULTS.glob("*_report.json"))
    for path in paths:
        print(table(json.loads(path.read_text())))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
