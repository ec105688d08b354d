"""1. Embedding: the pipeline's step against a bare encode, against the machine's matmul rate,
the cache (a rerun embeds nothing), and cheaper backends with their agreement with float32.

Also builds the seed warehouse the later sections copy (sample hour 08 through every stage).
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    HOUR,
    SEED_HOUR,
    WORK_DIR,
    Section,
    embed_step,
    median,
    replay_seed,
    run_hour,
    section_main,
    settings_for,
    timed,
)

# About 21 MFLOP per token: 6 layers x (4 x 384^2 attention projections + 2 x 384 x 1536 FFN)
# multiply-adds x 2 FLOP; attention scores add little at these lengths.
FLOP_PER_TOKEN = 21e6
AGREEMENT_FLOOR = 0.99
# Largest component change between batchings a backend may show (float32: about 2e-7).
MAX_BATCH_DRIFT = 1e-5
# The ONNX Runtime float32 path replaces torch only if its vectors are the same (issue 15):
# min cosine >= this, and batch drift no larger than float32 torch's own.
ONNX_AGREEMENT_FLOOR = 0.9999


def matmul_rate(size: int = 2048, seconds: float = 3.0) -> dict[str, Any]:
    """Float32 GEMM rate (FLOP/s) of torch and numpy in this process; the best is the ceiling."""
    import numpy as np
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    rates = {}
    a32 = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    default_threads = torch.get_num_threads()
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        with threadpool_limits(limits=threads):
            for name, mm, a in (
                ("torch", torch.matmul, torch.from_numpy(a32)),
                ("numpy", np.matmul, a32),
            ):
                mm(a, a)  # warm-up
                n, started = 0, time.perf_counter()
                while time.perf_counter() - started < seconds:
                    mm(a, a)
                    n += 1
                rates[f"{name}, {threads} thread(s)"] = (
                    2 * size**3 * n / (time.perf_counter() - started))
    torch.set_num_threads(default_threads)
    return {
        "flops": max(rates.values()),
        "by_library": rates,
        "torch_threads": default_threads,
        "threadpools": [
            {k: p.get(k) for k in ("internal_api", "num_threads", "architecture", "version")}
            for p in threadpool_info()
        ],
        "openblas_env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
    }


def _cosine_agreement(reference: Any, other: Any) -> dict[str, float]:
    import numpy as np

    ref = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    oth = other / np.linalg.norm(other, axis=1, keepdims=True)
    cos = (ref * oth).sum(axis=1)
    return {
        "min": float(cos.min()),
        "mean": float(cos.mean()),
        "p01": float(np.quantile(cos, 0.01)),
    }


def _encode(model: Any, texts: list[str], batch_size: int) -> Any:
    return model.encode(
        texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
        show_progress_bar=False,
    )


def _backends(model: Any, load_path: str, texts: list[str], batch_size: int) -> dict[str, Any]:
    """float32 torch (reference), int8 dynamic quantisation, bf16 and OpenVINO (ONNX Runtime:
    see :func:`_onnx_backends`)."""
    import torch

    out: dict[str, Any] = {}
    seconds, reference = timed(_encode, model, texts, batch_size)
    out["float32"] = {
        "texts_per_s": len(texts) / seconds,
        "agreement": {"min": 1.0, "mean": 1.0},
        "batch_drift": _batch_drift(lambda t: _encode(model, t, batch_size), texts, reference),
    }

    def measure(name: str, encode: Any) -> None:
        try:
            encode(texts[:32])  # warm-up (and the error, if the backend cannot run)
            seconds, vectors = timed(encode, texts)
        except Exception as exc:  # noqa: BLE001 - any failure means "not available here"
            out[name] = {"available": False, "reason": f"{type(exc).__name__}: {exc}"[:300]}
            return
        out[name] = {
            "available": True,
            "texts_per_s": len(texts) / seconds,
            "agreement": _cosine_agreement(reference, vectors),
            "batch_drift": _batch_drift(encode, texts, vectors),
        }

    quantized = torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8
    )
    measure("int8 (torch dynamic)", lambda t: _encode(quantized, t, batch_size))

    def bf16(t: list[str]) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return _encode(model, t, batch_size)

    measure("bf16 (torch autocast)", bf16)

    for backend in ("openvino",):
        def load_and_encode(t: list[str], backend: str = backend) -> Any:
            from sentence_transformers import SentenceTransformer

            key = f"_model_{backend}"
            if key not in out:
                out[key] = SentenceTransformer(load_path, device="cpu", backend=backend)
            return _encode(out[key], t, batch_size)

        measure(backend, load_and_encode)
        out.pop(f"_model_{backend}", None)
    for result in out.values():
        if result.get("available", True) and "texts_per_s" in result:
            result["speedup"] = result["texts_per_s"] / out["float32"]["texts_per_s"]
            result["agrees"] = result["agreement"]["min"] >= AGREEMENT_FLOOR
            result["stable"] = result["batch_drift"] <= MAX_BATCH_DRIFT
            result["adoptable"] = (
                result["agrees"] and result["speedup"] > 1.0 and result["stable"]
            )
    return out


def _batch_drift(encode: Any, texts: list[str], vectors: Any) -> float:
    """Largest change of a vector component when the same texts are encoded in other batches.

    The pipeline's batches differ between runs of the same texts (an hour or a day of backfill,
    a Celery shard): padding and batch size change the kernels' shapes, so even float32 moves
    in the 7th digit. A backend whose vectors move far more would make a daily backfill and
    hourly runs disagree visibly.
    """
    import numpy as np

    step = max(1, len(texts) // 3)
    again = np.concatenate([encode(texts[i : i + step]) for i in range(0, len(texts), step)])
    return float(np.abs(np.asarray(vectors) - again).max())


def _interleaved(encoders: dict[str, Any], texts: list[str], rounds: int = 3) -> dict[str, Any]:
    """Median seconds of each encoder on ``texts``, taking turns so that all see the same load
    (the machine is shared), and the vectors of the last round."""
    seconds: dict[str, list[float]] = {name: [] for name in encoders}
    vectors: dict[str, Any] = {}
    for encode in encoders.values():
        encode(texts[:32])  # warm-up
    for _ in range(rounds):
        for name, encode in encoders.items():
            took, vectors[name] = timed(encode, texts)
            seconds[name].append(took)
    return {name: {"seconds": median(seconds[name]), "all_seconds": seconds[name],
                   "vectors": vectors[name]} for name in encoders}


def _onnx_backends(
    model: Any, model_id: str, load_path: str, texts: list[str], batch_size: int,
    cache: Path, flops: float,
) -> dict[str, Any]:
    """The ONNX Runtime backends (interest_pipeline.onnx_encoder) against bare encode, and
    length-bucketed batching for both.

    Export and load are timed in ``cache``, a fresh folder: the first use exports (and int8
    quantises), a second encoder in the same folder only loads.
    """
    import numpy as np

    from interest_pipeline.embeddings import encode_length_sorted, length_sorted_batches
    from interest_pipeline.onnx_encoder import OnnxEncoder

    shutil.rmtree(cache, ignore_errors=True)
    export_seconds, onnx = timed(OnnxEncoder, model_id, load_path, batch_size, cache)
    load_seconds, onnx = timed(OnnxEncoder, model_id, load_path, batch_size, cache)
    quantise_seconds, int8 = timed(
        OnnxEncoder, model_id, load_path, batch_size, cache, quantized=True
    )

    def bare(t: list[str]) -> Any:
        return _encode(model, t, batch_size)

    def batched(encode_batch: Any, batches: list[Any], t: list[str]) -> Any:
        out = np.zeros((len(t), model.get_embedding_dimension()), dtype=np.float32)
        for batch in batches:
            out[batch] = encode_batch([t[i] for i in batch])
        return out

    def in_order(t: list[str]) -> list[Any]:
        return [np.arange(i, min(i + batch_size, len(t))) for i in range(0, len(t), batch_size)]

    def torch_bucketed(t: list[str]) -> Any:
        # The torch backend's batching: each token-length bucket is one encode() call, so
        # encode's own character sort inside changes nothing.
        return encode_length_sorted(model, t, batch_size, lambda b: _encode(model, b, len(b)))

    def onnx_in_order(t: list[str]) -> Any:
        return batched(onnx._encode_batch, in_order(t), t)

    encoders = {"torch": bare, "onnx": onnx.encode, "onnx-int8": int8.encode,
                "torch bucketed": torch_bucketed, "onnx in order": onnx_in_order}
    timings = _interleaved(encoders, texts)
    reference = timings["torch"]["vectors"]
    tokens = int(model.tokenize(texts)["attention_mask"].sum())
    # Work done whatever the load: tokens the model runs on once each batch is padded.
    lengths = np.array([len(row) for row in model.tokenizer(texts, truncation=True)["input_ids"]])
    by_characters = np.argsort([-len(t) for t in texts], kind="stable")
    padded = {
        name: int(sum(len(b) * lengths[b].max() for b in batches))
        for name, batches in (
            ("input order", in_order(texts)),
            ("character sort", [by_characters[i : i + batch_size]
                                for i in range(0, len(texts), batch_size)]),
            ("token sort", length_sorted_batches(model.tokenizer, texts, batch_size)),
        )
    }
    out: dict[str, Any] = {
        "padded_tokens": padded,
        "export_seconds": export_seconds, "load_seconds": load_seconds,
        "quantise_seconds": quantise_seconds - load_seconds, "tokens": tokens,
        "files": {p.name: p.stat().st_size for p in sorted(cache.iterdir())},
    }
    for name, timing in timings.items():
        out[name] = {
            "texts_per_s": len(texts) / timing["seconds"],
            "seconds": timing["all_seconds"],
            "flop_share": tokens / timing["seconds"] * FLOP_PER_TOKEN / flops,
            "agreement": _cosine_agreement(reference, timing["vectors"]),
            "batch_drift": _batch_drift(encoders[name], texts, timing["vectors"]),
        }
    torch_rate, torch_drift = out["torch"]["texts_per_s"], out["torch"]["batch_drift"]
    for name, floor in (("onnx", ONNX_AGREEMENT_FLOOR), ("onnx-int8", AGREEMENT_FLOOR)):
        result = out[name]
        result["speedup"] = result["texts_per_s"] / torch_rate
        result["agrees"] = result["agreement"]["min"] >= floor
        result["stable"] = result["batch_drift"] <= torch_drift
        result["verdict"] = _onnx_verdict(name, result, floor, torch_drift)
    return out


def _onnx_verdict(name: str, result: dict[str, Any], floor: float, torch_drift: float) -> str:
    """Issue 15's rule: float32 ONNX is adopted if faster than bare encode with min cosine
    >= 0.9999 and batch drift <= float32 torch's; int8 is only reported (an eval decides)."""
    from interest_pipeline.embeddings import DEFAULT_BACKEND

    if not result["agrees"]:
        return f"not adopted: min cosine < {floor}"
    if result["speedup"] <= 1.0:
        return "agrees, but not faster than bare encode: not adopted"
    if not result["stable"]:
        return f"agrees and faster, but drifts more than float32 torch ({torch_drift:.1e})"
    if name == "onnx-int8":
        return "agrees and faster: adoptable only after an eval (off by default)"
    adopted = "the default" if DEFAULT_BACKEND == name else "adoptable, not the default"
    return f"agrees, faster, drift at float32 level: {adopted}"


def _verdict(result: dict[str, Any]) -> str:
    """Adopt a backend only if it agrees with float32 (min cosine >= 0.99), is faster, and
    gives the same bits whatever the batching."""
    if not result["agrees"]:
        return f"not adopted: agreement < {AGREEMENT_FLOOR}"
    if result["speedup"] <= 1.0:
        return "agrees, but not faster: not adopted"
    if not result["stable"]:
        return f"agrees and faster, but moves > {MAX_BATCH_DRIFT:g} with the batching: not adopted"
    return "agrees and faster: adoptable"


def run(args: Any) -> Section:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from interest_pipeline import embeddings
    from interest_pipeline.warehouse import fetch_one, open_warehouse

    section = Section("embedding")
    seed = WORK_DIR / "seed"
    if seed.exists():
        shutil.rmtree(seed)
    settings = settings_for(seed)
    replay_seed(settings.landing_dir)
    start, end = SEED_HOUR, SEED_HOUR + HOUR
    run_hour(settings, start, ("ingest", "dbt"), record=False)

    model_id, load_path = embeddings.resolve_model(settings.model)
    load_seconds, encoder = timed(
        embeddings.load_encoder, settings.model, settings.embed_batch_size
    )
    with open_warehouse(settings.warehouse_path) as con:
        texts = [t for _, t in embeddings.pending_texts(con, model_id, start)]
    tokens = int(encoder.model.tokenize(texts)["attention_mask"].sum())
    batch = settings.embed_batch_size

    # Bare encode and the pipeline step alternate (twice each) so both see the same load.
    bare, step = [], []
    for _ in range(2):
        seconds, _ = timed(_encode, encoder.model, texts, batch)
        bare.append(seconds)
        with open_warehouse(settings.warehouse_path) as con:
            con.execute("delete from text_embeddings")
        seconds, result = timed(embed_step, start, end, settings)
        step.append(seconds)
        assert result["texts_embedded"] == len(texts), (result, len(texts))
    bare_rate = len(texts) / median(bare)
    step_rate = len(texts) / median(step)
    rerun_seconds, rerun = timed(embed_step, start, end, settings)
    with open_warehouse(settings.warehouse_path) as con:
        (cached,) = fetch_one(con, "select count(*) from text_embeddings where model_id = ?",
                              [model_id])

    section.add("pipeline embed step, texts/s", round(step_rate, 1), "texts/s",
                baseline=round(bare_rate, 1), baseline_metric="bare SentenceTransformer.encode",
                note=f"{len(texts)} item documents, {tokens} tokens, batch {batch}")
    tokens_per_s = tokens / median(step)
    mm = matmul_rate()
    model_flops = tokens_per_s * FLOP_PER_TOKEN
    section.add("pipeline embed step, model FLOP/s", round(model_flops / 1e9, 2), "GFLOP/s",
                baseline=round(mm["flops"] / 1e9, 1),
                baseline_metric="float32 matmul rate (same run)",
                note=f"{tokens_per_s:.0f} tokens/s x 21 MFLOP/token; ceiling "
                     f"{mm['flops'] / FLOP_PER_TOKEN:.0f} tokens/s")
    section.add("rerun of an embedded interval: texts embedded", rerun["texts_embedded"], "texts",
                baseline=len(texts), baseline_metric="texts embedded by the first run",
                note=f"{rerun_seconds:.2f} s; {cached} texts cached")
    section.add("model load (once per process)", round(load_seconds, 2), "s",
                baseline=round(median(step), 2), baseline_metric="embed step")

    # Under CPU contention (a shared machine) OpenMP threads that spin-wait on each other can
    # make torch's default thread count far slower than one thread: measure both.
    import torch

    default_threads = torch.get_num_threads()
    by_threads = {}
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        seconds, _ = timed(_encode, encoder.model, texts, batch)
        by_threads[threads] = len(texts) / seconds
    torch.set_num_threads(default_threads)
    if default_threads != 1:
        section.add("bare encode, torch 1 thread, texts/s", round(by_threads[1], 1), "texts/s",
                    baseline=round(by_threads[default_threads], 1),
                    baseline_metric=f"torch default ({default_threads} threads)",
                    note=f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    # The same texts, the first 800 of them (ordered by hash: an unbiased subset), to keep
    # the suite within its time budget.
    backends = _backends(encoder.model, load_path, texts[:800], batch)
    for name, result in backends.items():
        if name == "float32":
            continue
        if not result.get("available", True):
            section.add(f"backend {name}", "not available", note=result["reason"][:120])
            continue
        section.add(
            f"backend {name}, texts/s", round(result["texts_per_s"], 1), "texts/s",
            baseline=round(backends["float32"]["texts_per_s"], 1),
            baseline_metric="float32 torch",
            note=f"cosine vs float32 min {result['agreement']['min']:.4f} mean "
                 f"{result['agreement']['mean']:.4f}; other batching moves it "
                 f"{result['batch_drift']:.1e} (float32 {backends['float32']['batch_drift']:.1e})"
                 ": " + _verdict(result),
        )

    # ONNX Runtime (float32, int8) against bare encode on the same 800 texts, taking turns.
    onnx = _onnx_backends(encoder.model, embeddings.resolve_model(settings.model, "onnx")[0],
                          load_path, texts[:800], batch, WORK_DIR / "onnx-cache", mm["flops"])
    torch_row = onnx["torch"]
    for name in ("onnx", "onnx-int8"):
        result = onnx[name]
        label = "float32" if name == "onnx" else "int8, dynamic per-channel"
        section.add(
            f"backend {name} (ONNX Runtime {label}), texts/s", round(result["texts_per_s"], 1),
            "texts/s", baseline=round(torch_row["texts_per_s"], 1),
            baseline_metric="bare SentenceTransformer.encode (taking turns)",
            note=f"{result['flop_share']:.0%} of the FLOP ceiling (encode "
                 f"{torch_row['flop_share']:.0%}); cosine vs float32 min "
                 f"{result['agreement']['min']:.6f} mean {result['agreement']['mean']:.6f}; "
                 f"other batching moves it {result['batch_drift']:.1e} (float32 torch "
                 f"{torch_row['batch_drift']:.1e}): {result['verdict']}",
        )
    section.add("onnx export at first use (once per data dir)", round(onnx["export_seconds"], 2),
                "s", baseline=round(onnx["load_seconds"], 2),
                baseline_metric="onnx load from the cache",
                note=f"int8 quantisation {onnx['quantise_seconds']:.2f} s more; files "
                     + ", ".join(f"{size / 1e6:.0f} MB" for size in onnx["files"].values()))
    padded = onnx["padded_tokens"]
    for name, plain, label, before in (
        ("torch bucketed", "torch", "encode's own character sort", "character sort"),
        ("onnx", "onnx in order", "onnx in input order", "input order"),
    ):
        result = onnx[name]
        section.add(
            f"length-bucketed batching, {plain.split()[0]}, texts/s",
            round(result["texts_per_s"], 1), "texts/s",
            baseline=round(onnx[plain]["texts_per_s"], 1), baseline_metric=label,
            note=f"token-length sorted batches of {batch}: {padded['token sort']} padded tokens "
                 f"({padded[before]} by {before}, {onnx['tokens']} real); vectors vs float32 "
                 f"min cosine {result['agreement']['min']:.6f}, other batching moves them "
                 f"{result['batch_drift']:.1e}",
        )

    # Finish the seed hour (fold, recommend, stats) so later sections can copy it.
    run_hour(settings, start, ("fold", "recommend"))
    (seed / "ready").write_text("ok")
    section.details = {
        "texts": len(texts),
        "tokens": tokens,
        "bare_seconds": bare,
        "step_seconds": step,
        "matmul": mm,
        "backends": backends,
        "onnx": onnx,
        "rerun_seconds": rerun_seconds,
        "texts_per_s_by_torch_threads": by_threads,
    }
    return section


if __name__ == "__main__":
    section_main(run)
