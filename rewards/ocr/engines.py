"""OCR engines for the OCR reward: images in, ``(text, confidence)`` lines out.

Three engines; every result names its engine (`describe`: engine, version, models, settings):

- ``"rapidocr"`` (default): the PP-OCR models bundled as ONNX in the `rapidocr` wheel, run by
  onnxruntime on CPU, offline; configured like Flow-GRPO's reference (English, angle classifier off,
  detector input limited to 960 px on its longer side, lines under 0.5 confidence dropped). Its
  bundled models (PP-OCRv6 small, multilingual) are NOT the reference's PaddleOCR models, so its
  scores are close to, not equal to, published ones.
- ``"paddleocr"``: PaddleOCR 3.x (``pip install 'blip3o-rl[paddle]'``: paddleocr 3.1+ / paddlepaddle
  3.0+), the engine of BLIP3o-NEXT's official text RL run, with that run's settings by default:
  English, document orientation / unwarping / text-line orientation off, PaddleOCR's own detector
  and recognition-score defaults (no confidence filter of ours), images passed as BGR arrays, a
  batch through one ``predict()`` call, ``rec_texts`` / ``rec_scores`` read from each result.
  It downloads its models on first use.
- ``"paddleocr2"``: PaddleOCR 2.x (Flow-GRPO's reference engine), for users who install
  ``'paddleocr<3' 'paddlepaddle<3'`` themselves.

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
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from ... import registry

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
    # read_batch only queues images on the shared pool: overlapping calls (a pipelined step's chunks)
    # keep the pool busy between chunks instead of draining it at each one's end.
    max_concurrent_calls = 4

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
        return [(str(t), float(s)) for t, s in zip(txts, scores or (), strict=True)]

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
    """PaddleOCR 2.x, English, no angle classifier: Flow-GRPO's reference engine, one image at a time.

    Images go in as ``numpy.array(pil_image)`` (RGB), exactly as the reference passes them, although
    PaddleOCR reads arrays as BGR: reproducing published numbers means reproducing that too.
    """

    name = "paddleocr2"

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
                f"the OCR reward's 'paddleocr2' engine needs PaddleOCR 2.x ({exc}); install it with "
                "pip install 'paddleocr>=2.7,<3' 'paddlepaddle>=2.6,<3', or use engine='paddleocr' (PaddleOCR "
                "3.x: pip install 'blip3o-rl[paddle]') or engine='rapidocr' (the default, no extra needed)"
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


def _result_lines(result: Any) -> OCRLines:
    """``(text, score)`` lines of one PaddleOCR 3.x ``predict()`` result (a dict-like ``OCRResult``)."""
    res = result
    if not _has_key(res, "rec_texts") and _has_key(getattr(res, "json", None), "res"):
        res = res.json["res"]  # the result's JSON form: {"res": {"rec_texts": [...], ...}}
    if not _has_key(res, "rec_texts"):
        raise ValueError(f"PaddleOCR result has no 'rec_texts' (got {type(result).__name__})")
    texts, scores = list(res["rec_texts"] or []), list(res["rec_scores"] or [])
    if len(texts) != len(scores):
        raise ValueError(f"PaddleOCR result has {len(texts)} rec_texts but {len(scores)} rec_scores")
    return [(str(t), float(c)) for t, c in zip(texts, scores, strict=True)]


def _has_key(obj: Any, key: str) -> bool:
    try:
        return key in obj
    except TypeError:
        return False


class PaddleOCR3Engine:
    """PaddleOCR 3.x through ``predict()``, with the official BLIP3o-NEXT text run's settings by default.

    Args:
        device: PaddleOCR's device string (``"cpu"``, ``"gpu:0"``); None: PaddleOCR's default.
        bgr: pass images as BGR arrays (``np.array(rgb)[:, :, ::-1]``), as the official run does.
        text_det_limit_side_len, text_det_limit_type, text_rec_score_thresh: PaddleOCR 3.x settings;
            None (default) leaves PaddleOCR's own defaults, as the official run did (no confidence filter).
        params: further PaddleOCR keyword arguments (e.g. ``text_recognition_model_name``), applied last.
    """

    name = "paddleocr"

    #: The official text run's PaddleOCR(...) arguments (BLIP3o-NEXT ``trl/trl/trainer/grpo_trainer.py``).
    REFERENCE_SETTINGS: ClassVar[dict[str, Any]] = {
        "lang": "en",
        "use_doc_orientation_classify": False,
        "use_doc_unwarping": False,
        "use_textline_orientation": False,
    }

    def __init__(
        self,
        *,
        device: str | None = None,
        bgr: bool = True,
        text_det_limit_side_len: int | None = None,
        text_det_limit_type: str | None = None,
        text_rec_score_thresh: float | None = None,
        params: dict[str, Any] | None = None,
    ):
        try:
            import paddleocr
        except ImportError as exc:
            raise ImportError(
                f"the OCR reward's 'paddleocr' engine needs PaddleOCR 3.x ({exc}); install it with "
                "pip install 'blip3o-rl[paddle]' (paddleocr>=3.1,<4, paddlepaddle>=3.0,<4), or use "
                "engine='rapidocr' (the default, no extra needed)"
            ) from exc
        version = getattr(paddleocr, "__version__", None) or _version("paddleocr")
        if version is not None and not str(version).startswith("3."):
            raise ImportError(
                f"the OCR reward's 'paddleocr' engine needs PaddleOCR 3.x, found {version}; "
                "pip install 'blip3o-rl[paddle]', or use engine='paddleocr2' for PaddleOCR 2.x"
            )
        optional = {
            "device": device,
            "text_det_limit_side_len": text_det_limit_side_len,
            "text_det_limit_type": text_det_limit_type,
            "text_rec_score_thresh": text_rec_score_thresh,
        }
        self.bgr = bgr
        self.version = version
        self.settings = {
            **self.REFERENCE_SETTINGS,
            **{k: v for k, v in optional.items() if v is not None},
            **(params or {}),
        }
        self._ocr = paddleocr.PaddleOCR(**self.settings)
        self._models = {
            "det": str(self.settings.get("text_detection_model_name") or "PaddleOCR default"),
            "rec": str(self.settings.get("text_recognition_model_name") or "PaddleOCR default"),
        }

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "version": self.version,
            "paddlepaddle": _version("paddlepaddle") or _version("paddlepaddle-gpu"),
            "models": dict(self._models),
            "settings": {**self.settings, "bgr": self.bgr},
        }

    def _array(self, image: Image.Image) -> np.ndarray:
        rgb = np.array(image.convert("RGB"))
        return np.ascontiguousarray(rgb[:, :, ::-1]) if self.bgr else rgb

    def read(self, image: Image.Image) -> OCRLines:
        results = list(self._ocr.predict(self._array(image)))
        if len(results) != 1:
            raise ValueError(f"PaddleOCR predict() returned {len(results)} results for one image")
        return _result_lines(results[0])

    def read_batch(self, images: Sequence[Image.Image]) -> list[OCRLines | Exception]:
        """One ``predict()`` call over the batch (as the official run); if it fails, image by image."""
        try:
            arrays = [self._array(image) for image in images]
            results = list(self._ocr.predict(arrays))
            if len(results) != len(arrays):
                raise ValueError(f"PaddleOCR predict() returned {len(results)} results for {len(arrays)} images")
            out: list[OCRLines | Exception] = []
            for result in results:
                try:
                    out.append(_result_lines(result))
                except Exception as exc:
                    out.append(exc)
            return out
        except Exception:  # find the image(s) it failed on; the others are still scored
            out = []
            for image in images:
                try:
                    out.append(self.read(image))
                except Exception as exc:
                    out.append(exc)
            return out


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
