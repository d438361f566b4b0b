"""ONNX Runtime inference: execution providers and per-process sessions.

Tasks never carry a session (it cannot be pickled) nor the model bytes: they
carry a small :class:`SessionSpec`, and :func:`get_session` returns the one
session of this process for that spec, created on first use and reused across
tiles and threads (``InferenceSession.run`` is thread-safe).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from importlib import metadata

import numpy as np

from wsi_deepr.errors import ProviderUnavailableError
from wsi_deepr.options import DEVICES

__all__ = ["DEVICES", "SessionSpec", "check_runtime_install", "create_session", "get_session", "providers_for",
           "run_model"]

log = logging.getLogger(__name__)


_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class SessionSpec:
    """Everything needed to (re)create a session in any process.

    Attributes
    ----------
    model_path : str
        The ONNX file.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    intra_op_threads : int
        ONNX Runtime intra-op threads (0 = ONNX Runtime's default).
    """

    model_path: str
    device: str = "auto"
    intra_op_threads: int = 0


def check_runtime_install() -> None:
    """Log a warning when onnxruntime and onnxruntime-gpu are both installed."""
    names = set()
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.version(dist)
            names.add(dist)
        except metadata.PackageNotFoundError:
            pass
    if len(names) == 2:
        log.warning(
            "both onnxruntime and onnxruntime-gpu are installed; the CUDA provider may be "
            "missing. Fix: pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
        )


def providers_for(device: str) -> list[str]:
    """Execution providers to request for ``device``.

    Raises
    ------
    ValueError
        Unknown device.
    ProviderUnavailableError
        ``device="cuda"`` but this onnxruntime build has no CUDA provider.
    """
    import onnxruntime as ort

    device = str(device).lower()
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}: use one of {', '.join(DEVICES)}")
    available = ort.get_available_providers()
    if device == "cpu":
        return [_CPU]
    if _CUDA in available:
        return [_CUDA, _CPU]
    if device == "cuda":
        check_runtime_install()
        raise ProviderUnavailableError(
            f"--device cuda: this onnxruntime ({ort.__version__}) has no CUDA provider "
            f"(available: {', '.join(available)}); install onnxruntime-gpu in place of "
            f"onnxruntime (pip install 'wsi-deepr[gpu]' && pip uninstall -y onnxruntime) "
            f"or use --device cpu"
        )
    return [_CPU]


#: images of at most this many pixels go to one CPU ``session.run``: larger
#: calls are slower per pixel once the activations outgrow the CPU cache (see
#: the README's *Tiling* section for the measurement); CUDA takes the whole batch
CPU_PIXELS_PER_CALL = 2 * 512 * 512

_sessions: dict[SessionSpec, object] = {}
_lock = threading.Lock()


def get_session(spec: SessionSpec):
    """Return this process's ``onnxruntime.InferenceSession`` for ``spec``.

    With ``device="cuda"`` the session must really run on CUDA: ONNX Runtime
    silently falls back to the CPU when the CUDA libraries fail to load, and
    that fallback raises :class:`ProviderUnavailableError` here.
    """
    session = _sessions.get(spec)
    if session is not None:
        return session
    with _lock:
        session = _sessions.get(spec)
        if session is None:
            session = create_session(spec.model_path, device=spec.device, threads=spec.intra_op_threads)
            _sessions[spec] = session
    return session


def create_session(model_path: str | os.PathLike, *, device: str = "cpu", threads: int = 0,
                   optimize: bool = True):
    """A new ``onnxruntime.InferenceSession``: the one place sessions are set up.

    Parameters
    ----------
    model_path : path
        The ONNX file.
    device : {"auto", "cpu", "cuda"}
        Execution provider (:func:`providers_for`).  With ``"cuda"`` the
        session must really run on CUDA: ONNX Runtime silently falls back to
        the CPU when the CUDA libraries fail to load, and that fallback
        raises :class:`ProviderUnavailableError` here.
    threads : int
        Intra-op threads (0: ONNX Runtime's default); inter-op is always 1.
    optimize : bool
        Full graph optimisation (``False``: none, for inspecting a model).

    Returns
    -------
    onnxruntime.InferenceSession
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(os.fspath(model_path), options, providers=providers_for(device))
    active = session.get_providers()
    if str(device).lower() == "cuda" and (not active or active[0] != _CUDA):
        raise ProviderUnavailableError(
            f"--device cuda: ONNX Runtime could not start the CUDA provider (active: "
            f"{', '.join(active)}); check the CUDA and cuDNN libraries match onnxruntime-gpu "
            f"{ort.__version__}, or use --device cpu"
        )
    log.info("ONNX Runtime session for %s on %s", model_path, active[0])
    return session


def active_provider(spec: SessionSpec) -> str:
    """Name of the execution provider the session for ``spec`` runs on."""
    return get_session(spec).get_providers()[0]


def run_model(spec: SessionSpec, batch: np.ndarray, *, model_channels: int) -> np.ndarray:
    """Run the model on ``batch`` of shape ``(N, C, H, W)`` (``float32``).

    When the model takes one channel and the batch has ``C > 1``, every
    channel is run as its own image (fluorescence: one model for all channels).
    On the CPU the images go to ONNX Runtime in calls of at most
    :data:`CPU_PIXELS_PER_CALL` pixels (at least one image per call).

    Returns
    -------
    numpy.ndarray
        ``float32`` array of the same shape as ``batch``.
    """
    session = get_session(spec)
    n, c, h, w = batch.shape
    flat = batch.reshape(n * c, 1, h, w) if (model_channels == 1 and c > 1) else batch
    name = session.get_inputs()[0].name
    per_call = len(flat)
    if session.get_providers()[0] == _CPU:
        per_call = max(1, CPU_PIXELS_PER_CALL // (h * w))
    out = np.empty(flat.shape, dtype=np.float32)
    for i in range(0, len(flat), per_call):
        part = np.ascontiguousarray(flat[i:i + per_call], dtype=np.float32)
        (result,) = session.run(None, {name: part})[:1]
        if result.shape != part.shape:
            raise RuntimeError(
                f"model {spec.model_path} returned shape {result.shape} for input {part.shape}; "
                f"the model contract requires the same shape"
            )
        out[i:i + per_call] = result
    return out.reshape(n, c, h, w)
