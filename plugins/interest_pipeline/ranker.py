"""The fitted ranker: how much each signal of the score counts, learnt from the warehouse.

One set of hand-set weights cannot fit every shop, so the blend of the score's features
(:data:`interest_pipeline.recommendations.FEATURES`: the plain content cosine, the several
interests term, recency-popularity, co-occurrence, the user's own recent engagement with the
item, and a new-item indicator) is fitted from the warehouse's own history on a time split:

- **Training examples.** At training cut-offs ``T`` every ``cutoff_every_hours`` over the last
  ``training_days`` before the fit (only cut-offs whose ``T + horizon`` is known, so nothing
  after the fit's own time is seen), the users known at ``T`` (a vector version by ``T``) with
  relevant items in ``[T, T + horizon)`` (the evaluation's relevance rule) are scored from what
  was known at ``T``, by the same code the recommend stage uses. Candidates are each feature's
  top ``CANDIDATES_PER_FEATURE`` items; a user none of whose relevant items is a candidate
  teaches nothing and is left out. At most ``users_per_cutoff`` users per cut-off (a
  deterministic sample by hashed id). A cut-off's examples are computed once per process and
  reused by the next days' fits while the warehouse rows they come from are unchanged
  (:func:`_data_key`).
- **Model.** A linear blend ``score = w · features``. A listwise softmax loss (the negative
  log-likelihood of the relevant items under a softmax over the user's candidates,
  ListNet-style, small L2 penalty, L-BFGS) gives a first fit; the better of it and the
  defaults on the training candidates is refined by coordinate ascent on NDCG@10 itself.
  Deterministic.
- **Validation.** The latest ``validation_days`` of cut-offs are held out: the weights fitted on
  the earlier ones must beat the documented defaults (:class:`ScoringConfig`) on NDCG@10 over
  the held-out candidates, with the paired bootstrap 95 % interval of the gain above zero,
  else the defaults are kept and the row says so. Adopted weights are then refitted on every
  cut-off.
- **The social side on top.** On data with follows, the ranker is first fitted without the
  social features (``SOCIAL_FEATURES``), on exactly what a run with INTEREST_RANKER_FEATURES
  lacking them computes (each user's candidates that another feature put there, the social
  columns 0). Each social weight is then chosen in turn on top of that fixed ranking, from
  ``SOCIAL_SHARES`` of the other weights' total, by NDCG@10 on the earlier cut-offs' candidates
  with the social features' own (0 wins ties). The users with a history of their own and those
  with little (``SOCIAL_GROUPS``: their social features are different columns) get their own
  weights, and each group's choice is checked apart: one that ranks the held-out cut-offs worse
  beyond noise (95 % interval of the gain below 0) is dropped, else it is made again on every
  cut-off. The other weights are the fit without them whatever the graph says.
- **New visitors.** The list served to a user with no history is the recency-popularity order;
  its half-life is chosen from ``TRENDING_HALF_LIVES`` by NDCG@10 of the new users of the
  training cut-offs (users whose first event falls in ``[T, T + horizon)``).
- **Users with only follows** (no taste of their own, followees who engaged with something)
  get that order plus ``social_boost`` times the social signal. The boost is chosen from
  ``SOCIAL_BOOSTS`` by NDCG@10 of the training cut-offs' such users, and adopted only when
  its gain over 0 (the new-visitor list itself) has a 95 % interval above zero; it is written
  as ``weights["social_boost"]`` when the cut-offs had such users.
- **Too little history** (fewer than ``min_training_users`` examples): the defaults, saying so.

Every fit is a row of ``rankers`` (version, ``as_of`` = the interval end it was fitted at,
weights, training counts, validation, fallback and reason); the recommend stage uses the newest
row with ``as_of <=`` its interval end, so a backfill or a rerun of an hour uses the ranker that
was in force then, and every recommendation row names its ``ranker_version``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from interest_pipeline.bootstrap import paired_bootstrap
from interest_pipeline.warehouse import (
    database_path,
    fetch_one,
    query_arrow,
    table_exists,
    transaction,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    import duckdb
    import numpy as np

    from interest_pipeline.recommendations import ScoringConfig

log = logging.getLogger(__name__)

DEFAULT_VERSION = "default"
CANDIDATES_PER_FEATURE = 100
TRENDING_HALF_LIVES = (6.0, 24.0, 72.0, 168.0, 720.0)
# The weights of the social signal against trending tried for users with only follows
# (:func:`_social_boost`); 0 (the new-visitor list itself) wins ties.
SOCIAL_BOOSTS = (0.0, 0.03, 0.1, 0.3, 1.0, 3.0)
# The features the people a user follows make, per group of users: those with a history of
# their own, and those with little (``recommendations.FEW_OWN_EVENTS``). Their weights are
# chosen on top of the ranker fitted without them (:func:`_fit_social`), group by group.
SOCIAL_GROUPS = (("social", "social_taste"), ("social_few", "social_taste_few"))
SOCIAL_FEATURES = tuple(f for group in SOCIAL_GROUPS for f in group)
# A ranker row written before the groups had their own weights weighs the users with little
# history as everyone: their features take the weight of the feature they split from.
_SPLIT_FROM = {"social_few": "social", "social_taste_few": "social_taste"}
# The social features' weights tried, as shares of the other weights' total: from a tie-break
# among items the user's own side ranks alike to a signal as strong as all the others.
SOCIAL_SHARES = (0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
_L2 = 1e-3

RANKERS_DDL = """
create table if not exists rankers (
    ranker_version varchar not null,
    model_id varchar not null,
    as_of timestamp not null,            -- fitted at this interval end, on data known by then
    weights json not null,               -- feature -> weight
    trending_half_life_hours double not null,
    fallback boolean not null,           -- true: the documented defaults are in use
    reason varchar not null,
    training_cutoffs integer not null,
    training_users integer not null,
    validation json not null,            -- held-out NDCG@10 of the fitted and default weights
    fitted_at timestamp not null
);
"""


@dataclass(frozen=True)
class RankerSettings:
    """When and on what the ranker is fitted (env var, default).

    Attributes:
        every_hours: INTEREST_RANKER_EVERY_HOURS, fit at interval ends that are a multiple of
            this many hours after midnight UTC (24: daily at midnight).
        training_days: INTEREST_RANKER_TRAINING_DAYS, how far back the training cut-offs go.
        cutoff_every_hours: INTEREST_RANKER_CUTOFF_EVERY_HOURS, hours between training cut-offs.
        horizon_hours: INTEREST_EVAL_HORIZON_HOURS, what counts as a later engagement.
        users_per_cutoff: INTEREST_RANKER_USERS_PER_CUTOFF, the users sampled per cut-off.
        min_training_users: INTEREST_RANKER_MIN_USERS, fewer examples keep the defaults.
        validation_days: INTEREST_RANKER_VALIDATION_DAYS, the latest cut-offs held out.
        enabled: INTEREST_RANKER ("fitted" or "default": always the hand-set defaults).
        features: INTEREST_RANKER_FEATURES, the features the score may use (comma-separated;
            default all of ``recommendations.FEATURES``); the others weigh 0, fitted or not.
            An ablation knob: e.g. everything but ``social`` measures what the people a user
            follows add.
    """

    every_hours: int = 24
    training_days: float = 14.0
    cutoff_every_hours: float = 24.0
    horizon_hours: float = 24.0
    users_per_cutoff: int = 200
    min_training_users: int = 50
    validation_days: float = 3.0
    enabled: bool = True
    features: tuple[str, ...] | None = None


def ranker_settings() -> RankerSettings:
    """The ranker settings from the environment (defaults: :class:`RankerSettings`)."""
    env = os.environ.get
    d = RankerSettings()
    return RankerSettings(
        every_hours=int(env("INTEREST_RANKER_EVERY_HOURS", d.every_hours)),
        training_days=float(env("INTEREST_RANKER_TRAINING_DAYS", d.training_days)),
        cutoff_every_hours=float(
            env("INTEREST_RANKER_CUTOFF_EVERY_HOURS", d.cutoff_every_hours)
        ),
        horizon_hours=float(env("INTEREST_EVAL_HORIZON_HOURS", d.horizon_hours)),
        users_per_cutoff=int(env("INTEREST_RANKER_USERS_PER_CUTOFF", d.users_per_cutoff)),
        min_training_users=int(env("INTEREST_RANKER_MIN_USERS", d.min_training_users)),
        validation_days=float(env("INTEREST_RANKER_VALIDATION_DAYS", d.validation_days)),
        enabled=env("INTEREST_RANKER", "fitted") != "default",
        features=_features(env("INTEREST_RANKER_FEATURES")),
    )


def _features(value: str | None) -> tuple[str, ...] | None:
    """INTEREST_RANKER_FEATURES as a tuple of known feature names (None: all)."""
    from interest_pipeline.recommendations import FEATURES

    if not value:
        return None
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = sorted(set(names) - set(FEATURES))
    if unknown:
        raise ValueError(
            f"INTEREST_RANKER_FEATURES: unknown feature(s) {', '.join(unknown)}; "
            f"known: {', '.join(FEATURES)}"
        )
    return names


def feature_mask() -> np.ndarray:
    """1 for each feature of ``recommendations.FEATURES`` the score may use, else 0."""
    import numpy as np

    from interest_pipeline.recommendations import FEATURES

    allowed = ranker_settings().features
    return np.array([allowed is None or f in allowed for f in FEATURES], dtype=np.float64)


@dataclass(frozen=True)
class Ranker:
    """Weights of the score's features, and where they came from."""

    version: str
    weights: dict[str, float]
    trending_half_life_hours: float
    fallback: bool = True
    reason: str = "no ranker fitted yet: documented defaults"
    details: dict[str, Any] = field(default_factory=dict)

    def weight_vector(self) -> np.ndarray:
        """The weights in the order of ``recommendations.FEATURES``."""
        import numpy as np

        from interest_pipeline.recommendations import FEATURES

        weights = np.array(
            [self.weights.get(name, self.weights.get(_SPLIT_FROM.get(name, ""), 0.0))
             for name in FEATURES],
            dtype=np.float64,
        )
        return weights * feature_mask()

    def social_boost(self) -> float:
        """For a user with no taste of their own who follows people: the weight of the social
        signal added to the trending order (``weights["social_boost"]``, written by a fit that
        had such users to learn from; 0 before, or when ``social`` may not be used)."""
        from interest_pipeline.recommendations import FEATURES

        mask = feature_mask()[FEATURES.index("social")]
        return float(self.weights.get("social_boost", 0.0)) * float(mask)


def default_weights(config: ScoringConfig) -> dict[str, float]:
    """The documented default blend (``INTEREST_SCORE_*``, see ScoringConfig)."""
    return {
        "content": config.content_weight,
        "interests": config.interests_weight,
        "popularity": config.popularity_weight,
        "cooccurrence": config.cooccurrence_weight,
        "own_recency": 0.0,
        "new_item": 0.0,
        # Off until a fit adopts it: the data says how much the people one follows matter.
        **dict.fromkeys(SOCIAL_FEATURES, 0.0),
    }


def default_ranker(config: ScoringConfig) -> Ranker:
    """The ranker used before any fit, or when a fit had too little history."""
    return Ranker(DEFAULT_VERSION, default_weights(config), config.popularity_half_life_hours)


def ranker_in_force(
    con: duckdb.DuckDBPyConnection, model_id: str, as_of: datetime, config: ScoringConfig
) -> Ranker:
    """The newest ranker fitted by ``as_of`` for the model, else the defaults."""
    if not ranker_settings().enabled:
        return default_ranker(config)
    con.execute(RANKERS_DDL)
    row = fetch_one(
        con,
        """
        select ranker_version, weights, trending_half_life_hours, fallback, reason
        from rankers where model_id = ? and as_of <= ?
        order by as_of desc limit 1
        """,
        [model_id, as_of],
    )
    if row is None:
        return default_ranker(config)
    version, weights, half_life, fallback, reason = row
    return Ranker(version, json.loads(weights), half_life, fallback, reason)


def is_due(interval_end: datetime, settings: RankerSettings) -> bool:
    """Whether a fit is scheduled at this interval end (every ``every_hours`` from midnight)."""
    hours = interval_end.hour + interval_end.minute / 60
    return settings.enabled and hours % settings.every_hours == 0


# --------------------------------------------------------------------------------------------
# Training examples
# --------------------------------------------------------------------------------------------


@dataclass
class _Examples:
    """Candidates of every training user stacked: features (rows x F), labels, user segments."""

    x: list[np.ndarray] = field(default_factory=list)
    y: list[np.ndarray] = field(default_factory=list)
    cutoff: list[datetime] = field(default_factory=list)
    # Per user, which candidates a feature other than the social ones put there.
    core: list[np.ndarray] = field(default_factory=list)


@dataclass(frozen=True)
class _Cutoff:
    """What one training cut-off gives a fit: its users' candidates (features, labels, which
    of them are there without the social features), per trending half-life the summed NDCG@10
    of its new users (None: it had none), and per (trending half-life, social boost) each of
    its users with only follows' NDCG@10 (:func:`_follow_only_ndcg`; None: it had none)."""

    x: tuple[np.ndarray, ...]
    y: tuple[np.ndarray, ...]
    core: tuple[np.ndarray, ...]
    trending: dict[float, float] | None
    follow_only: dict[tuple[float, float], np.ndarray] | None


# (parameters, data key) -> _Cutoff, least recently used first (see _cutoff and _data_key).
# A daily fit over ``training_days`` of cut-offs would recompute all but one of the previous
# day's: memoized, each is computed once per process (an offline evaluation runs every day's
# fit in one). An entry is users x candidates x features doubles, ~26 KB a user on a retail
# shop (~400 candidates): under 1 MB at its ~35 users, ~5 MB at users_per_cutoff = 200; 64
# entries hold the default fortnight of cut-offs for a few configurations (ablations).
_CUTOFF_CACHE: OrderedDict[tuple, _Cutoff] = OrderedDict()
_CUTOFF_CACHE_SIZE = 64


def _sample(users: list[str], n: int) -> list[str]:
    """A deterministic sample of ``n`` users (by hashed id, so it does not favour an id range)."""
    keyed = sorted(users, key=lambda u: hashlib.sha256(u.encode()).hexdigest())
    return sorted(keyed[:n])


def _known_vectors(
    con: duckdb.DuckDBPyConnection, model_id: str, as_of: datetime, users: list[str]
) -> Any:
    """(user_id, vector) of each user's newest version with ``as_of <=`` T, ordered by user."""
    import pyarrow as pa

    con.register("_rank_users", pa.table({"user_id": pa.array(users, pa.string())}))
    try:
        return query_arrow(
            con,
            """
            select user_id, arg_max(vector, as_of) as vector
            from user_interest_vectors
            where model_id = ? and as_of <= ?
                and user_id in (select user_id from _rank_users)
            group by user_id
            order by user_id
            """,
            [model_id, as_of],
        )
    finally:
        con.unregister("_rank_users")


@dataclass(frozen=True)
class _Scope:
    """What scoring users at a training cut-off reads besides the warehouse."""

    model_id: str
    settings: RankerSettings
    half_life_hours: float
    evidence_events: int
    config: ScoringConfig

    def context(
        self,
        con: duckdb.DuckDBPyConnection,
        users: list[str],
        cutoff: datetime,
        trending_half_lives: Sequence[float] = (),
    ) -> Any:
        """The recommend stage's scoring context for ``users`` as of ``cutoff``."""
        from interest_pipeline.recommendations import _Context

        return _Context(
            con, self.model_id, users, cutoff - timedelta(hours=1), cutoff,
            self.half_life_hours, self.evidence_events, self.config, trending_half_lives,
        )


def _cutoff_examples(
    con: duckdb.DuckDBPyConnection,
    scope: _Scope,
    cutoff: datetime,
    relevant: dict[str, set[str]],
    examples: _Examples,
) -> int:
    """Add the training users of one cut-off (``relevant``: their later items) to
    ``examples``; returns how many."""
    import numpy as np

    from interest_pipeline.recommendations import FEATURES
    from interest_pipeline.warehouse import vectors_to_numpy

    if not relevant:
        return 0
    per_cutoff = scope.settings.users_per_cutoff
    vectors = _known_vectors(
        con, scope.model_id, cutoff, _sample(sorted(relevant), per_cutoff * 2)
    )
    users = vectors.column("user_id").to_pylist()[:per_cutoff]
    if not users:
        return 0
    vectors = vectors.slice(0, len(users))
    ctx = scope.context(con, users, cutoff)
    if not len(ctx.item_ids):
        return 0
    cosines = vectors_to_numpy(vectors.column("vector")) @ ctx.item_vecs.T
    interests = ctx.interests(users)
    ranked = [k for k, name in enumerate(FEATURES) if name != "new_item"]
    added = 0
    for i, user in enumerate(users):
        if not ctx.has_taste(user):
            continue
        # A feature the score may not use cannot be fitted either.
        feats = ctx.features(user, cosines[i], interests[i]) * feature_mask()[:, None]
        allowed = np.zeros(len(ctx.item_ids))
        ctx.mask(user, allowed, cosines[i])
        ok = np.isfinite(allowed)
        candidates: set[int] = set()
        core: set[int] = set()  # candidates of the features other than the social ones
        new = feats[FEATURES.index("new_item")] > 0
        for k, score in [*((k, feats[k]) for k in ranked), (-1, np.where(new, feats[1], -np.inf))]:
            # New items compete on their text: the last list is the best of them by the
            # several-interests term.
            score = np.where(ok, score, -np.inf)
            m = min(CANDIDATES_PER_FEATURE, len(score) - 1)
            top = np.argpartition(-score, m)[: m + 1] if m > 0 else np.arange(len(score))
            found = {int(j) for j in top if np.isfinite(score[j]) and score[j] > 0}
            candidates |= found
            if k < 0 or FEATURES[k] not in SOCIAL_FEATURES:
                core |= found
        cand = np.array(sorted(candidates), dtype=np.int64)
        if not len(cand):
            continue
        positive = np.array(
            [ctx.item_ids[j] in relevant[user] for j in cand], dtype=np.float64
        )
        if not positive.any():
            continue
        examples.x.append(feats[:, cand].T.copy())
        examples.y.append(positive)
        examples.cutoff.append(cutoff)
        examples.core.append(np.isin(cand, np.array(sorted(core), dtype=np.int64)))
        added += 1
    return added


def _follow_only_ndcg(
    con: duckdb.DuckDBPyConnection, scope: _Scope, cutoff: datetime, relevant: dict[str, set[str]]
) -> dict[tuple[float, float], np.ndarray] | None:
    """Per (trending half-life, social boost) of :data:`TRENDING_HALF_LIVES` x
    :data:`SOCIAL_BOOSTS`, the NDCG@10 of each user of the cut-off who has no taste of their
    own but follows people who engaged with something (a deterministic sample of at most
    ``users_per_cutoff``), ranked as the recommend stage ranks them
    (:meth:`interest_pipeline.recommendations._Context.follow_only_row`); None when the
    cut-off has no such user."""
    import numpy as np

    from interest_pipeline.evaluation import ndcg_at_k
    from interest_pipeline.recommendations import FEATURES, _top

    if not relevant or not feature_mask()[FEATURES.index("social")]:
        return None
    with_vector = set(
        _known_vectors(con, scope.model_id, cutoff, sorted(relevant))
        .column("user_id").to_pylist()
    )
    users = sorted(set(relevant) - with_vector)
    if not users or not _anyone_follows(con, users, cutoff - timedelta(hours=1)):
        return None  # no one to rank: spare the scoring context (most of a fit's time)
    ctx = scope.context(con, users, cutoff, TRENDING_HALF_LIVES)
    users = _sample(
        [user for user in users if ctx.follows_only(user)], scope.settings.users_per_cutoff
    )
    if not users or not len(ctx.item_ids):
        return None
    out = {}
    for half_life in TRENDING_HALF_LIVES:
        for boost in SOCIAL_BOOSTS:
            values = []
            for user in users:
                row = ctx.follow_only_row(user, half_life, boost)
                top = _top(row, 10)
                ranked = ctx.item_ids[top[np.isfinite(row[top])]].tolist()
                values.append(ndcg_at_k(ranked, relevant[user], 10))
            out[(half_life, boost)] = np.array(values)
    return out


def _anyone_follows(
    con: duckdb.DuckDBPyConnection, users: list[str], interval_start: datetime
) -> bool:
    """True when one of ``users`` follows someone in the graph known at the interval."""
    from interest_pipeline.social import follows_sql

    rows = con.execute(
        f"select count(*) from ({follows_sql('user_id in (select unnest($users))')})",
        {"interval_start": interval_start, "users": users},
    ).fetchall()
    return rows[0][0] > 0


def _data_key(
    con: duckdb.DuckDBPyConnection, model_id: str, cutoff: datetime, horizon_hours: float
) -> tuple | None:
    """A cheap fingerprint of the warehouse rows a cut-off's examples and trending sums are
    read from (None: an in-memory database, which has no identity to key on).

    The rule of ``catalogue_stats._valid_state``: row counts. Everything the cut-off reads is
    an interaction with ``interval_start < T + horizon`` (the relevant items; the scoring
    context and statistics at T read less), a vector version with ``as_of <= T``, the
    catalogue and the model's embeddings. Processed in order, hours only append rows to later
    intervals (and versions at later ``as_of``), so a count below the bound is final once its
    hour is done, and a changed count (a late row, an erasure, an hour rebuilt with more or
    fewer rows) is a miss, never a stale entry. ``<``, not ``<=``: the rows of the hour at
    ``T + horizon`` land after a fit at that time and are never read for T. The catalogue,
    small and edited in place, is hashed rather than counted. What the rule misses: a rewrite
    below the bound that keeps every count (an hour rebuilt with as many but different rows,
    vectors refolded with another half-life, a warehouse file replaced by another with the same
    counts) would be served the old examples; clear ``_CUTOFF_CACHE`` after such a rewrite.
    """
    end = cutoff + timedelta(hours=horizon_hours)
    path = database_path(con)
    if path is None:
        return None
    params = {"end": end, "cutoff": cutoff, "model_id": model_id}
    counts = con.execute(
        """
        select
            (select count(*) from user_item_interactions where interval_start < $end),
            (select count(*) from user_interest_vectors
                where model_id = $model_id and as_of <= $cutoff),
            (select count(*) from item_documents),
            (select sum(hash(item_id, text_hash)) from item_documents),
            (select count(*) from text_embeddings where model_id = $model_id)
        """,
        params,
    ).fetchall()[0]
    social = (
        con.execute(
            "select count(*) from user_social_vectors "
            "where model_id = $model_id and as_of <= $cutoff",
            {"cutoff": cutoff, "model_id": model_id},
        ).fetchall()[0][0]
        if table_exists(con, "user_social_vectors")
        else None
    )
    return (path, *counts, social)


def _cutoff(
    con: duckdb.DuckDBPyConnection,
    model_id: str,
    cutoff: datetime,
    settings: RankerSettings,
    half_life_hours: float,
    evidence_events: int,
    config: ScoringConfig,
) -> _Cutoff:
    """One cut-off's examples and trending sums, from the memo when the parameters and the
    data key (:func:`_data_key`) match an earlier computation in this process."""
    from interest_pipeline.catalogue_stats import popularity_epoch
    from interest_pipeline.evaluation import relevant_items

    data = _data_key(con, model_id, cutoff, settings.horizon_hours)
    # Everything the computation reads besides the warehouse: the settings it uses, the
    # environment (INTEREST_RANKER_FEATURES via feature_mask, the popularity epoch) and the
    # module's constants.
    key = (
        cutoff, model_id, settings.users_per_cutoff, settings.horizon_hours, half_life_hours,
        evidence_events, config, tuple(feature_mask().tolist()), popularity_epoch(),
        CANDIDATES_PER_FEATURE, TRENDING_HALF_LIVES, SOCIAL_BOOSTS, SOCIAL_FEATURES, data,
    )
    hit = _CUTOFF_CACHE.get(key) if data is not None else None
    if hit is not None:
        _CUTOFF_CACHE.move_to_end(key)
        return hit
    relevant = relevant_items(con, cutoff, settings.horizon_hours)
    examples = _Examples()
    scope = _Scope(model_id, settings, half_life_hours, evidence_events, config)
    _cutoff_examples(con, scope, cutoff, relevant, examples)
    follow_only = _follow_only_ndcg(con, scope, cutoff, relevant)
    for array in (*examples.x, *examples.y, *examples.core, *(follow_only or {}).values()):
        array.flags.writeable = False  # shared by every later fit that reuses the entry
    entry = _Cutoff(
        tuple(examples.x), tuple(examples.y), tuple(examples.core),
        _trending_sums(con, cutoff, relevant), follow_only,
    )
    if data is not None:
        _CUTOFF_CACHE[key] = entry
        while len(_CUTOFF_CACHE) > _CUTOFF_CACHE_SIZE:
            _CUTOFF_CACHE.popitem(last=False)
    return entry


# --------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------


def fit_listwise(xs: list[np.ndarray], ys: list[np.ndarray], l2: float = _L2) -> np.ndarray:
    """Weights minimising the mean over users of the softmax cross-entropy of their relevant
    candidates, ``-mean_{j in R} s_j + logsumexp_j s_j`` with ``s = X w``, plus ``l2 |w|^2``."""
    import numpy as np
    from scipy.optimize import minimize

    x = np.vstack(xs)
    y = np.concatenate(ys)
    sizes = np.array([len(v) for v in ys])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    seg = np.repeat(np.arange(len(ys)), sizes)
    pos_share = y / np.add.reduceat(y, starts)[seg]  # 1/|R| on relevant rows
    n_users = len(ys)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = x @ w
        top = np.maximum.reduceat(s, starts)
        e = np.exp(s - top[seg])
        z = np.add.reduceat(e, starts)
        p = e / z[seg]
        value = (-(pos_share * s).sum() + (top + np.log(z)).sum()) / n_users + l2 * w @ w
        grad = x.T @ (p - pos_share) / n_users + 2 * l2 * w
        return float(value), grad

    result = minimize(loss, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B")
    return result.x


def coordinate_ascent(
    w0: np.ndarray,
    xs: list[np.ndarray],
    ys: list[np.ndarray],
    passes: int = 2,
    min_gain: float = 0.002,
) -> np.ndarray:
    """Refine weights for NDCG@10 on the candidates directly (RankLib's coordinate ascent):
    each weight in turn is moved along a grid of steps, keeping a move only if it raises the
    metric; deterministic. The softmax fit is smooth but aims at likelihood, not the top
    of the list; this aims at what is reported."""
    import numpy as np

    stacked = _Stacked(xs, ys)
    w = w0 / max(np.abs(w0).sum(), 1e-12)
    best = stacked.ndcg(w)
    steps = (-0.25, -0.1, -0.05, 0.05, 0.1, 0.25)
    for _ in range(passes):
        improved = False
        for k in range(len(w)):
            for step in steps:
                trial = w.copy()
                trial[k] += step
                score = stacked.ndcg(trial)
                # A move must be worth more than noise: with a few hundred training users a
                # gain below this is as likely luck as signal.
                if score > best + min_gain:
                    w, best, improved = trial, score, True
        if not improved:
            break
    return w / max(np.abs(w).sum(), 1e-12)


def fit_weights(
    xs: list[np.ndarray], ys: list[np.ndarray], w_default: np.ndarray
) -> np.ndarray:
    """The listwise softmax fit or the defaults, whichever ranks the training candidates
    better, refined by coordinate ascent on NDCG@10."""
    w_soft = fit_listwise(xs, ys)
    stacked = _Stacked(xs, ys)
    start = max((w_soft, w_default), key=stacked.ndcg)
    return coordinate_ascent(start, xs, ys)


class _Stacked:
    """Every user's candidates in one padded matrix (users x most candidates), for NDCG@k of
    many weight vectors at once."""

    def __init__(self, xs: list[np.ndarray], ys: list[np.ndarray], k: int = 10) -> None:
        import numpy as np

        self.k = k
        self.x = np.vstack(xs)
        y = np.concatenate(ys)
        sizes = np.array([len(v) for v in ys])
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        # Row u holds user u's candidates in their order, then padding (-1).
        width = int(sizes.max(initial=0))
        self.valid = np.arange(width)[None, :] < sizes[:, None]
        self.index = np.where(self.valid, starts[:, None] + np.arange(width)[None, :], -1)
        self.y = np.where(self.valid, y[self.index], 0.0)
        discounts = 1.0 / np.log2(np.arange(2, k + 2))
        n_rel = np.minimum(np.add.reduceat(y, starts).astype(int), k)
        self.ideal = np.cumsum(discounts)[n_rel - 1]
        self.discounts = discounts
        self.n_users = len(ys)

    def ndcg(self, w: np.ndarray) -> float:
        return float(self.per_user(w).mean())

    def per_user(self, w: np.ndarray) -> np.ndarray:
        """Each user's NDCG@k under the weights ``w``."""
        import numpy as np

        scores = np.full(self.index.shape, -np.inf)
        scores[self.valid] = (self.x @ w)[self.index[self.valid]]
        # Score descending, ties in candidate order (a stable sort); padding sorts last.
        order = np.argsort(-scores, axis=1, kind="stable")[:, : self.k]
        relevant = np.take_along_axis(self.y, order, axis=1)
        gains = np.zeros(self.n_users)
        for rank in range(order.shape[1]):  # rank by rank: the sums of a user-by-user loop
            gains += relevant[:, rank] * self.discounts[rank]
        return gains / self.ideal


def ndcg_on_candidates(
    w: np.ndarray, xs: list[np.ndarray], ys: list[np.ndarray], k: int = 10
) -> float:
    """Mean NDCG@k of ranking each user's candidates by ``X w`` (ties by candidate order)."""
    return _Stacked(xs, ys, k).ndcg(w) if xs else 0.0


def _trending_sums(
    con: duckdb.DuckDBPyConnection, cutoff: datetime, relevant: dict[str, set[str]]
) -> dict[float, float] | None:
    """Per trending half-life, the summed NDCG@10 of the popularity order for the new users
    of a cut-off (``relevant``: its users and their later items); None when it has none."""
    from interest_pipeline.evaluation import _known_users, ndcg_at_k

    known = _known_users(con, cutoff)
    new = {u: r for u, r in relevant.items() if u not in known}
    if not new:
        return None
    orders = trending_orders(con, cutoff, TRENDING_HALF_LIVES, 10)
    return {
        half_life: sum(ndcg_at_k([item for item, _ in orders[half_life]], r, 10)
                       for r in new.values())
        for half_life in TRENDING_HALF_LIVES
    }


def _trending_half_life(
    sums_at: dict[datetime, dict[float, float] | None],
) -> tuple[float, dict[str, float]]:
    """The popularity half-life whose order best serves the new users of the cut-offs
    (``sums_at``: each cut-off's :func:`_trending_sums`)."""
    totals = dict.fromkeys(TRENDING_HALF_LIVES, 0.0)
    # Added cut-off by cut-off in time order, each cut-off's own sum first: the same floats
    # whether the sums were computed now or memoized.
    for sums in sums_at.values():
        if sums is None:
            continue
        for half_life in TRENDING_HALF_LIVES:
            totals[half_life] += sums[half_life]
    best = max(TRENDING_HALF_LIVES, key=lambda h: (totals[h], -h))
    return best, {f"{h:g}": round(v, 4) for h, v in totals.items()}


def trending_order(
    con: duckdb.DuckDBPyConnection, as_of: datetime, half_life_hours: float, n: int
) -> list[tuple[str, float]]:
    """The ``n`` catalogue items with the highest recency-popularity at ``as_of`` (users who
    engaged positively, each decayed by the age of their latest such event), with it, ties by
    item id."""
    return trending_orders(con, as_of, (half_life_hours,), n)[half_life_hours]


def trending_orders(
    con: duckdb.DuckDBPyConnection, as_of: datetime, half_lives: Sequence[float], n: int
) -> dict[float, list[tuple[str, float]]]:
    """:func:`trending_order` for several half-lives from one read of the statistics
    (:mod:`interest_pipeline.catalogue_stats`; ``as_of`` ends an hourly interval)."""
    import numpy as np

    from interest_pipeline.catalogue_stats import catalogue_stats

    items = [r[0] for r in con.execute("select item_id from item_documents order by 1").fetchall()]
    stats = catalogue_stats(
        con, items, as_of - timedelta(hours=1), half_lives, cooccurrence=False
    )
    out = {}
    for half_life in half_lives:
        popularity = stats.popularity[float(half_life)]
        # Items are in id order, so a stable sort on -popularity breaks ties by item id.
        order = [j for j in np.argsort(-popularity, kind="stable") if stats.engaged[j]][:n]
        out[half_life] = [(items[j], float(popularity[j])) for j in order]
    return out


def _split(examples: _Examples, split: datetime) -> tuple[_Examples, _Examples]:
    """The examples of cut-offs up to ``split`` (training) and after it (held out)."""
    parts = (_Examples(), _Examples())
    for x, y, core, cutoff in zip(
        examples.x, examples.y, examples.core, examples.cutoff, strict=True
    ):
        part = parts[cutoff > split]
        part.x.append(x)
        part.y.append(y)
        part.core.append(core)
        part.cutoff.append(cutoff)
    return parts


def _has_social(examples: _Examples) -> bool:
    """Whether any training candidate has a social feature (never on data without follows)."""
    from interest_pipeline.recommendations import FEATURES

    cols = [FEATURES.index(f) for f in SOCIAL_FEATURES]
    return any(x[:, cols].any() for x in examples.x)


def _without_social(examples: _Examples) -> _Examples:
    """The examples a run without the social features computes: each user's candidates that
    another feature put there, the social columns 0, users left with no relevant candidate
    dropped (as :func:`_cutoff_examples` drops them)."""
    from interest_pipeline.recommendations import FEATURES

    cols = [FEATURES.index(f) for f in SOCIAL_FEATURES]
    out = _Examples()
    for x, y, core, cutoff in zip(
        examples.x, examples.y, examples.core, examples.cutoff, strict=True
    ):
        if not y[core].any():
            continue
        kept = x[core]  # a copy (boolean indexing)
        kept[:, cols] = 0.0
        out.x.append(kept)
        out.y.append(y[core])
        out.core.append(core[core])
        out.cutoff.append(cutoff)
    return out


def _fit_social(
    examples: _Examples, w_core: np.ndarray, names: Sequence[str]
) -> tuple[np.ndarray, dict[str, float]]:
    """The core weights plus, for each social feature of ``names`` in turn, the share of
    :data:`SOCIAL_SHARES` (times the core weights' total) whose ranking of the candidates has
    the best mean NDCG@10 (0 wins ties). One weight at a time on top of a fixed ranking: a
    one-dimensional choice from thousands of users generalises, where a joint fit of every
    weight chased noise (it cost Gowalla 0.002 NDCG@10 out of sample). Returns (weights,
    the shares)."""
    import numpy as np

    from interest_pipeline.recommendations import FEATURES

    stacked = _Stacked(examples.x, examples.y)
    scale = float(np.abs(w_core).sum()) or 1.0
    w = w_core.copy()
    shares: dict[str, float] = {}
    for name in names:
        k = FEATURES.index(name)
        scores = []
        for share in SOCIAL_SHARES:
            trial = w.copy()
            trial[k] = share * scale
            scores.append(round(stacked.ndcg(trial), 12))
        best = SOCIAL_SHARES[scores.index(max(scores))]  # the first (smallest) on ties
        w[k] = best * scale
        shares[name] = best
    return w, shares


def _social_group(
    train: _Examples, held: _Examples, examples: _Examples, w_core: np.ndarray,
    names: Sequence[str],
) -> tuple[np.ndarray, dict[str, Any]]:
    """One group's social weights (:func:`_fit_social`) on top of ``w_core``: chosen on
    ``train``, left at 0 when that choice ranks ``held`` worse beyond noise (95 % interval of
    the NDCG@10 gain below 0), else chosen again on all ``examples``. Returns (weights,
    details)."""
    w_train, shares = _fit_social(train, w_core, names)
    details: dict[str, Any] = {"train_shares": shares}
    if any(shares.values()):
        held_out = _Stacked(held.x, held.y)
        gain = paired_bootstrap(held_out.per_user(w_train), held_out.per_user(w_core))
        details["held_out_gain_95ci"] = [round(gain["lo"], 4), round(gain["hi"], 4)]
        if gain["hi"] < 0:
            return w_core, {**details, "kept": False, "reason": "worse on the held-out cut-offs"}
    w_all, shares = _fit_social(examples, w_core, names)
    return w_all, {**details, "kept": any(shares.values()), "shares": shares}


def _social_side(
    examples: _Examples, weights: dict[str, float], split: datetime
) -> tuple[dict[str, float], dict[str, Any]]:
    """``weights`` (the ranker fitted without the social features) with each group's social
    features' weights added by :func:`_social_group`, the cut-offs up to ``split`` training
    the choice and the later ones checking it. The groups' users are apart (a user's social
    features are one group's columns), so each group's choice moves only its own users'
    rankings. Returns (weights, details: per group, by its first feature, and ``kept``)."""
    import numpy as np

    from interest_pipeline.recommendations import FEATURES

    w_core = np.array([weights.get(f, 0.0) for f in FEATURES])
    train, held = _split(examples, split)
    if not (train.y and held.y):
        return weights, {"kept": False, "reason": "no held-out cut-off"}
    social: dict[str, float] = {}
    details: dict[str, Any] = {}
    for names in SOCIAL_GROUPS:
        w, details[names[0]] = _social_group(train, held, examples, w_core, names)
        social |= {f: round(float(w[FEATURES.index(f)]), 6) for f in names}
    details["kept"] = any(group["kept"] for group in details.values())
    return {**weights, **social}, details


def _social_boost(
    parts: list[dict[tuple[float, float], np.ndarray]], trending: float
) -> tuple[float, dict[str, Any]]:
    """The social boost for users with only follows: of :data:`SOCIAL_BOOSTS`, the one whose
    lists (the trending order with the chosen half-life plus boost x social) have the best
    mean NDCG@10 over the training cut-offs' such users, adopted only when its gain over 0
    (the new-visitor list) has a 95 % interval above 0; else 0. Returns (boost, details)."""
    import numpy as np

    ndcg = {
        boost: np.concatenate([part[(trending, boost)] for part in parts])
        for boost in SOCIAL_BOOSTS
    }
    best = max(SOCIAL_BOOSTS, key=lambda b: (round(float(ndcg[b].mean()), 12), -b))
    details: dict[str, Any] = {
        "users": len(ndcg[0.0]),
        "ndcg@10": {f"{b:g}": round(float(v.mean()), 4) for b, v in ndcg.items()},
    }
    if best == 0.0:
        return 0.0, details
    gain = paired_bootstrap(ndcg[best], ndcg[0.0])
    details["gain_95ci"] = [round(gain["lo"], 4), round(gain["hi"], 4)]
    return (best if gain["lo"] > 0 else 0.0), details


def train_ranker(
    con: duckdb.DuckDBPyConnection,
    model_id: str,
    interval_end: datetime,
    half_life_hours: float,
    evidence_events: int,
    config: ScoringConfig,
    settings: RankerSettings | None = None,
) -> dict[str, Any]:
    """Fit the ranker on the history known at ``interval_end`` and store it as of then
    (replacing an earlier fit at the same time). Returns a summary for XCom."""
    import numpy as np

    from interest_pipeline.recommendations import FEATURES

    s = settings or ranker_settings()
    con.execute(RANKERS_DDL)
    step = timedelta(hours=s.cutoff_every_hours)
    last = interval_end - timedelta(hours=s.horizon_hours)
    first_allowed = last - timedelta(days=s.training_days)
    ((first_event,),) = con.execute(
        "select min(interval_start) from user_item_interactions"
    ).fetchall()
    cutoffs: list[datetime] = []
    t = last
    while t > first_allowed and first_event is not None and t > first_event:
        cutoffs.append(t)
        t -= step
    cutoffs.reverse()
    examples = _Examples()
    trending_at: dict[datetime, dict[float, float] | None] = {}
    follow_only: list[dict[tuple[float, float], np.ndarray]] = []
    for cutoff in cutoffs:
        part = _cutoff(con, model_id, cutoff, s, half_life_hours, evidence_events, config)
        examples.x.extend(part.x)
        examples.y.extend(part.y)
        examples.core.extend(part.core)
        examples.cutoff.extend([cutoff] * len(part.y))
        trending_at[cutoff] = part.trending
        if part.follow_only is not None:
            follow_only.append(part.follow_only)
    defaults = default_weights(config)
    w_default = np.array([defaults[f] for f in FEATURES])
    trending, trending_scores = (
        _trending_half_life(trending_at) if cutoffs else (
            config.popularity_half_life_hours, {}
        )
    )
    validation: dict[str, Any] = {}
    split = last - timedelta(days=s.validation_days)
    # The ranker is first fitted without the social features, on exactly what a run without
    # them (INTEREST_RANKER_FEATURES lacking them) sees; their weights are then chosen on top
    # of it (_social_side), so the graph cannot move the other weights.
    with_social = None
    if _has_social(examples):
        with_social, examples = examples, _without_social(examples)
    n_users = len(examples.y)
    if n_users < s.min_training_users:
        weights, fallback = defaults, True
        reason = (
            f"too little history: {n_users} training users at {len(cutoffs)} cut-offs "
            f"(< {s.min_training_users}): documented defaults"
        )
    else:
        train, held = _split(examples, split)
        fitted_ok = False
        reason = "no held-out cut-off to validate a fit on: documented defaults"
        if train.y and held.y:
            w_train = fit_weights(train.x, train.y, w_default)
            held_out = _Stacked(held.x, held.y)
            fitted_h, default_h = held_out.per_user(w_train), held_out.per_user(w_default)
            gain = paired_bootstrap(fitted_h, default_h)
            validation.update({
                "held_out_users": len(held.y),
                "fitted_ndcg@10": round(float(fitted_h.mean()), 4),
                "default_ndcg@10": round(float(default_h.mean()), 4),
                "gain_95ci": [round(gain["lo"], 4), round(gain["hi"], 4)],
            })
            # Adopted only when the held-out gain is told from noise: a fit on a few hundred
            # users that wins by luck would otherwise replace defaults that were fine.
            fitted_ok = gain["lo"] > 0
            reason = (
                "fitted weights did not beat the defaults on the held-out cut-offs beyond "
                "noise (95 % interval of the NDCG@10 gain includes 0): documented defaults"
            )
        if fitted_ok:
            w = fit_weights(examples.x, examples.y, w_default)
            weights = {f: round(float(v), 6) for f, v in zip(FEATURES, w, strict=True)}
            fallback, reason = False, f"fitted on {n_users} users at {len(cutoffs)} cut-offs"
        else:
            weights, fallback = defaults, True
    if with_social is not None and n_users >= s.min_training_users:
        weights, validation["social"] = _social_side(with_social, weights, split)
        if validation["social"]["kept"]:
            reason += "; social weights chosen on top: " + ", ".join(
                f"{f} {weights[f]:g}" for f in SOCIAL_FEATURES
            )
    if follow_only:
        boost, validation["social_boost"] = _social_boost(follow_only, trending)
        weights = {**weights, "social_boost": boost}
    validation["trending_ndcg@10_sum"] = trending_scores
    payload = json.dumps(weights, sort_keys=True)
    digest = hashlib.sha256(f"{payload}|{trending}".encode()).hexdigest()[:8]
    version = f"{interval_end:%Y%m%dT%H%M}-{digest}"
    from datetime import UTC

    with transaction(con):
        con.execute(
            "delete from rankers where model_id = ? and as_of = ?", [model_id, interval_end]
        )
        con.execute(
            "insert into rankers values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                version, model_id, interval_end, payload, trending, fallback, reason,
                len(cutoffs), n_users, json.dumps(validation, sort_keys=True),
                datetime.now(UTC).replace(tzinfo=None),
            ],
        )
    log.info("ranker %s: %s; weights %s", version, reason, payload)
    return {
        "ranker_version": version,
        "ranker_fallback": fallback,
        "ranker_training_users": n_users,
    }
