"""3b. Users x items for top-N: exact blocked matrix multiply against approximate indexes
(faiss IVF-Flat, faiss HNSW; usearch if installed), with recall@10 against exact, up to 1M items.

Items are the real catalogue embeddings (the seed's item documents) replicated with Gaussian
noise (cosine to their original about 0.85) to reach the size; users are unit means of five
random items plus noise, as interest vectors are decayed sums of what users engaged with.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import WORK_DIR, Section, build_seed, section_main, timed  # noqa: E402

K = 10
USERS = 1000
USER_BLOCK = 1024
ITEM_BLOCK = 131_072


def _unit(x: Any) -> Any:
    import numpy as np

    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def catalogue(base: Any, n: int, rng: Any) -> Any:
    import numpy as np

    out = np.empty((n, base.shape[1]), dtype=np.float32)
    for lo in range(0, n, 200_000):
        hi = min(n, lo + 200_000)
        rows = base[np.arange(lo, hi) % len(base)]
        out[lo:hi] = _unit(rows + rng.standard_normal(rows.shape, dtype=np.float32) * 0.03)
    return out


def exact_top_k(users: Any, items: Any, k: int = K) -> Any:
    """Top-k item indices per user: blocked matmul, merging per item block (bounded memory)."""
    import numpy as np

    out = np.empty((len(users), k), dtype=np.int64)
    for u0 in range(0, len(users), USER_BLOCK):
        block = users[u0 : u0 + USER_BLOCK]
        best_s = np.full((len(block), k), -np.inf, dtype=np.float32)
        best_i = np.zeros((len(block), k), dtype=np.int64)
        for i0 in range(0, len(items), ITEM_BLOCK):
            scores = block @ items[i0 : i0 + ITEM_BLOCK].T
            kk = min(k, scores.shape[1])
            idx = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
            s = np.take_along_axis(scores, idx, axis=1)
            cand_s = np.concatenate([best_s, s], axis=1)
            cand_i = np.concatenate([best_i, idx + i0], axis=1)
            top = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
            best_s = np.take_along_axis(cand_s, top, axis=1)
            best_i = np.take_along_axis(cand_i, top, axis=1)
        out[u0 : u0 + len(block)] = best_i
    return out


def recall(approx: Any, exact: Any) -> float:
    hits = sum(len(set(a) & set(e)) for a, e in zip(approx.tolist(), exact.tolist(), strict=True))
    return hits / exact.size


def _indexes(n: int) -> dict[str, Any]:
    """name -> (build(items) -> index, search(index, users) -> ids); only what is installed."""
    out: dict[str, Any] = {}
    try:
        import faiss
    except ImportError as exc:
        out["faiss"] = f"not available: {exc}"
        faiss = None
    if faiss is not None:
        # Few lists and a short k-means keep the build within the suite's time budget.
        nlist = int(min(1024, max(64, 4 * n**0.5)))
        nprobe = max(8, nlist // 16)

        def build_ivf(items: Any) -> Any:
            quantizer = faiss.IndexFlatIP(items.shape[1])
            index = faiss.IndexIVFFlat(quantizer, items.shape[1], nlist,
                                       faiss.METRIC_INNER_PRODUCT)
            rng = __import__("numpy").random.default_rng(1)
            train = items[rng.choice(len(items), min(len(items), 39 * nlist), replace=False)]
            index.cp.niter = 10
            index.train(train)
            index.add(items)
            index.nprobe = nprobe
            return index

        out[f"faiss IVF-Flat (nlist {nlist}, nprobe {nprobe})"] = (
            build_ivf, lambda index, users: index.search(users, K)[1])
        if n <= 10_000:  # graph builds take minutes beyond this on two cores
            def build_hnsw(items: Any) -> Any:
                index = faiss.IndexHNSWFlat(items.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
                index.hnsw.efConstruction = 80
                index.add(items)
                index.hnsw.efSearch = 128
                return index

            out["faiss HNSW (M 32, ef 128)"] = (
                build_hnsw, lambda index, users: index.search(users, K)[1])
    try:
        from usearch.index import Index

        def build_usearch(items: Any) -> Any:
            import numpy as np

            index = Index(ndim=items.shape[1], metric="ip", dtype="f32")
            index.add(np.arange(len(items)), items)
            return index

        out["usearch HNSW"] = (build_usearch, lambda index, users: index.search(users, K).keys)
    except ImportError as exc:
        out["usearch"] = f"not available: {exc}"
    return out


def run(args: Any) -> Section:
    import numpy as np

    from interest_pipeline.warehouse import open_warehouse, query_arrow, vectors_to_numpy

    section = Section("top-N: exact vs approximate")
    seed = build_seed(WORK_DIR)
    with open_warehouse(seed / "warehouse.duckdb", read_only=True) as con:
        base = vectors_to_numpy(query_arrow(
            con, "select embedding from text_embeddings order by text_hash").column("embedding"))
    rng = np.random.default_rng(0)
    pick = rng.integers(0, len(base), size=(USERS, 5))
    users = _unit(base[pick].mean(axis=1) + rng.standard_normal((USERS, base.shape[1]),
                                                                dtype=np.float32) * 0.02)
    sizes = (10_000, 100_000) if args.quick else (10_000, 100_000, 1_000_000)
    curve: dict[int, dict[str, Any]] = {}
    for n in sizes:
        items = catalogue(base, n, rng)
        exact_seconds, exact = timed(exact_top_k, users, items)
        entry: dict[str, Any] = {"exact_seconds": exact_seconds,
                                 "exact_users_per_s": USERS / exact_seconds}
        for name, spec in _indexes(n).items():
            if isinstance(spec, str):
                entry[name] = spec
                continue
            build, search = spec
            build_seconds, index = timed(build, items)
            search(index, users[:16])
            started = time.perf_counter()
            approx = np.asarray(search(index, users))
            search_seconds = time.perf_counter() - started
            entry[name] = {
                "build_seconds": build_seconds,
                "search_seconds": search_seconds,
                "users_per_s": USERS / search_seconds,
                "recall_at_10": recall(approx, exact),
            }
            del index
        curve[n] = entry
        print(f"top-n {n}: {entry}", flush=True)
        for name, result in entry.items():
            if not isinstance(result, dict):
                continue
            section.add(
                f"{n:,} items, {name}: users/s", round(result["users_per_s"], 1), "users/s",
                baseline=round(entry["exact_users_per_s"], 1),
                baseline_metric="exact blocked matmul (same users)",
                note=f"recall@10 {result['recall_at_10']:.3f}; build "
                     f"{result['build_seconds']:.1f} s",
            )
        del items
    unavailable = {k: v for e in curve.values() for k, v in e.items() if isinstance(v, str)}
    for name, reason in unavailable.items():
        section.add(name, "not available", note=reason[:120])
    section.details = {"users": USERS, "k": K, "curve": curve}
    return section


if __name__ == "__main__":
    section_main(run)
