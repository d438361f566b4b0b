"""The on-disk training-pair format (zarr v3) and its lazy, torch-free reader.

Layout of a dataset group (``*.zarr`` folder)::

    inputs         (N, P, P, C)  defocused patches   } stored dtype (uint8/uint16),
    targets        (N, P, P, C)  in-focus patches    } value = stored / intensity_scale
    z_um           (N,)  float32 defocus (known for simulation; plane offset x step for stacks)
    pixel_size_um  (N,)  float32
    fov            (N,)  int32   field of view (the split unit)
    split          (N,)  uint8   0 = train, 1 = validation
    source         (N,)  int16   index into attrs["sources"]
    origin         (N, 2) int32  top-left (y, x) of the target patch in its source frame
    input_plane, target_plane (N,) int16   stack plane positions (-1 when simulated)
    na, spherical_waves (N,) float32; tilt (N, 2) float32 dz/dy, dz/dx (NaN/0 when not known)

``attrs["wsi_deepr_dataset"]`` holds the format name and version, modality,
channel names, patch size, ``intensity_scale``, the normalisation statistics
of the training split (per-channel mean/std of inputs and targets, *not*
applied to the stored pixels), the sources and builder settings (provenance)
and a summary.  Pixel arrays are chunked one sample per chunk inside shards
of ``shard`` samples, so random access reads one small chunk.
"""

from __future__ import annotations

import datetime as _dt
import logging
import shutil
from pathlib import Path

import numpy as np

from wsi_deepr._version import __version__
from wsi_deepr.errors import OutputExistsError, SlideNotFoundError, UnsupportedFormatError
from wsi_deepr.data.pairs import RunningStats, dihedral

__all__ = ["FORMAT", "VERSION", "PairDataset", "PairDatasetWriter", "read_attrs", "summarize"]

log = logging.getLogger(__name__)

FORMAT = "wsi-deepr-pairs"
VERSION = 1
_ATTR = "wsi_deepr_dataset"
_META = {
    "z_um": ("float32", ()), "pixel_size_um": ("float32", ()), "fov": ("int32", ()),
    "split": ("uint8", ()), "source": ("int16", ()), "origin": ("int32", (2,)),
    "input_plane": ("int16", ()), "target_plane": ("int16", ()), "na": ("float32", ()),
    "spherical_waves": ("float32", ()), "tilt": ("float32", (2,)),
}
_DEFAULTS = {"input_plane": -1, "target_plane": -1, "na": np.nan, "spherical_waves": np.nan,
             "tilt": (0.0, 0.0), "origin": (0, 0)}


class PairDatasetWriter:
    """Append (input, target) pairs and their metadata, then :meth:`close`.

    Parameters
    ----------
    path : str or Path
        The ``.zarr`` folder to create.
    patch_size : int
        Side of the square patches.
    channels : tuple of str
        Channel names (3 for brightfield RGB).
    modality : {"brightfield", "fluorescence"}
        Imaging modality.
    kind : {"simulated", "zstack"}
        Which builder made it.
    storage_dtype : {"uint8", "uint16"}
        Stored pixel type; float inputs in ``[0, 1]`` are scaled by its maximum.
    shard : int
        Samples per shard.
    overwrite : bool
        Replace an existing dataset at ``path``.
    """

    def __init__(
        self, path: str | Path, *, patch_size: int, channels: tuple[str, ...], modality: str,
        kind: str, storage_dtype: str = "uint16", shard: int = 64, overwrite: bool = False,
    ) -> None:
        import zarr

        self.path = Path(path)
        if self.path.exists():
            if not overwrite:
                raise OutputExistsError(f"{self.path} exists: pass overwrite=True (--overwrite) to replace it")
            shutil.rmtree(self.path) if self.path.is_dir() else self.path.unlink()
        if storage_dtype not in ("uint8", "uint16"):
            raise ValueError(f"storage_dtype={storage_dtype!r}: use 'uint8' or 'uint16'")
        self.patch_size, self.channels, self.modality, self.kind = int(patch_size), tuple(channels), modality, kind
        self.dtype = np.dtype(storage_dtype)
        self.scale = float(np.iinfo(self.dtype).max)
        self.shard = int(shard)
        self._group = zarr.open_group(str(self.path), mode="w")
        shape = (0, self.patch_size, self.patch_size, len(self.channels))
        for name in ("inputs", "targets"):
            self._group.create_array(name, shape=shape, chunks=(1,) + shape[1:],
                                     shards=(self.shard,) + shape[1:], dtype=self.dtype, fill_value=0)
        self._buf: dict[str, list] = {"inputs": [], "targets": []}
        self._meta: dict[str, list] = {k: [] for k in _META}
        self._n = 0
        self._stats = {"input": RunningStats(len(self.channels)), "target": RunningStats(len(self.channels))}

    def __len__(self) -> int:
        return self._n + len(self._buf["inputs"])

    def _quantise(self, img: np.ndarray) -> np.ndarray:
        arr = np.asarray(img)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        expect = (self.patch_size, self.patch_size, len(self.channels))
        if arr.shape != expect:
            raise ValueError(f"patch of shape {arr.shape}: this dataset stores {expect}")
        if arr.dtype == self.dtype:  # already quantised by the caller
            return arr
        if arr.dtype.kind in "ui":
            raise ValueError(f"patch of dtype {arr.dtype}: give floats in [0, 1] or {self.dtype} values")
        return np.rint(np.clip(arr.astype(np.float32), 0.0, 1.0) * self.scale).astype(self.dtype)

    def add(self, inp: np.ndarray, target: np.ndarray, *, z_um: float, pixel_size_um: float,
            fov: int, split: int, source: int, **meta: object) -> None:
        """Append one pair (floats in ``[0, 1]``, or values of the storage dtype) with its metadata.

        ``meta`` may hold ``origin``, ``input_plane``, ``target_plane``, ``na``,
        ``spherical_waves`` and ``tilt``.
        """
        unknown = set(meta) - set(_META)
        if unknown:
            raise ValueError(f"unknown metadata {sorted(unknown)}: use {sorted(_META)}")
        qi, qt = self._quantise(inp), self._quantise(target)
        self._buf["inputs"].append(qi)
        self._buf["targets"].append(qt)
        values = {"z_um": z_um, "pixel_size_um": pixel_size_um, "fov": fov, "split": split,
                  "source": source, **_DEFAULTS, **meta}
        for k in _META:
            self._meta[k].append(values[k])
        if split == 0:
            self._stats["input"].update(qi.astype(np.float32) / self.scale)
            self._stats["target"].update(qt.astype(np.float32) / self.scale)
        if len(self._buf["inputs"]) >= self.shard:
            self._flush()

    def _flush(self) -> None:
        k = len(self._buf["inputs"])
        if not k:
            return
        for name in ("inputs", "targets"):
            arr = self._group[name]
            arr.resize((self._n + k,) + arr.shape[1:])
            arr[self._n : self._n + k] = np.stack(self._buf[name])
            self._buf[name] = []
        self._n += k

    def close(self, *, sources: list[dict], settings: dict, notes: str = "") -> dict:
        """Write the metadata arrays and attributes; return the summary."""
        self._flush()
        for k, (dt, tail) in _META.items():
            data = np.asarray(self._meta[k], dtype=dt).reshape((self._n,) + tail)
            self._group.create_array(k, data=data, chunks=(max(1, self._n),) + tail)
        summary = _summary(self._meta, sources)
        attrs = {
            "format": FORMAT, "version": VERSION, "kind": self.kind, "modality": self.modality,
            "channels": list(self.channels), "patch_size": self.patch_size,
            "storage_dtype": self.dtype.name, "intensity_scale": self.scale,
            "normalization": {"split": "train", "applied": False,
                              "input": self._stats["input"].result(),
                              "target": self._stats["target"].result()},
            "sources": sources, "settings": settings, "summary": summary, "notes": notes,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "wsi_deepr_version": __version__,
        }
        self._group.attrs[_ATTR] = _jsonable(attrs)
        log.info("wrote %d pairs to %s", self._n, self.path)
        return summary


def _jsonable(obj: object) -> object:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _hist(values: np.ndarray, edges: np.ndarray) -> dict:
    counts, edges = np.histogram(values, bins=edges)
    return {"edges": [round(float(e), 4) for e in edges], "counts": counts.tolist()}


def _summary(meta: dict[str, list], sources: list[dict]) -> dict:
    z = np.asarray(meta["z_um"], dtype=np.float64)
    px = np.asarray(meta["pixel_size_um"], dtype=np.float64)
    split = np.asarray(meta["split"])
    fov = np.asarray(meta["fov"])
    src = np.asarray(meta["source"])
    out: dict = {"pairs": int(z.size), "train": int((split == 0).sum()), "val": int((split == 1).sum()),
                 "fov_train": int(np.unique(fov[split == 0]).size),
                 "fov_val": int(np.unique(fov[split == 1]).size)}
    if z.size:
        zlim = max(1e-6, float(np.abs(z).max()))
        out["z_um"] = {"min": float(z.min()), "max": float(z.max()), "mean_abs": float(np.abs(z).mean()),
                       "hist": _hist(z, np.linspace(-zlim, zlim, 11))}
        known = px[np.isfinite(px)]
        if known.size:
            out["pixel_size_um"] = {"min": float(known.min()), "max": float(known.max()),
                                    "quantiles_10_50_90": np.quantile(known, [0.1, 0.5, 0.9]).round(4).tolist(),
                                    "hist": _hist(known, np.linspace(known.min(), known.max() + 1e-6, 6)),
                                    "unknown": int(px.size - known.size)}
        else:
            out["pixel_size_um"] = {"unknown": int(px.size)}
        names = [s.get("name", str(i)) for i, s in enumerate(sources)]
        out["per_source"] = {names[i] if i < len(names) else str(i): int((src == i).sum())
                             for i in np.unique(src)}
        tilt = np.asarray(meta["tilt"], dtype=np.float64).reshape(-1, 2)
        out["tilted"] = int((np.abs(tilt).sum(axis=1) > 0).sum())
    return out


def read_attrs(path: str | Path) -> dict:
    """The ``wsi_deepr_dataset`` attributes of a dataset (format-checked)."""
    import zarr

    p = Path(path)
    if not p.exists():
        raise SlideNotFoundError(f"{p}: no such dataset (build one with `wsi-deepr dataset`)")
    try:
        group = zarr.open_group(str(p), mode="r")
        attrs = dict(group.attrs[_ATTR])
    except Exception as exc:  # noqa: BLE001 - any zarr failure means "not our format"
        raise UnsupportedFormatError(f"{p}: not a wsi-deepr pair dataset ({exc})") from None
    if attrs.get("format") != FORMAT or int(attrs.get("version", 0)) > VERSION:
        raise UnsupportedFormatError(
            f"{p}: format {attrs.get('format')!r} v{attrs.get('version')}; this reader handles "
            f"{FORMAT} up to v{VERSION}: upgrade wsi-deepr"
        )
    return attrs


def summarize(path: str | Path) -> dict:
    """Summary, normalisation and provenance of a dataset, as stored."""
    attrs = read_attrs(path)
    return {k: attrs.get(k) for k in ("kind", "modality", "channels", "patch_size", "summary",
                                      "normalization", "sources", "settings", "created", "notes")}


class PairDataset:
    """Lazy random access to a pair dataset; a torch-``Dataset``-compatible object.

    Parameters
    ----------
    path : str or Path
        The dataset folder.
    split : {"train", "val", "all"}
        Which samples.
    augment : bool
        Apply a random one of the 8 flips/rotations to each sample (the same to
        input and target).  For training only.
    normalize : bool
        Subtract the recorded training-split mean and divide by its std, per
        channel (inputs and targets with their own statistics).
    layout : {"CHW", "HWC"}
        Axis order of the returned arrays.
    seed : int, optional
        Seed of the augmentation generator (created lazily in each process).

    Notes
    -----
    ``ds[i]`` returns a dict: ``input`` and ``target`` (float32), ``z_um``,
    ``pixel_size_um`` (float32 scalars) and ``index`` (row in the store).
    The store is opened on first access in each process, so the object
    pickles cheaply into data-loader workers.
    """

    def __init__(self, path: str | Path, *, split: str = "train", augment: bool = False,
                 normalize: bool = True, layout: str = "CHW", seed: int | None = None) -> None:
        import zarr

        self.path = Path(path)
        self.attrs = read_attrs(self.path)
        if split not in ("train", "val", "all"):
            raise ValueError(f"split={split!r}: use 'train', 'val' or 'all'")
        if layout not in ("CHW", "HWC"):
            raise ValueError(f"layout={layout!r}: use 'CHW' or 'HWC'")
        self.split, self.augment, self.normalize, self.layout, self.seed = split, augment, normalize, layout, seed
        group = zarr.open_group(str(self.path), mode="r")
        codes = group["split"][:]
        self.indices = np.arange(codes.size) if split == "all" else np.nonzero(codes == (split == "val"))[0]
        self._z = group["z_um"][:]
        self._px = group["pixel_size_um"][:]
        norm = self.attrs["normalization"]
        self._norm = {k: (np.asarray(norm[k]["mean"], np.float32), np.asarray(norm[k]["std"], np.float32))
                      for k in ("input", "target")}
        self._scale = np.float32(self.attrs["intensity_scale"])
        self._group = None
        self._rng: np.random.Generator | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_group"] = None
        state["_rng"] = None
        return state

    def __len__(self) -> int:
        return int(self.indices.size)

    @property
    def normalization(self) -> dict:
        """The recorded per-channel statistics (training split)."""
        return self.attrs["normalization"]

    def _open(self):
        if self._group is None:
            import zarr

            self._group = zarr.open_group(str(self.path), mode="r")
        return self._group

    def _prepare(self, arr: np.ndarray, which: str, k: int) -> np.ndarray:
        img = arr.astype(np.float32) / self._scale
        if self.normalize:
            mean, std = self._norm[which]
            img = (img - mean) / np.where(std > 0, std, 1.0)
        if k:
            img = dihedral(img, k)
        if self.layout == "CHW":
            img = np.moveaxis(img, -1, 0)
        return np.ascontiguousarray(img)

    def __getitem__(self, i: int) -> dict:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} samples")
        row = int(self.indices[i])
        group = self._open()
        k = 0
        if self.augment:
            if self._rng is None:
                self._rng = np.random.default_rng(self.seed)
            k = int(self._rng.integers(0, 8))
        return {"input": self._prepare(group["inputs"][row], "input", k),
                "target": self._prepare(group["targets"][row], "target", k),
                "z_um": np.float32(self._z[row]), "pixel_size_um": np.float32(self._px[row]),
                "index": row}
