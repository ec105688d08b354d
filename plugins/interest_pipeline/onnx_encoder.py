"""The ONNX Runtime backend of the text embeddings (``INTEREST_EMBEDDING_BACKEND=onnx``).

The model's transformer (the sentence-transformers first module's ``auto_model``) is exported
with ``torch.onnx.export`` at first use into ``<data dir>/models/onnx/``, named by a digest of
the model files and of what shapes the graph (torch version, opset, this module's recipe), so a
changed model or exporter never reuses a stale graph and every later process, on any worker
sharing the data dir, loads the cached file. Files appear atomically (temp file + rename): a
concurrent or killed process never leaves half a graph under the final name.

Only the transformer runs in ONNX Runtime. Tokenisation and every module after the transformer
(Pooling, Normalize for all-MiniLM-L6-v2) are the sentence-transformers model's own, run on the
ONNX output, so the vectors follow the same pipeline as ``SentenceTransformer.encode``.

``onnx-int8`` adds ``onnxruntime.quantization.quantize_dynamic`` on the exported graph, cached
beside it. Its vectors differ from float32 ones (see bench/bench_embedding.py), so they are
stored under their own model_id (:func:`interest_pipeline.embeddings.resolve_model`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interest_pipeline.embeddings import encode_length_sorted

if TYPE_CHECKING:
    import numpy as np
    import onnxruntime
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

OPSET = 17
# Bump when the export below changes in a way that changes the graph: old files are then
# ignored (they stay on disk; nothing deletes a file another process may be reading).
EXPORT_RECIPE = 1
# The transformer inputs a tokenizer may produce, in the order the graph takes them.
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"
# The exported graph must reproduce torch on a probe batch before it is cached.
EXPORT_MIN_COSINE = 0.9999
# Two texts of different lengths: the probe batch is padded, so the traced graph keeps the
# attention mask (an all-ones mask may be dropped by transformers' mask helpers).
_PROBE_TEXTS = ("a short probe", "a longer probe sentence, so that the first one is padded")


def cache_dir(data_dir: Path) -> Path:
    """Where exported graphs live: under the data dir, so every worker sees the same files."""
    return data_dir / "models" / "onnx"


class OnnxEncoder:
    """A sentence-transformers model whose transformer runs in ONNX Runtime on the CPU.

    Returns unit-length float32 vectors, in input order, like ``SentenceTransformerEncoder``.
    ``model`` is the loaded SentenceTransformer (tokenizer and modules after the transformer).
    """

    def __init__(
        self,
        model_id: str,
        load_path: str,
        batch_size: int,
        directory: Path,
        quantized: bool = False,
    ) -> None:
        # Offline: never let a mistyped name turn into a hub download at run time.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.model: SentenceTransformer = SentenceTransformer(load_path, device="cpu")
        self.model.eval()
        _check_supported(self.model)
        self.batch_size = batch_size
        self.path = ensure_onnx_model(self.model, model_id, load_path, directory, quantized)
        self.session = _session(self.path)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return encode_length_sorted(self.model, texts, self.batch_size, self._encode_batch)

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        return _run_pipeline(self.model, texts, lambda feeds: _run_session(self.session, feeds))


def ensure_onnx_model(
    model: SentenceTransformer,
    model_id: str,
    load_path: str,
    directory: Path,
    quantized: bool = False,
) -> Path:
    """The cached graph for this model (float32, or int8 when ``quantized``), made if missing."""
    float_path = directory / f"{_safe(model_id)}-{model_digest(model, load_path)}.onnx"
    if not float_path.exists():
        log.info("exporting %s to ONNX at %s (first use)", model_id, float_path)
        _write_atomically(float_path, lambda tmp: export_onnx(model, tmp))
    if not quantized:
        return float_path
    int8_path = float_path.with_name(f"{float_path.stem}-int8-{_quantizer_digest()}.onnx")
    if not int8_path.exists():
        log.info("quantising %s to int8 at %s (first use)", float_path.name, int8_path)
        _write_atomically(int8_path, lambda tmp: quantize_onnx(float_path, tmp))
    return int8_path


def model_digest(model: SentenceTransformer, load_path: str) -> str:
    """16 hex digits naming a graph: the model files plus what else shapes the export (the
    exporter's torch, the traced modelling code's transformers, the opset, the recipe).

    A local folder is hashed file by file (names and bytes); a model known only by name (in
    the Hugging Face cache) by its weights and config.
    """
    import torch
    import transformers

    digest = hashlib.sha256(
        f"torch={torch.__version__};transformers={transformers.__version__};"
        f"opset={OPSET};recipe={EXPORT_RECIPE}".encode()
    )
    folder = Path(load_path)
    if folder.is_dir():
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            relative = file.relative_to(folder)
            if any(part.startswith(".") for part in relative.parts):
                continue  # .gitattributes, caches: not the model
            digest.update(str(relative).encode() + b"\0")
            with file.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    else:
        transformer = model[0].auto_model
        digest.update(transformer.config.to_json_string().encode())
        for name, tensor in transformer.state_dict().items():
            digest.update(name.encode() + b"\0")
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def export_onnx(model: SentenceTransformer, path: Path) -> None:
    """Export the model's transformer to ``path`` with dynamic batch and sequence axes.

    Then check the graph against torch on a padded probe batch: a graph that traced wrongly
    (an architecture the TorchScript exporter mishandles) must fail here, not be cached.
    """
    import onnxruntime  # noqa: F401 - fail before a slow export if the runtime is missing
    import torch

    class LastHiddenState(torch.nn.Module):
        """The transformer with positional inputs and one output, as the exporter traces it."""

        def __init__(self, transformer: torch.nn.Module, names: list[str]) -> None:
            super().__init__()
            self.transformer = transformer
            self.names = names

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            kwargs = dict(zip(self.names, inputs, strict=True))
            return self.transformer(**kwargs, return_dict=True).last_hidden_state

    features = model.preprocess(list(_PROBE_TEXTS))
    names = [name for name in INPUT_NAMES if name in features]
    wrapper = LastHiddenState(model[0].auto_model, names).eval()
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, OUTPUT_NAME]}
    with torch.inference_mode(), warnings.catch_warnings():
        # Tracing warns where transformers branches on shapes (mask padding, is_causal): for an
        # encoder with a full-length attention mask each branch goes one way at every shape,
        # and the probe check below catches a graph that traced wrongly anyway.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            tuple(features[name] for name in names),
            str(path),
            dynamo=False,  # the torch.export-based exporter needs onnxscript, not installed
            input_names=names,
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
        )
    _verify_export(model, path)


def quantize_onnx(float_path: Path, path: Path) -> None:
    """Dynamic int8 quantisation of the MatMuls (weights int8 per output channel, activations
    quantised at run time).

    Per-channel scales keep the most agreement with float32 of the simple recipes (all-MiniLM
    on product names: min cosine 0.97-0.99 against 0.83-0.86 per tensor); the embedding
    Gather stays float32.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(float_path), str(path), weight_type=QuantType.QInt8, per_channel=True,
        op_types_to_quantize=["MatMul"],
    )


def _verify_export(model: SentenceTransformer, path: Path) -> None:
    import numpy as np

    # Another batch size and length than the traced ones: the dynamic axes must hold.
    texts = [*_PROBE_TEXTS, " ".join(["and a third, longer one"] * 8)]
    reference = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    session = _session(path)
    vectors = _run_pipeline(model, texts, lambda feeds: _run_session(session, feeds))
    cosine = float(np.min(np.sum(reference * vectors, axis=1)))
    if cosine < EXPORT_MIN_COSINE:
        raise RuntimeError(
            f"the ONNX export of this model disagrees with torch (cosine {cosine:.6f} < "
            f"{EXPORT_MIN_COSINE}): use INTEREST_EMBEDDING_BACKEND=torch"
        )


def _run_pipeline(
    model: SentenceTransformer,
    texts: list[str],
    transformer: Callable[[dict[str, Any]], np.ndarray],
) -> np.ndarray:
    """Tokenise, run ``transformer`` (features -> token embeddings), then the model's own
    modules after the transformer (pooling, normalisation), exactly as encode() chains them."""
    import numpy as np
    import torch

    with torch.inference_mode():
        features = model.preprocess(texts)
        features["token_embeddings"] = torch.from_numpy(transformer(features))
        for module in list(model)[1:]:
            features = module(features)
        # encode(normalize_embeddings=True) normalises once more, whatever the modules did.
        vectors = torch.nn.functional.normalize(features["sentence_embedding"], p=2, dim=1)
    return np.ascontiguousarray(vectors.numpy(), dtype=np.float32)


def _run_session(session: onnxruntime.InferenceSession, features: dict[str, Any]) -> np.ndarray:
    feeds = {i.name: features[i.name].numpy() for i in session.get_inputs()}
    return session.run([OUTPUT_NAME], feeds)[0]


def _session(path: Path) -> onnxruntime.InferenceSession:
    """A CPU session with as many intra-op threads as torch uses (the machine may be shared:
    torch's count is what the operator tuned, e.g. with OMP_NUM_THREADS)."""
    import onnxruntime
    import torch

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about unused initialisers are noise here
    # Spin-waiting threads burn the cores a shared machine's other processes need, and then
    # wait on each other: without spinning, 1.4x the texts/s at load 4.5 on 2 cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"]
    )


def _check_supported(model: SentenceTransformer) -> None:
    """Only a text Transformer first module whose output is ``last_hidden_state`` is exported;
    anything else (multimodal, custom heads) keeps the torch backend."""
    from sentence_transformers.models import Transformer

    first = model[0]
    text = getattr(first, "modality_config", {}).get("text", {})
    if not (
        isinstance(first, Transformer)
        and text.get("method") == "forward"
        and text.get("method_output_name") == OUTPUT_NAME
        and first.module_output_name == "token_embeddings"
    ):
        raise ValueError(
            "the onnx backend needs a sentence-transformers model whose first module is a text "
            "Transformer returning last_hidden_state; use INTEREST_EMBEDDING_BACKEND=torch"
        )


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Run ``write`` on a temp file beside ``path``, then rename it into place.

    The temp name never matches a cache name (it starts with a dot and ends in ``.partial``),
    so a half-written file from a killed process is never loaded; a concurrent process that
    makes the same file meanwhile is harmless (same content, the last rename wins).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        # mkstemp makes the file private (0600): workers running as another user must read it.
        tmp.chmod(0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _quantizer_digest() -> str:
    from importlib.metadata import version

    text = (
        f"onnxruntime={version('onnxruntime')};onnx={version('onnx')};"
        "qint8-dynamic-per-channel-matmul"
    )
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _safe(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("._") or "model"
