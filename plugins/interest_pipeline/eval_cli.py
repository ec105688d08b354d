"""``interest eval``: offline evaluation of the recommendations against later events.

Protocol (temporal, no peeking):

1. **Data.** A window ``[start, end)`` of a landing zone in the contract's format: either a
   sample dataset replayed into ``<workdir>/landing`` (``--dataset movielens|retail|gowalla``,
   :func:`interest_pipeline.replay.replay`, deterministic) or any existing landing zone
   (``--landing-dir``).
2. **Pipeline.** The pipeline's own stages run in-process into a scratch warehouse
   ``<workdir>/warehouse.duckdb`` with the same settings (env vars) except the paths, as the
   daily backfill DAG runs them: per UTC day, ingest (hour by hour), one dbt run and one
   embedding batch; then fold, ranker training (when due: the hour ending at midnight) and
   recommend hour by hour. Shortcuts that change no list: an empty hour is scored only when
   it ends at midnight (training, the daily refresh); other empty hours write no version,
   and the new-visitor list they would write has the same order as the last busy hour's (an
   hour without events scales every item's decayed popularity alike); ``pipeline_runs`` is
   not written; dbt runs in-process as ``dbt seed`` once plus ``dbt run`` per day (the DAG's
   ``dbt build`` adds data tests, which check the tables without changing them). Ingest,
   dbt and embed are cached in the work dir; training and recommend are re-run for every
   hour, in order, whenever the scoring settings differ from the ones the warehouse was
   scored with (exact, because they read only the rows of hours up to their own, unless
   catalogue lines land after the first hour, in which case everything is re-run), the
   fold too when what it depends on changed (:func:`fold_fingerprint`), and the rankers'
   fits only when what they read did (:func:`training_fingerprint`). When the catalogue
   lands in the first hour, every day is prepared first and then only the lists the
   cut-offs read are written (:mod:`interest_pipeline.eval_lists`: the same lists, a
   twentieth of them on retail); ``--all-lists`` writes every list of every hour, as the
   DAG does.
3. **Cut-offs.** ``T = first_cutoff, first_cutoff + every, …`` while ``T + horizon <= end``
   (defaults: the first cut-off is ``start + 7 days`` so every user has up to a week of
   history, ``every = 24 h``, ``horizon = 24 h``). At each ``T`` the recommendations in force
   (each user's latest version with ``as_of <= T``) and the baselines (computed from events
   up to ``T``) are scored against the events in ``(T, T + horizon]``
   (:func:`interest_pipeline.evaluation.evaluate_as_of`; see that module for the relevance
   rule and metric formulas). The baselines' lists and the peers' hyper-parameters depend on
   the data and the evaluation code only: they are kept per cut-off in
   ``<workdir>/baselines`` (:class:`BaselineStore`), so a rerun after a scoring change
   computes only the model's lists and the metrics.
4. **Report.** Per method and metric, the mean over cut-offs weighted by the users evaluated
   at each (that is, the mean over all (user, cut-off) pairs), for the headline population
   ``known`` (users with at least one event up to T) and for ``all`` (every user with a
   relevant later item, new users counting as misses for methods that have nothing for
   them); a side-by-side table, a PNG chart of the metrics per cut-off, and ``--json`` for
   scripts. Tuning of the scoring is done on cut-offs before ``--report-from`` only; the
   reported table uses cut-offs from it on.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interest_pipeline import progress
from interest_pipeline.config import REPO_ROOT, Settings, get_settings

if TYPE_CHECKING:
    import duckdb

log = logging.getLogger(__name__)

_HOUR = timedelta(hours=1)
_STATE_FILE = "eval_state.json"
_BASELINE_DIR = "baselines"


# --------------------------------------------------------------------------------------------
# Running the pipeline into a scratch warehouse
# --------------------------------------------------------------------------------------------


def scratch_settings(workdir: Path, landing_dir: Path) -> Settings:
    """The configured settings with every path moved into ``workdir``."""
    workdir = workdir.resolve()
    return dataclasses.replace(
        get_settings(),
        data_dir=workdir,
        warehouse_path=workdir / "warehouse.duckdb",
        landing_dir=landing_dir.resolve(),
        airflow_home=workdir / "airflow",
    )


def busy_hours(landing_dir: Path, start: datetime, end: datetime) -> list[datetime]:
    """Starts of the hours in [start, end) that have an events or items partition."""
    from interest_pipeline.ingest import partition_dir

    hours = []
    hour = start
    while hour < end:
        if any(partition_dir(landing_dir, kind, hour).is_dir() for kind in ("events", "items")):
            hours.append(hour)
        hour += _HOUR
    return hours


class _InProcessDbt:
    """dbt in this process: seed and parse once, then ``dbt run`` per day on that manifest.

    The day's interval goes through raw.dbt_run_interval, as in the hourly task
    (:func:`interest_pipeline.transform.record_interval`), not ``--vars``: the project is then
    the same for every day, so it is parsed once and the manifest handed to each run (a
    ``--vars`` run re-parses the whole project, about 5 s a day).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runner: Any = None

    def _invoke(self, *args: str) -> Any:
        from dbt.cli.main import dbtRunner

        from interest_pipeline.transform import DbtBuildError, dbt_command

        cmd, env = dbt_command(self.settings, *args, "--quiet")
        for key in ("INTEREST_WAREHOUSE_PATH", "DBT_LOG_PATH", "DBT_SEND_ANONYMOUS_USAGE_STATS"):
            os.environ[key] = env[key]
        result = (self.runner or dbtRunner()).invoke(cmd[1:])
        if not result.success:
            raise DbtBuildError(f"dbt {' '.join(args)} failed: {result.exception}")
        return result

    def run(self, start: datetime, end: datetime) -> dict[str, Any]:
        from dbt.cli.main import dbtRunner

        from interest_pipeline.transform import record_interval

        began = time.perf_counter()
        record_interval(self.settings, start, end)
        if self.runner is None:
            self._invoke("seed")
            self.runner = dbtRunner(manifest=self._invoke("parse").result)
        self._invoke("run")
        return {"dbt_seconds": round(time.perf_counter() - began, 3)}


def scoring_fingerprint(settings: Settings) -> dict[str, Any]:
    """Everything fold + recommend depend on besides the data."""
    from interest_pipeline.ranker import ranker_settings
    from interest_pipeline.recommendations import (
        new_item_slot,
        refresh_horizon_hours,
        scoring_config,
    )

    return {
        "code": _scoring_code_digest(),
        "model": settings.model,
        "half_life_hours": settings.half_life_hours,
        "top_n": settings.top_n,
        "evidence_events": settings.evidence_events,
        "scoring": dataclasses.asdict(scoring_config()),
        "ranker": dataclasses.asdict(ranker_settings()),
        "refresh_horizon_hours": refresh_horizon_hours(),
        "new_item_rank": new_item_slot(),
    }


def fold_fingerprint(settings: Settings) -> dict[str, Any]:
    """Everything the fold (:func:`interest_pipeline.user_vectors.update_user_vectors`, which
    also writes the social vectors) depends on besides the data: a part of
    :func:`scoring_fingerprint`; a rescore that leaves it unchanged does not fold again."""
    from interest_pipeline import embeddings, social, user_vectors

    return {
        "code": _code_digest(user_vectors, social),
        "model_id": embeddings.resolve_model(settings.model)[0],
        "half_life_hours": settings.half_life_hours,
    }


def training_fingerprint(settings: Settings) -> dict[str, Any]:
    """Everything the ranker's daily fit (:func:`interest_pipeline.ranker.train_ranker`)
    depends on besides the data and the vectors (:func:`fold_fingerprint`): a rescore that
    leaves both unchanged (a change to how lists are cut, say) keeps the fitted rankers."""
    from interest_pipeline import (
        bootstrap,
        catalogue_stats,
        evaluation,
        evidence,
        ranker,
        recommendations,
        social,
        user_vectors,
        warehouse,
    )

    return {
        "code": _code_digest(
            ranker, recommendations, catalogue_stats, social, user_vectors, evidence,
            evaluation, bootstrap, warehouse,
        ),
        "model": settings.model,
        "half_life_hours": settings.half_life_hours,
        "evidence_events": settings.evidence_events,
        "scoring": dataclasses.asdict(recommendations.scoring_config()),
        "ranker": dataclasses.asdict(ranker.ranker_settings()),
    }


def _scoring_code_digest() -> str:
    """A digest of the modules fold, training and recommend run: a change to the scoring code
    re-scores a cached warehouse as a change to its settings does."""
    from interest_pipeline import (
        catalogue_stats,
        evidence,
        ranker,
        recommendations,
        social,
        user_vectors,
    )

    return _code_digest(user_vectors, ranker, recommendations, social, catalogue_stats, evidence)


def _code_digest(*modules: Any) -> str:
    """A digest of the source of these modules, in this order."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


def _read_state(workdir: Path) -> dict[str, Any]:
    path = workdir / _STATE_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _write_state(workdir: Path, state: dict[str, Any]) -> None:
    (workdir / _STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True, default=str))


def _landing_fingerprint(landing_dir: Path, hours: Sequence[datetime]) -> str:
    from interest_pipeline.ingest import partition_dir

    digest = hashlib.sha256()
    for hour in hours:
        for kind in ("events", "items"):
            folder = partition_dir(landing_dir, kind, hour)
            if folder.is_dir():
                for path in sorted(folder.iterdir()):
                    stat = path.stat()
                    digest.update(f"{path.relative_to(landing_dir)}:{stat.st_size}".encode())
    return digest.hexdigest()


def run_pipeline(
    settings: Settings,
    start: datetime,
    end: datetime,
    workdir: Path,
    lists_for: tuple[Sequence[datetime], float] | None = None,
) -> dict[str, Any]:
    """Bring the scratch warehouse up to date for [start, end) (see the module docstring).

    Data is prepared a UTC day at a time, as the daily backfill DAG does (ingest hour by hour,
    one dbt run and one embedding batch per day); fold and recommend then go hour by hour over
    the day's busy hours. ``lists_for`` (cut-offs, horizon hours): a rescore of prepared data
    writes only the lists those cut-offs read (:mod:`interest_pipeline.eval_lists`); None:
    every list, as the DAG. Returns what was done: hours with data, days prepared, hours
    (re)scored, lists written, seconds.
    """
    from interest_pipeline import eval_lists
    from interest_pipeline.warehouse import open_warehouse

    began = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    hours = busy_hours(settings.landing_dir, start, end)
    state = _read_state(workdir)
    data_key = {
        "landing": str(settings.landing_dir),
        "start": start.isoformat(),
        "fingerprint": _landing_fingerprint(settings.landing_dir, hours),
        "model": settings.model,
        "prepared_by": "day",
    }
    scoring_key = scoring_fingerprint(settings)
    fold_key = fold_fingerprint(settings)
    training_key = training_fingerprint(settings)
    if state.get("data") != data_key:
        if state and settings.warehouse_path.exists():
            log.info("landing zone or window changed: rebuilding %s", settings.warehouse_path)
            settings.warehouse_path.unlink()
        shutil.rmtree(workdir / _BASELINE_DIR, ignore_errors=True)  # of the old data
        state = {"data": data_key, "prepared_until": None, "scoring": None, "fold": None}
    prepared_until = datetime.fromisoformat(state["prepared_until"]) if state.get(
        "prepared_until"
    ) else None
    catalogue_fixed = _catalogue_lands_only_in_first_hour(settings, hours)
    # state["fold"]: the fold key every hour before prepared_until was folded with (absent in
    # an older state: unknown, and implied by its scoring key). The fold is deterministic and
    # replaces its hour's rows, so when it is this run's key, the vectors are the ones a fold
    # would write again: a rescore of those hours only trains and recommends. (The fold key
    # has the model_id, which the scoring key lacks: another embedding backend re-scores.)
    refold = state.get("fold") != fold_key
    # state["training"]: the training key every ranker of the warehouse was fitted with; the
    # fit is deterministic, so with the same key and vectors a rescore keeps them.
    retrain = refold or state.get("training") != training_key
    # state["lists"]: None when every list was written, else the digest of the cut-offs and
    # horizon whose lists alone were: enough for those only.
    lists_key = _digest({"cutoffs": lists_for[0], "horizon": lists_for[1]}) if lists_for else None
    rescore = (
        state.get("scoring") != scoring_key
        or state.get("fold", fold_key) != fold_key
        or state.get("training", training_key) != training_key
        or state.get("lists") not in (None, lists_key)
    )
    if rescore:
        if not catalogue_fixed:
            prepared_until = None
        _forget_statistics_state(settings, start)
        # Until this run ends, the lists (and after a refold the vectors) are a mix.
        state["scoring"] = None
        state["fold"] = None if refold else fold_key
        state["training"] = None if retrain else training_key
        _write_state(workdir, state)
    dbt = None
    prepared = scored = folded = lists = 0
    busy_days = {h.replace(hour=0) for h in hours}
    days = []
    day = start.replace(hour=0)
    while day < end:
        if hours and min(day + timedelta(days=1), end) > hours[0]:
            # (before the first busy hour the warehouse has no tables to fold into)
            days.append((max(day, start), min(day + timedelta(days=1), end)))
        day += timedelta(days=1)

    def needs_data(day_start: datetime, day_end: datetime) -> bool:
        return day_start.replace(hour=0) in busy_days and (
            prepared_until is None or day_end > prepared_until
        )

    # With the cut-offs known and the catalogue landing in the first hour (so that data of
    # later days changes no earlier hour's scoring), the data is prepared first and only the
    # lists the cut-offs read are written; otherwise every list, day by day, as the DAG.
    pending = [d for d in days if needs_data(*d)]
    targeted = bool(lists_for and catalogue_fixed and (rescore or pending))
    if targeted:
        with progress.track("  prepare", len(pending), "days") as bar:
            for day_start, day_end in bar.iterate(pending, note=lambda d: f"{d[0]:%Y-%m-%d}"):
                dbt = _prepare_day(settings, dbt, day_start, day_end)
                prepared += 1
                # Prepared, not folded yet: until the fold below, the vectors are a mix.
                state.update(prepared_until=day_end.isoformat(), scoring=None, fold=None)
                _write_state(workdir, state)
        scoring = [h for d in days for h in _scoring_hours(*d, hours)]
        # The hours to fold: every hour after a change the fold reads, else the new days'.
        new_from = pending[0][0] if pending else end
        folding = [h for h in scoring if refold or h >= new_from]
        with (
            open_warehouse(settings.warehouse_path) as con,
            progress.track("  fold", len(folding), "hours", every=100) as bar,
        ):
            for hour in bar.iterate(folding, note=lambda h: f"{h:%Y-%m-%d %H:%M}"):
                _fold(settings, con, hour, hour + _HOUR)
            lists = eval_lists.rescore_for_cutoffs(
                settings, con, scoring, *lists_for, train=retrain or bool(pending)
            )["lists_written"]
        scored, folded, days = len(scoring), len(folding), []
    with progress.track("  pipeline", len(days), "days") as bar:
        for day_start, day_end in bar.iterate(days, note=lambda d: f"{d[0]:%Y-%m-%d}"):
            data = needs_data(day_start, day_end)
            if not data and not rescore:
                continue
            if data:
                dbt = _prepare_day(settings, dbt, day_start, day_end)
                prepared += 1
            fold, train = data or refold, data or retrain
            scoring = _scoring_hours(day_start, day_end, hours)
            # One connection for the day's hours (closed before the next day's dbt run).
            with open_warehouse(settings.warehouse_path) as con:
                for hour in scoring:
                    lists += _score_hour(settings, con, hour, hour + _HOUR, fold, train)
            scored += len(scoring)
            folded += len(scoring) * fold
            if data:
                # Every hour up to here is now folded with fold_key: in this run, or before it
                # when refold is False.
                state["prepared_until"] = day_end.isoformat()
                state["scoring"] = None
                state["fold"] = fold_key
                _write_state(workdir, state)
    if targeted or rescore:
        state["lists"] = lists_key if targeted else None
    state["scoring"] = scoring_key
    state["fold"] = fold_key
    state["training"] = training_key
    state["prepared_until"] = end.isoformat() if hours else None
    _write_state(workdir, state)
    return {
        "hours_with_data": len(hours),
        "days_prepared": prepared,
        "hours_scored": scored,
        "hours_folded": folded,
        "lists_written": lists,
        "pipeline_seconds": round(time.perf_counter() - began, 1),
    }


def _prepare_day(
    settings: Settings, dbt: _InProcessDbt | None, day_start: datetime, day_end: datetime
) -> _InProcessDbt:
    """Ingest a day hour by hour, build it with one dbt run and embed its new texts, as the
    daily backfill DAG does; returns the dbt runner (made at the first day, then reused)."""
    from interest_pipeline import stages

    stages.ingest_landing_partition(day_start, day_end, settings)
    dbt = dbt or _InProcessDbt(settings)
    dbt.run(day_start, day_end)
    stages.embed_new_texts(day_start, day_end, settings)
    return dbt


def _scoring_hours(day_start: datetime, day_end: datetime, busy: Sequence[datetime]) -> list:
    """The hours of a day that are scored: the busy hours, and the hour ending at midnight
    even when empty (it fits the ranker and re-scores the week's active users). Other empty
    hours change no list: they write no version, and the new-visitor list they would write
    orders items by a decayed sum that an hour without events scales, all items alike."""
    from interest_pipeline import stages

    busy = set(busy)
    return [
        hour for hour, _ in stages.interval_hours(day_start, day_end)
        if hour in busy or (hour + _HOUR).hour == 0
    ]


def _forget_statistics_state(settings: Settings, start: datetime) -> None:
    """Before the hours are scored again from ``start``: forget the catalogue statistics'
    state, which sits at the last hour scored, so that the first hour rebuilds it from a scan
    and the next ones advance it, instead of every hour behind it being computed from a scan
    of history (the numbers are the same either way: :mod:`interest_pipeline.catalogue_stats`
    is exact)."""
    from interest_pipeline.catalogue_stats import invalidate_from
    from interest_pipeline.warehouse import open_warehouse

    if settings.warehouse_path.exists():
        with open_warehouse(settings.warehouse_path) as con:
            invalidate_from(con, start)


def _score_hour(
    settings: Settings,
    con: Any,
    start: datetime,
    end: datetime,
    fold: bool = True,
    train: bool = True,
) -> int:
    """Fold (unless ``fold`` is False: the vectors are already the fold's), train the ranker
    where due (unless ``train`` is False: the rankers are already the fit's) and recommend
    one hour on ``con``, in order (what the DAG's tasks do); returns the lists written."""
    from interest_pipeline import stages

    if fold:
        _fold(settings, con, start, end)
    if train:
        stages.train_ranker(start, end, settings, con=con)
    return stages.write_recommendations(start, end, settings, con=con)["users_recommended"]


def _fold(settings: Settings, con: Any, start: datetime, end: datetime) -> None:
    """The fold stage's core, in order (the stage's replay of later intervals never applies)."""
    from interest_pipeline import embeddings, user_vectors

    model_id, _ = embeddings.resolve_model(settings.model)
    user_vectors.update_user_vectors(con, model_id, start, end, settings.half_life_hours)


def _catalogue_lands_only_in_first_hour(settings: Settings, hours: Sequence[datetime]) -> bool:
    from interest_pipeline.ingest import partition_dir

    return not any(partition_dir(settings.landing_dir, "items", h).is_dir() for h in hours[1:])


# --------------------------------------------------------------------------------------------
# Cut-offs, aggregation, output
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Window:
    """A replay window and its cut-offs: tuning in [tune_from, report_from), reported from
    ``report_from`` on."""

    start: datetime
    end: datetime
    tune_from: datetime
    report_from: datetime
    every_hours: float


# The protocol's windows for the sample datasets (UTC, naive), cut-offs every 6 h.
DEFAULT_WINDOWS: dict[str, Window] = {
    # Eight months: the six weeks used before gave 172 user x cut-off pairs, too few for an
    # interval to tell a 10 % difference from noise; this gives 1,326.
    "movielens": Window(
        start=datetime(2006, 9, 1),
        end=datetime(2007, 6, 1),
        tune_from=datetime(2006, 9, 8),
        report_from=datetime(2006, 10, 1),
        every_hours=6.0,
    ),
    "retail": Window(
        start=datetime(2010, 11, 1),
        end=datetime(2010, 11, 22),
        tune_from=datetime(2010, 11, 8),
        report_from=datetime(2010, 11, 15),
        every_hours=6.0,
    ),
    # The densest six weeks of Gowalla NYC (from 2010-09-06: 22,194 named check-ins by 1,995
    # users), after a week of history.
    "gowalla": Window(
        start=datetime(2010, 8, 30),
        end=datetime(2010, 10, 18),
        tune_from=datetime(2010, 9, 6),
        report_from=datetime(2010, 9, 27),
        every_hours=6.0,
    ),
}

TABLE_COLUMNS = (
    ("ndcg", 10),
    ("recall", 10),
    ("hit_rate", 10),
    ("ndcg", 20),
    ("recall", 20),
    ("hit_rate", 20),
    ("coverage", 10),
    ("coverage", 20),
    ("new_item_recall", 20),
    ("users", None),
)


def cutoffs(first: datetime, end: datetime, every_hours: float, horizon_hours: float) -> list:
    """T = first, first + every, … while T + horizon <= end."""
    out = []
    step, horizon = timedelta(hours=every_hours), timedelta(hours=horizon_hours)
    t = first
    while t + horizon <= end:
        out.append(t)
        t += step
    return out


class BaselineStore:
    """The baselines' results (``evaluation.BaselineResults``) per cut-off, pickled in
    ``<workdir>/baselines/<run key digest>/``. The run key is the data key of
    :func:`run_pipeline` (``state["data"]``), the source of ``baselines.py`` and
    ``evaluation.py``, ``PEER_GRIDS``, the consumed event types, and numpy's and scipy's
    versions (EASE's near-ties follow the BLAS); a cut-off's key (:meth:`key`) adds the rest
    of what its baselines depend on. Folders of other run keys are stale: removed when the
    store is opened.
    """

    def __init__(self, workdir: Path, data_key: Mapping[str, Any]) -> None:
        self.run_key = _baseline_run_key(data_key)
        root = workdir / _BASELINE_DIR
        self.folder = root / _digest(self.run_key)
        if root.is_dir():
            for stale in root.iterdir():
                if stale != self.folder:
                    shutil.rmtree(stale, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)

    def key(
        self,
        con: duckdb.DuckDBPyConnection,
        as_of: datetime,
        horizon_hours: float,
        ks: Sequence[int],
        peers: bool,
    ) -> dict[str, Any]:
        """The key of a cut-off's results: the run key, the arguments of
        ``evaluation.evaluate_cutoff`` that its baselines depend on, and a digest of the rows
        they read. The data key alone misses a warehouse whose marts changed under the same
        landing zone (other dbt code or settings, re-ingested by a rescore)."""
        from interest_pipeline.evaluation import interactions_digest

        return {
            **self.run_key,
            "as_of": as_of.isoformat(),
            "horizon_hours": horizon_hours,
            "ks": list(ks),
            "peers": peers,
            "rows": interactions_digest(con, as_of + timedelta(hours=horizon_hours)),
        }

    def get(self, key: Mapping[str, Any]) -> Any:
        """The stored results under this key, or None."""
        import pickle

        path = self._path(key)
        if not path.exists():
            return None
        stored = pickle.loads(path.read_bytes())
        return stored["results"] if stored.get("key") == key else None

    def put(self, key: Mapping[str, Any], results: Any) -> None:
        """Store results under this key (atomically: a run stopped midway leaves no
        half-written file)."""
        import pickle

        path = self._path(key)
        partial = path.with_suffix(".tmp")
        partial.write_bytes(pickle.dumps({"key": dict(key), "results": results}))
        partial.replace(path)

    def _path(self, key: Mapping[str, Any]) -> Path:
        return self.folder / f"{_digest(key)}.pkl"


def _baseline_run_key(data_key: Mapping[str, Any]) -> dict[str, Any]:
    import numpy
    import scipy

    from interest_pipeline import baselines, evaluation
    from interest_pipeline.recommendations import CONSUMED_EVENT_TYPES

    return {
        "data": dict(data_key),
        "code": _code_digest(baselines, evaluation),
        "grids": evaluation.PEER_GRIDS,
        "consumed_event_types": list(CONSUMED_EVENT_TYPES),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
    }


def _digest(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def evaluate_cutoffs(
    settings: Settings,
    times: Sequence[datetime],
    horizon_hours: float,
    workdir: Path | None = None,
) -> list[Any]:
    """Evaluate and record every cut-off; returns one ``evaluation.CutoffEvaluation`` each
    (rows, per-user values, the peers' hyper-parameters). With ``workdir`` (that of
    :func:`run_pipeline`, which keeps the data key), the baselines' results are read from and
    written to its :class:`BaselineStore`."""
    from interest_pipeline import embeddings, evaluation
    from interest_pipeline.warehouse import open_warehouse

    model_id, _ = embeddings.resolve_model(settings.model)
    data_key = _read_state(workdir).get("data") if workdir else None
    store = BaselineStore(workdir, data_key) if workdir and data_key else None
    # evaluate_cutoff's arguments, named once: the store keys the results by them.
    ks, peers = evaluation.KS, True
    found = []
    with (
        open_warehouse(settings.warehouse_path) as con,
        progress.track("  evaluate", len(times), "cut-offs", every=10) as bar,
    ):
        for t in bar.iterate(times, note=lambda t: f"{t:%Y-%m-%d %H:%M}"):
            key = store.key(con, t, horizon_hours, ks, peers) if store else {}
            cached = store.get(key) if store else None
            cutoff = evaluation.evaluate_cutoff(
                con, t, horizon_hours, model_id, ks, peers, cached=cached
            )
            if store and cached is None:
                store.put(key, cutoff.baselines)
            evaluation.record_evaluation(con, t, horizon_hours, model_id, cutoff.rows)
            # How old the served lists are: the daily refresh should bound it by a day for
            # the week's active users.
            ages = evaluation.list_ages_hours(con, t, model_id, cutoff.users["known"])
            found.append(dataclasses.replace(cutoff, list_ages=tuple(ages)))
    return found


def list_age_summary(ages: Sequence[float]) -> dict[str, float | int | None]:
    """Quantiles of the served lists' ages (hours) over the (user, cut-off) pairs."""
    import numpy as np

    if not ages:
        return {"pairs": 0, "p50": None, "p90": None, "max": None, "within_24h": None}
    a = np.asarray(ages)
    return {
        "pairs": len(a),
        "p50": round(float(np.percentile(a, 50)), 1),
        "p90": round(float(np.percentile(a, 90)), 1),
        "max": round(float(a.max()), 1),
        "within_24h": round(float((a <= 24).mean()), 3),
    }


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """{population: {method: {"metric@k": weighted mean}}} (see ``evaluation.weighted_means``)."""
    from interest_pipeline.evaluation import weighted_means

    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for (population, method, metric, k), value in weighted_means(rows).items():
        name = metric if k is None else f"{metric}@{k}"
        out.setdefault(population, {}).setdefault(method, {})[name] = value
    return out


def format_table(
    summary: dict[str, dict[str, float | None]],
    comparisons: dict[str, dict[str, dict[str, Any]]] | None = None,
) -> str:
    """Side-by-side table, one row per method, one column per metric; then, if given, the
    model against each baseline ({baseline: {"metric@k": paired bootstrap}}): the ratio of the
    means and the difference with its interval."""
    from interest_pipeline.evaluation import METHODS

    names = [m if k is None else f"{m}@{k}" for m, k in TABLE_COLUMNS]
    width = max(len(n) for n in names) + 1
    lines = ["method".ljust(16) + "".join(n.rjust(width) for n in names)]
    for method in METHODS:
        cells = []
        for name in names:
            value = summary.get(method, {}).get(name)
            if value is None:
                cells.append("-".rjust(width))
            elif name == "users":
                cells.append(f"{int(value)}".rjust(width))
            else:
                cells.append(f"{value:.4f}".rjust(width))
        lines.append(method.ljust(16) + "".join(cells))
    if comparisons:
        first = next(iter(next(iter(comparisons.values())).values()))
        lines.append(
            f"model vs baseline: ratio of means, Δ mean [95 % interval] (paired bootstrap over "
            f"{first['n']} user × cut-off pairs)"
        )
        for baseline, metrics in comparisons.items():
            cells = []
            for name, c in metrics.items():
                if c["mean_diff"] is None:
                    cells.append(f"{name} -")
                    continue
                ratio = "-" if c["ratio"] is None else f"×{c['ratio']:.2f}"
                cells.append(
                    f"{name} {ratio} Δ {c['mean_diff']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}]"
                )
            lines.append(f"  vs {baseline}".ljust(20) + "   ".join(cells))
    return "\n".join(lines)


def save_chart(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """PNG of NDCG@10, Recall@10 and HitRate@10 per cut-off and method (known users)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from interest_pipeline.evaluation import METHODS

    panels = (("ndcg", 10), ("recall", 10), ("hit_rate", 10))
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 9), sharex=True)
    for ax, (metric, k) in zip(axes, panels, strict=True):
        for method in METHODS:
            points = sorted(
                (r["interval_end"], r["value"])
                for r in rows
                if r["population"] == "known"
                and r["method"] == method
                and r["metric"] == metric
                and r["k"] == k
                and r["value"] is not None
            )
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=method)
        ax.set_ylabel(f"{metric}@{k}")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right", fontsize="small")
    axes[0].set_title(title)
    axes[-1].set_xlabel("cut-off T (UTC); horizon after it")
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _parse_time(text: str) -> datetime:
    from interest_pipeline.stages import to_utc_naive

    value = datetime.fromisoformat(text)
    return to_utc_naive(value if value.tzinfo else value.replace(tzinfo=UTC))


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``interest eval``."""
    from interest_pipeline.replay import DATASETS

    windows = "; ".join(
        f"{name}: [{w.start:%Y-%m-%d}, {w.end:%Y-%m-%d}), tuning cut-offs from "
        f"{w.tune_from:%Y-%m-%d}, reported from {w.report_from:%Y-%m-%d}, every "
        f"{w.every_hours:g} h"
        for name, w in DEFAULT_WINDOWS.items()
    )
    parser = argparse.ArgumentParser(
        prog="interest eval",
        description=(
            "Offline evaluation: run the pipeline hour by hour over a window of sample logs "
            "into a scratch warehouse, then score the recommendations in force at each cut-off "
            "T, and five baselines on the same users (popularity over 7 days and all time, "
            "co-occurrence, EASE, item kNN; the last two tuned on the split before each cut-off), "
            "against the events of (T, T+horizon]. Prints method x metric (mean over cut-offs "
            "weighted by users), the model against each baseline with paired-bootstrap "
            "intervals, and saves a PNG."
        ),
        epilog=f"Dataset windows: {windows}.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", choices=DATASETS, help="replay this sample dataset")
    source.add_argument("--landing-dir", type=Path, help="an existing landing zone")
    parser.add_argument("--start", type=_parse_time, help="window start (UTC, on the hour)")
    parser.add_argument("--end", type=_parse_time, help="window end, exclusive")
    parser.add_argument(
        "--report-from",
        type=_parse_time,
        help="first reported cut-off (default: the dataset's, or start + 7 days)",
    )
    parser.add_argument(
        "--tuning",
        action="store_true",
        help="report the tuning cut-offs (before --report-from) instead",
    )
    parser.add_argument("--every", type=float, help="hours between cut-offs (default 6)")
    parser.add_argument(
        "--horizon",
        type=float,
        default=float(os.environ.get("INTEREST_EVAL_HORIZON_HOURS", "24")),
        help="hours after each cut-off whose events are the truth (default "
        "$INTEREST_EVAL_HORIZON_HOURS or 24)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="scratch folder (landing zone of a replay, warehouse, cache); default "
        "$INTEREST_DATA_DIR/eval/<dataset>",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=REPO_ROOT / "bench" / "eval_results",
        help="where the PNG chart and the JSON results go (default bench/eval_results)",
    )
    parser.add_argument(
        "--resamples",
        type=int,
        default=2000,
        help="paired-bootstrap resamples for the model-vs-baseline intervals (default 2000)",
    )
    parser.add_argument(
        "--all-lists",
        action="store_true",
        help="when the scoring changed, write every list of every hour as the DAG does "
        "(default: only the lists the cut-offs read; the report is the same)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``interest eval``; returns 0 on success, 2 on bad arguments."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    began = time.perf_counter()
    from interest_pipeline.bootstrap import compare_methods
    from interest_pipeline.evaluation import BASELINES, MODEL, POPULATIONS
    preset = DEFAULT_WINDOWS.get(args.dataset) if args.dataset else None
    start = args.start or (preset.start if preset else None)
    end = args.end or (preset.end if preset else None)
    if start is None or end is None or end <= start:
        parser.print_usage(sys.stderr)
        print("interest eval: error: give --start and --end (end after start)", file=sys.stderr)
        return 2
    same_window = preset is not None and (start, end) == (preset.start, preset.end)
    week = start + timedelta(days=7)
    report_from = args.report_from or (preset.report_from if same_window else week)
    tune_from = preset.tune_from if same_window else week
    every = args.every or (preset.every_hours if preset else 6.0)
    name = args.dataset or f"landing-{hashlib.sha1(str(args.landing_dir).encode()).hexdigest()[:8]}"
    workdir = (args.workdir or get_settings().data_dir / "eval" / name).resolve()
    landing = workdir / "landing" if args.dataset else args.landing_dir
    settings = scratch_settings(workdir, landing)

    if args.dataset:
        from interest_pipeline.replay import replay

        replay(args.dataset, start, end, landing)
    first = tune_from if args.tuning else report_from
    last_end = report_from + timedelta(hours=args.horizon) if args.tuning else end
    times = cutoffs(first, min(end, last_end), every, args.horizon)
    if args.tuning:
        times = [t for t in times if t + timedelta(hours=args.horizon) <= report_from]
    done = run_pipeline(
        settings, start, end, workdir, None if args.all_lists else (times, args.horizon)
    )
    evaluate_began = time.perf_counter()
    evaluated = evaluate_cutoffs(settings, times, args.horizon, workdir)
    evaluate_seconds = round(time.perf_counter() - evaluate_began, 1)
    rows = [{**r, "interval_end": c.as_of} for c in evaluated for r in c.rows]
    summary = summarise(rows)
    comparisons = {
        population: compare_methods(
            [c.per_user[population] for c in evaluated],
            MODEL,
            BASELINES,
            (("ndcg", 10), ("recall", 10)),
            resamples=args.resamples,
        )
        for population in POPULATIONS
    }
    label = "tuning" if args.tuning else "report"
    result = {
        "dataset": args.dataset,
        "landing_dir": str(landing),
        "window": [start.isoformat(), end.isoformat()],
        "cutoffs": [t.isoformat() for t in times],
        "period": label,
        "horizon_hours": args.horizon,
        "every_hours": every,
        "scoring": scoring_fingerprint(settings),
        "pipeline": done,
        "evaluate_seconds": evaluate_seconds,
        "results": summary,
        "comparisons": comparisons,
        "hyperparameters": {c.as_of.isoformat(): c.hyperparameters for c in evaluated},
        "list_age_hours": list_age_summary([a for c in evaluated for a in c.list_ages]),
        # The model's paired samples, to compare two runs (bench/eval_compare.py: e.g. with and
        # without a feature) on the same (cut-off, user) pairs.
        "model_per_user": {
            c.as_of.isoformat(): {
                "users": c.users["known"],
                "own_events": [c.own_events.get(u, 0) for u in c.users["known"]],
                **{
                    f"{metric}@{k}": [round(v, 6) for v in c.per_user["known"][MODEL][(metric, k)]]
                    for metric, k in (("ndcg", 10), ("recall", 10))
                },
            }
            for c in evaluated
        },
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    chart = args.out_dir / f"{name}_{label}.png"
    save_chart(rows, chart, f"{name}: {label} cut-offs, horizon {args.horizon:g} h")
    result["chart"] = str(chart)
    (args.out_dir / f"{name}_{label}.json").write_text(json.dumps(result, indent=2, default=str))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    print(
        f"{name}: {len(times)} cut-offs {times[0]:%Y-%m-%d %H:%M} .. {times[-1]:%Y-%m-%d %H:%M} "
        f"({label}), every {every:g} h, horizon {args.horizon:g} h"
        if times
        else f"{name}: no cut-off fits the window"
    )
    for population, caption in (
        ("known", "users with history at T (headline)"),
        ("all", "all users with a later relevant item; new users are misses without a list"),
    ):
        print(f"\n{population}: {caption}")
        print(format_table(summary.get(population, {}), comparisons[population]))
    ages = result["list_age_hours"]
    if ages["pairs"]:
        print(
            f"\nage of the served lists (known users with a list, {ages['pairs']} pairs): "
            f"median {ages['p50']} h, p90 {ages['p90']} h, max {ages['max']} h, "
            f"{ages['within_24h']:.0%} within 24 h"
        )
    print(f"\nchart: {chart}")
    print(
        f"{time.perf_counter() - began:.0f} s (pipeline {done['pipeline_seconds']:.0f} s, "
        f"{done['hours_folded']} of {done['hours_scored']} hours scored folded; evaluation "
        f"{evaluate_seconds:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
