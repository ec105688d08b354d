"""Out of sample, what each fixed social weight adds to the ranker fitted without it.

    .venv/bin/python bench/social_shares.py <interest eval workdir> [--since 2010-09-06]

For every daily ranker fit of an ``interest eval`` run (its ``rankers`` rows from ``--since``),
the other fitted weights are kept and one social feature at a time gets each share of
``ranker.SOCIAL_SHARES`` (times the other weights' total, as the fit chooses it). The training
users of the cut-off at the fit's own time (their relevant items come in the next 24 h, after
the fit) are ranked on their candidates, and the NDCG@10 gain over the share 0 is averaged
over all fits' users, with the paired bootstrap 95 % interval. The examples are computed by
the ranker's own code on a copy of the run's warehouse. Prints one line per (feature, share).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))


def main() -> None:
    import duckdb
    import numpy as np

    from interest_pipeline import ranker
    from interest_pipeline.bootstrap import paired_bootstrap
    from interest_pipeline.config import get_settings
    from interest_pipeline.recommendations import FEATURES, scoring_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--since", type=datetime.fromisoformat, default=datetime(2010, 9, 6))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "warehouse.duckdb"
        shutil.copy2(args.workdir / "warehouse.duckdb", copy)
        con = duckdb.connect(str(copy))
        settings = ranker.ranker_settings()
        fits = con.execute(
            "select model_id, as_of, weights from rankers where as_of >= ? order by as_of",
            [args.since],
        ).fetchall()
        social = [FEATURES.index(f) for f in ranker.SOCIAL_FEATURES]
        gains: dict[tuple[str, float], list[np.ndarray]] = {}
        for model_id, as_of, weights in fits:
            cutoff = ranker._cutoff(
                con, model_id, as_of, settings, get_settings().half_life_hours,
                get_settings().evidence_events, scoring_config(),
            )
            if not cutoff.y:
                continue
            stacked = ranker._Stacked(list(cutoff.x), list(cutoff.y))
            w = np.array([json.loads(weights).get(f, 0.0) for f in FEATURES])
            w[social] = 0.0
            base = stacked.per_user(w)
            for k in social:
                for share in ranker.SOCIAL_SHARES:
                    trial = w.copy()
                    trial[k] = share * np.abs(w).sum()
                    gains.setdefault((FEATURES[k], share), []).append(
                        stacked.per_user(trial) - base
                    )
        for (name, share), parts in gains.items():
            gain = np.concatenate(parts)
            ci = paired_bootstrap(gain, np.zeros_like(gain))
            print(f"{name:13} share {share:<6g} users {len(gain):5d}  NDCG@10 gain "
                  f"{gain.mean():+.4f} [{ci['lo']:+.4f}, {ci['hi']:+.4f}]")


if __name__ == "__main__":
    main()
