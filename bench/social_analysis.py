"""How much the people a user follows can add on Gowalla, two ways (issue 12).

    .venv/bin/python bench/social_analysis.py shares <interest eval workdir> [--since 2010-09-06]
    .venv/bin/python bench/social_analysis.py ceiling [--data ../shared/data]

``shares``: out of sample, what each fixed social weight adds to the ranker fitted without
it. For every daily ranker fit of an ``interest eval`` run (its ``rankers`` rows from ``--since``),
the other fitted weights are kept and one social feature at a time gets each share of
``ranker.SOCIAL_SHARES`` (times the other weights' total, as the fit chooses it). The training
users of the cut-off at the fit's own time (their relevant items come in the next 24 h, after
the fit) are ranked on their candidates, and the NDCG@10 gain over the share 0 is averaged
over all fits' users, with the paired bootstrap 95 % interval. The examples are computed by
the ranker's own code on a copy of the run's warehouse. Prints one line per (feature, share).

``ceiling``: from the raw check-ins, at the evaluation's reported cut-offs (every 6 h from
2010-09-27 to 10-17, 24 h horizon, history from the eval window's start 2010-08-30, users known
at T), the share of each user's later venues that they had visited before, that are new to
them, and that are new to them but some friend had visited: the most a friends'-venues signal
could reach.
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


def shares(workdir: Path, since: datetime) -> None:
    """Print the out-of-sample NDCG@10 gain of each fixed social share (see the module)."""
    import duckdb
    import numpy as np

    from interest_pipeline import ranker
    from interest_pipeline.bootstrap import paired_bootstrap
    from interest_pipeline.config import get_settings
    from interest_pipeline.recommendations import FEATURES, scoring_config

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "warehouse.duckdb"
        shutil.copy2(workdir / "warehouse.duckdb", copy)
        con = duckdb.connect(str(copy))
        settings, pipeline = ranker.ranker_settings(), get_settings()
        fits = con.execute(
            "select model_id, as_of, weights from rankers where as_of >= ? order by as_of",
            [since],
        ).fetchall()
        social = [FEATURES.index(f) for f in ranker.SOCIAL_FEATURES]
        gains: dict[tuple[str, float], list[np.ndarray]] = {}
        for model_id, as_of, weights in fits:
            cutoff = ranker._cutoff(
                con, model_id, as_of, settings, pipeline.half_life_hours,
                pipeline.evidence_events, scoring_config(),
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


def ceiling(data: Path) -> None:
    """Print where the later check-ins of the reported cut-offs' users go (see the module)."""
    import pandas as pd

    folder = data / "gowalla-nyc"
    events = pd.read_csv(folder / "gowalla_events.nyc.tsv.gz", sep="\t", header=None,
                         names=["user", "time", "lat", "lon", "venue"], dtype=str)
    named = set(pd.read_csv(folder / "gowalla_venues.nyc.checkedin.tsv", sep="\t",
                            dtype=str)["vid"])
    events = events[events.venue.isin(named)]
    events["time"] = pd.to_datetime(events["time"]).dt.tz_localize(None)
    events = events[(events.time >= "2010-08-30") & (events.time < "2010-10-18")]
    friends: dict[str, set[str]] = {}
    for user, friend in pd.read_csv(folder / "gowalla_friends.nyc.tsv", sep="\t",
                                    dtype=str).itertuples(index=False):
        friends.setdefault(user, set()).add(friend)
    shares = {"visited before": 0.0, "new to them": 0.0, "new, a friend visited it": 0.0}
    pairs, friends_only = 0, 0
    for cutoff in pd.date_range("2010-09-27", "2010-10-17", freq="6h"):
        seen = events[events.time < cutoff].groupby("user").venue.agg(set).to_dict()
        later = events[(events.time >= cutoff) & (events.time < cutoff + pd.Timedelta(hours=24))]
        for user, venues in later.groupby("user").venue.agg(set).items():
            if user not in seen and user not in friends:
                continue  # not known at T
            pairs += 1
            own = seen.get(user, set())
            theirs = set().union(*(seen.get(f, set()) for f in friends.get(user, ())))
            friends_only += len(theirs - own)
            for venue in venues:  # each user's later venues weigh 1 in all
                shares["visited before"] += (venue in own) / len(venues)
                shares["new to them"] += (venue not in own) / len(venues)
                shares["new, a friend visited it"] += (
                    venue not in own and venue in theirs
                ) / len(venues)
    print(f"{pairs} (cut-off, user) pairs; share of their later venues:")
    for name, total in shares.items():
        print(f"  {name:26} {total / pairs:.3f}")
    print(f"venues friends visited and the user did not, per pair: {friends_only / pairs:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_shares = sub.add_parser("shares")
    p_shares.add_argument("workdir", type=Path)
    p_shares.add_argument("--since", type=datetime.fromisoformat,
                          default=datetime(2010, 9, 6))
    p_ceiling = sub.add_parser("ceiling")
    p_ceiling.add_argument("--data", type=Path,
                           default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args()
    if args.command == "shares":
        shares(args.workdir, args.since)
    else:
        ceiling(args.data)


if __name__ == "__main__":
    main()
