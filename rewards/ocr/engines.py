"""OCR engines for the OCR reward: images in, ``(text, confidence)`` lines out.

Two engines, both configured like the reference (PaddleOCR 2.x, English, angle classifier off,
detector input limited to 960 px on its longer side, lines under 0.5 confidence dropped):

- ``"rapidocr"`` (default): the PP-OCR models bundled as ONNX in the `rapidocr` wheel, run by
  onnxruntime on CPU, offline. Its bundled models (PP-OCRv6 small, multilingual) are NOT the
  reference's PaddleOCR 2.x English models, so its scores are close to, not equal to, published ones.
- ``"paddleocr"``: PaddleOCR 2.x itself (``pip install 'blip3o-rl[paddle]'``), the engine behind
  published OCR numbers. It downloads its models on first use.

`get_ocr_engine` builds an engine once per process and configuration and then reuses it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from blip3o_rl import registry

OCRLines = list[tuple[str, float]]

# PaddleOCR 2.x inference defaults, which the reference reward ran with.
REFERENCE_DET_LIMIT_SIDE_LEN = 960
REFERENCE_DET_LIMIT_TYPE = "max"
REFERENCE_DROP_SCORE = 0.5


@runtime_checkable
class OCREngine(Protocol):
    """Reads text lines from images."""

    name: str

    def describe(self) -> dict[str, Any]:
        """JSON-ready identity of the engine: ``{"engine", "version", "models": {...}, "settings": {...}}``."""
        ...

    def read_batch(self, images: Sequence[Image.Image]) -> list[OCRLines | Exception]:
        """OCR lines per image, in engine order; an image the engine failed on gets its exception."""
        ...


def available_cpus() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_num_workers() -> int:
    """This process's share of the CPU cores: the cores it may use, split among the ranks on this node.

    torchrun and accelerate set ``LOCAL_WORLD_SIZE``; each rank building its own OCR engine with every
    core would oversubscribe the node by that factor.
    """
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, available_cpus() // ranks)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


class RapidOCREngine:
    """RapidOCR (PP-OCR as ONNX) on CPU; a batch is spread over a thread pool.

    onnxruntime releases the GIL while it runs, so ``num_workers`` images are read at once, each
    session run using ``intra_op_threads`` threads. For OCR-sized inputs that beats one image at a
    time on all cores (see docs/benchmarks.md, "OCR reward").

    Args:
        num_workers: images read concurrently; default: `default_num_workers` (this rank's share of
            the cores).
        intra_op_threads: onnxruntime threads per session run.
        det_limit_side_len, det_limit_type: the detector's resize rule. ``"max"`` shrinks images whose
            longer side exceeds the limit (the reference); ``"min"`` enlarges images whose shorter side
            is below it (rapidocr's own default, 736). Lower limits are faster and miss small text.
        text_score: lines with a lower recognition confidence are dropped by the engine.
        params: further raw rapidocr settings (``{"Det.model_path": ..., "Rec.model_path": ...}``),
            applied last.
    """

    name = "rapidocr"

    def __init__(
        self,
        *,
        num_workers: int | None = None,
        intra_op_threads: int = 1,
        det_limit_side_len: int = REFERENCE_DET_LIMIT_SIDE_LEN,
        det_limit_type: str = REFERENCE_DET_LIMIT_TYPE,
        text_score: float = REFERENCE_DROP_SCORE,
        params: dict[str, Any] | None = None,
    ):
        try:
            from rapidocr import RapidOCR
        except ImportError as exc:
            raise ImportError(
                f"the OCR reward's 'rapidocr' engine needs the rapidocr and onnxruntime packages ({exc}); "
                "install them with: pip install 'rapidocr>=3.10,<4' 'onnxruntime>=1.20,<2'"
            ) from exc
        if det_limit_type not in ("max", "min"):
            raise ValueError(f"det_limit_type must be 'max' or 'min', got {det_limit_type!r}")
        self.num_workers = num_workers or default_num_workers()
        self.settings = {
            "Global.use_cls": False,  # the reference runs without the angle classifier
            "Global.text_score": float(text_score),
            "Global.log_level": "error",  # rapidocr warns on every image without text
            "Det.limit_side_len": int(det_limit_side_len),
            "Det.limit_type": det_limit_type,
            "EngineConfig.onnxruntime.intra_op_num_threads": int(intra_op_threads),
            **(params or {}),
        }
        self._ocr = RapidOCR(params=self.settings)
        # rapidocr loads models on first use; load them now so a missing model fails here, not mid-run.
        self._ocr._load_det_model()
        self._ocr._load_rec_model()
        self._models = {
            "det": self._model_name(self._ocr.cfg.Det),
            "rec": self._model_name(self._ocr.cfg.Rec),
        }
        self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="rapidocr")

    @staticmethod
    def _model_name(section: Any) -> str:
        """The model file rapidocr resolves for a Det/Rec config section, as rapidocr itself does."""
        if section.model_path:
            return Path(str(section.model_path)).name
        from rapidocr.inference_engine.base import FileInfo, InferSession

        info = InferSession.get_model_url(
            FileInfo(
                engine_type=section.engine_type,
                ocr_version=section.ocr_version,
                task_type=section.task_type,
                lang_type=section.lang_type,
                model_type=section.model_type,
            )
        )
        return Path(info["model_dir"]).name

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "version": _version("rapidocr"),
            "onnxruntime": _version("onnxruntime"),
            "models": dict(self._models),
            "settings": {k: v for k, v in self.settings.items() if k != "Global.log_level"},
            "num_workers": self.num_workers,
        }

    def read(self, image: Image.Image) -> OCRLines:
        """OCR lines of one image (raises on engine failure)."""
        # PIL input: rapidocr converts RGB to the BGR order its models expect.
        out = self._ocr(image)
        txts, scores = getattr(out, "txts", None), getattr(out, "scores", None)
        if txts is None:  # nothing detected, or nothing recognised above text_score
            return []
        return [(str(t), float(s)) for t, s in zip(txts, scores, strict=True)]

    def read_batch(self, images: Sequence[Image.Image]) -> list[OCRLines | Exception]:
        futures = [self._pool.submit(self.read, image) for image in images]
        results: list[OCRLines | Exception] = []
        for future in futures:
            try:
                results.append(future.result())
            except Exception as exc:  # one unreadable image fails that sample only
                results.append(exc)
        return results


class PaddleOCREngine:
    """PaddleOCR 2.x, English, no angle classifier: the reference's engine, one image at a time.

    Images go in as ``numpy.array(pil_image)`` (RGB), exactly as the reference passes them, although
    PaddleOCR reads arrays as BGR: reproducing published numbers means reproducing that too.
    """

    name = "paddleocr"

    def __init__(
        self,
        *,
        use_gpu: bool = False,
        cpu_threads: int | None = None,
        det_limit_side_len: int = REFERENCE_DET_LIMIT_SIDE_LEN,
        det_limit_type: str = REFERENCE_DET_LIMIT_TYPE,
        text_score: float = REFERENCE_DROP_SCORE,
        params: dict[str, Any] | None = None,
    ):
        try:
            from paddleocr import PaddleOCR
        except ImportError as exc:
            raise ImportError(
                f"the OCR reward's 'paddleocr' engine needs PaddleOCR 2.x ({exc}); install it with "
                "pip install 'blip3o-rl[paddle]', or use engine='rapidocr' (the default, no extra needed)"
            ) from exc
        self.settings = {
            "use_angle_cls": False,
            "lang": "en",
            "use_gpu": use_gpu,
            "cpu_threads": cpu_threads or default_num_workers(),
            "det_limit_side_len": det_limit_side_len,
            "det_limit_type": det_limit_type,
            "drop_score": text_score,
            **(params or {}),
        }
        self._ocr = PaddleOCR(show_log=False, **self.settings)
        args = getattr(self._ocr, "args", None)  # PaddleOCR 2.x keeps its resolved settings here
        self._models = {
            task: Path(str(getattr(args, f"{task}_model_dir", None) or "unknown")).name
            for task in ("det", "rec")
        }

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "version": _version("paddleocr"),
            "paddlepaddle": _version("paddlepaddle") or _version("paddlepaddle-gpu"),
            "models": dict(self._models),
            "settings": dict(self.settings),
        }

    def read(self, image: Image.Image) -> OCRLines:
        result = self._ocr.ocr(np.array(image.convert("RGB")), cls=False)
        if not result or not result[0]:  # PaddleOCR 2.x gives [None] when it finds no text
            return []
        return [(str(text), float(score)) for _box, (text, score) in result[0]]

    def read_batch(self, images: Sequence[Image.Image]) -> list[OCRLines | Exception]:
        # A Paddle predictor is not safe to share between threads: read sequentially.
        results: list[OCRLines | Exception] = []
        for image in images:
            try:
                results.append(self.read(image))
            except Exception as exc:
                results.append(exc)
        return results


_cache: dict[tuple[int, str, str], OCREngine] = {}
_cache_lock = threading.Lock()


def get_ocr_engine(name: str = "rapidocr", **kwargs: Any) -> OCREngine:
    """The process's engine ``name`` built with ``kwargs``: created on first request, then reused.

    ``name``: a registered name (entry points ``blip3o_rl.ocr_engine``: "rapidocr", "paddleocr"),
    "package.module:Class" or "path/to/file.py:Class".

    The key includes the process id: a forked child builds its own engine (thread pools and
    inference sessions do not survive a fork).
    """
    cls = registry.resolve("ocr_engine", name)
    registry.check_kwargs("ocr_engine", name, cls, kwargs)
    key = (os.getpid(), name, json.dumps(kwargs, sort_keys=True, default=str))
    with _cache_lock:
        if key not in _cache:
            _cache[key] = cls(**kwargs)
        return _cache[key]
