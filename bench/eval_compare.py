"""Compare the model of two `interest eval` runs on the same (cut-off, user) pairs.

    python bench/eval_compare.py A.json B.json [--label-a social --label-b without]

Prints NDCG@10 and Recall@10 of both, the paired bootstrap 95 % interval of A - B over the
pairs both runs scored, and the same for the users with fewer than 3 events of their own at T
(where a social signal should matter most), for the others, and for those with none (known
only through their follows). Both files must come from the same dataset window.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

from interest_pipeline.bootstrap import paired_bootstrap  # noqa: E402
from interest_pipeline.recommendations import FEW_OWN_EVENTS  # noqa: E402

METRICS = ("ndcg@10", "recall@10")


def pairs(result: dict) -> dict[tuple[str, str], dict[str, float]]:
    """{(cut-off, user): {metric: value, "own_events": n}} of one run's model."""
    out = {}
    for cutoff, block in result["model_per_user"].items():
        for i, user in enumerate(block["users"]):
            out[(cutoff, user)] = {m: block[m][i] for m in METRICS} | {
                "own_events": block["own_events"][i]
            }
    return out


def compare(a: dict, b: dict, label_a: str, label_b: str) -> dict:
    pa, pb = pairs(a), pairs(b)
    keys = sorted(pa.keys() & pb.keys())
    groups = {
        "all known users": keys,
        f"fewer than {FEW_OWN_EVENTS} own events": [
            k for k in keys if pa[k]["own_events"] < FEW_OWN_EVENTS
        ],
        f"{FEW_OWN_EVENTS} or more own events": [
            k for k in keys if pa[k]["own_events"] >= FEW_OWN_EVENTS
        ],
        # Known only through whom they follow: the list is the people they follow's to make.
        "no own events (only follows)": [k for k in keys if pa[k]["own_events"] == 0],
    }
    report: dict = {"pairs": len(keys), "groups": {}}
    for name, group in groups.items():
        report["groups"][name] = {"pairs": len(group)}
        for metric in METRICS:
            xa = [pa[k][metric] for k in group]
            xb = [pb[k][metric] for k in group]
            stats = paired_bootstrap(xa, xb) if group else {}
            report["groups"][name][metric] = {
                label_a: sum(xa) / len(xa) if xa else None,
                label_b: sum(xb) / len(xb) if xb else None,
                "diff": stats.get("mean_diff"), "lo": stats.get("lo"), "hi": stats.get("hi"),
            }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--label-a", default="A")
    parser.add_argument("--label-b", default="B")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    a, b = (json.loads(p.read_text()) for p in (args.a, args.b))
    if a["window"] != b["window"] or a["cutoffs"] != b["cutoffs"]:
        print("the two runs cover different windows or cut-offs", file=sys.stderr)
        return 2
    report = compare(a, b, args.label_a, args.label_b)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{a['dataset']}: {report['pairs']} (cut-off, user) pairs scored by both runs")
    for name, group in report["groups"].items():
        print(f"\n{name} ({group['pairs']} pairs)")
        for metric in METRICS:
            g = group[metric]
            if g[args.label_a] is None:
                print(f"  {metric}: no pairs")
                continue
            print(
                f"  {metric}: {args.label_a} {g[args.label_a]:.4f}, {args.label_b} "
                f"{g[args.label_b]:.4f}, difference {g['diff']:+.4f} "
                f"[95 % {g['lo']:+.4f}, {g['hi']:+.4f}]"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
