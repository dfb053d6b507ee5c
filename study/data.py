"""CIFAR-10 as preloaded tensors: find it, fingerprint it, decode it once, cache it.

Two on-disk layouts are accepted, chosen by the directory the user names:

- ``torchvision``: ``<dir>/cifar-10-batches-py/`` as torchvision downloads it (``download=True``
  fetches it when online), or that folder itself;
- ``imagefolder``: ``<dir>/train/<class>/*`` and ``<dir>/test/<class>/*`` image files, with
  classes in sorted folder order (the layout of the JPEG copy in ``shared/data/cifar10-jpeg``).

Decoding happens once. The uint8 tensors are cached in ``cache_dir`` under the source's
*content* fingerprint; a cheap *stat signature* (relative paths, sizes, mtimes) maps the source
to that fingerprint, so later runs list the directory, load the cache and never re-read the
images. Caches are written to a temporary file and renamed into place under a file lock, and
carry a checksum that is verified on load: a truncated or corrupt cache is rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_SUFFIXES_ANY_CASE = IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES)
CACHE_FORMAT = 1  # bump when the cache layout changes
# The lecture's normalization: transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)).
MEAN, STD = 0.5, 0.5


class DataNotFoundError(FileNotFoundError):
    """CIFAR-10 is not where the user said; the message says where we looked and what to do."""


@dataclass(frozen=True)
class DataInfo:
    """What a run's data was; logged as tags and as an MLflow dataset input."""

    layout: str  # "torchvision" or "imagefolder"
    path: str  # absolute path of the source directory
    fingerprint: str  # sha256 of the source's content (file names and bytes)
    encoding: str  # "cifar-python-pickle" (official) or the image suffixes found, e.g. "jpeg"
    n_train: int  # sizes of the full splits in the source
    n_test: int
    classes: tuple[str, ...] = CLASSES


@dataclass
class Cifar10:
    """Decoded CIFAR-10: uint8 images (N, 3, 32, 32) and int64 labels (N,)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    info: DataInfo


# ---------------------------------------------------------------------------------------
# Locating the data
# ---------------------------------------------------------------------------------------

def default_data_dir() -> Path:
    """``$CIFAR10_DIR`` if set, else ``./data``."""
    return Path(os.environ.get("CIFAR10_DIR") or "data")


def default_cache_dir() -> Path:
    """``$OPTSTUDY_CACHE_DIR`` if set, else ``~/.cache/optstudy``."""
    env = os.environ.get("OPTSTUDY_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "optstudy"


def _how_to_provide(root: Path) -> str:
    return (
        f"CIFAR-10 was not found in {root.resolve()}.\n"
        "Looked for:\n"
        f"  - {root / 'cifar-10-batches-py'}/ (torchvision's official layout), or the folder itself\n"
        f"  - {root / 'train'}/<class>/*.jpg and {root / 'test'}/<class>/*.jpg (ImageFolder layout)\n"
        "Provide it by one of:\n"
        "  - --data-dir PATH or CIFAR10_DIR=PATH pointing at either layout\n"
        "    (on this project's machines: CIFAR10_DIR=../shared/data/cifar10-jpeg)\n"
        "  - --download (with internet access) to fetch the official archive through torchvision"
    )


def detect_layout(root: Path) -> tuple[str, Path]:
    """Return ``(layout, source_dir)`` for a data directory, or raise DataNotFoundError."""
    root = Path(root)
    for candidate in (root / "cifar-10-batches-py", root):
        if (candidate / "data_batch_1").is_file() and (candidate / "test_batch").is_file():
            return "torchvision", candidate.resolve()
    if (root / "train").is_dir() and (root / "test").is_dir():
        train_classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        test_classes = sorted(p.name for p in (root / "test").iterdir() if p.is_dir())
        if train_classes and train_classes == test_classes:
            if len(train_classes) != len(CLASSES):
                raise DataNotFoundError(
                    f"{root.resolve()} has {len(train_classes)} class folders "
                    f"({', '.join(train_classes)}); CIFAR-10 needs 10: {', '.join(CLASSES)}")
            return "imagefolder", root.resolve()
    raise DataNotFoundError(_how_to_provide(root))


def _source_files(layout: str, src: Path) -> list[tuple[str, os.stat_result]]:
    """(path relative to ``src``, stat) of every source file, in a fixed order."""
    if layout == "torchvision":
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
        return [(n, (src / n).stat()) for n in names if (src / n).exists()]
    files = []
    for split in ("train", "test"):
        for cls in sorted(os.listdir(src / split)):
            cls_dir = os.path.join(src, split, cls)
            if not os.path.isdir(cls_dir):
                continue
            with os.scandir(cls_dir) as entries:  # scandir: no per-file path objects
                found = sorted([(e.name, e.stat()) for e in entries if e.name.endswith(_SUFFIXES_ANY_CASE)])
            files.extend((f"{split}/{cls}/{name}", st) for name, st in found)
    return files


def stat_signature(layout: str, src: Path) -> str:
    """A cheap signature of the source (paths, sizes, mtimes): no file content is read."""
    lines = [f"{rel}:{st.st_size}:{st.st_mtime_ns}" for rel, st in _source_files(layout, src)]
    return hashlib.sha256(f"{CACHE_FORMAT}:{layout}\n".encode() + "\n".join(lines).encode()).hexdigest()


def content_fingerprint(layout: str, src: Path) -> str:
    """sha256 over every source file's relative path and bytes: the data set's identity."""
    h = hashlib.sha256(layout.encode())
    for rel, _ in _source_files(layout, src):
        h.update(rel.encode() + b"\0")
        h.update((src / rel).read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------

def _decode_torchvision(src: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    def load(names):
        xs, ys = [], []
        for name in names:
            with open(src / name, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    tx, ty = load([f"data_batch_{i}" for i in range(1, 6)])
    vx, vy = load(["test_batch"])
    return tx, ty, vx, vy


def _decode_imagefolder(src: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from PIL import Image

    out = []
    for split in ("train", "test"):
        classes = sorted(p.name for p in (src / split).iterdir() if p.is_dir())
        xs, ys = [], []
        for label, cls in enumerate(classes):
            for p in sorted((src / split / cls).iterdir()):
                if p.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                with Image.open(p) as im:
                    arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
                if arr.shape != (32, 32, 3):
                    raise ValueError(f"{p} is {arr.shape[1]}x{arr.shape[0]}; CIFAR-10 images are 32x32")
                xs.append(arr.transpose(2, 0, 1))
                ys.append(label)
        out += [np.stack(xs), np.asarray(ys, dtype=np.int64)]
    return tuple(out)  # type: ignore[return-value]


def _encoding(layout: str, src: Path) -> str:
    if layout == "torchvision":
        return "cifar-python-pickle"
    suffixes = sorted({rel.rsplit(".", 1)[-1].lower() for rel, _ in _source_files(layout, src)})
    return "+".join("jpeg" if s in ("jpg", "jpeg") else s for s in suffixes)


# ---------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------

def _checksum(arrays: list[np.ndarray]) -> str:
    crc = 0
    for a in arrays:
        crc = zlib.crc32(memoryview(np.ascontiguousarray(a)).cast("B"), crc)
    return f"{crc:08x}"


def _write_atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_MAGIC = b"OPTSTUDY-CIFAR10\n"
_ARRAYS = ("train_x", "train_y", "test_x", "test_y")


def _save_cache(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Cache layout: magic, 8-byte header length, JSON header (meta, shapes, dtypes, checksum),
    then the raw arrays back to back. Raw bytes load at disk/page-cache speed."""
    arrays = {k: np.ascontiguousarray(arrays[k]) for k in _ARRAYS}
    header = dict(meta, format=CACHE_FORMAT, checksum=_checksum(list(arrays.values())),
                  arrays={k: {"shape": list(a.shape), "dtype": a.dtype.str} for k, a in arrays.items()})
    blob = json.dumps(header).encode()

    def write(f):
        f.write(_MAGIC + len(blob).to_bytes(8, "little") + blob)
        for a in arrays.values():
            f.write(memoryview(a).cast("B"))
    _write_atomic(path, write)


def _load_cache(path: Path) -> tuple[dict[str, np.ndarray], dict] | None:
    """Load and verify a cache file; None if it is missing, truncated or corrupt."""
    try:
        with open(path, "rb") as f:
            if f.read(len(_MAGIC)) != _MAGIC:
                return None
            meta = json.loads(f.read(int.from_bytes(f.read(8), "little")))
            if meta.get("format") != CACHE_FORMAT:
                return None
            arrays = {}
            for k in _ARRAYS:
                spec = meta["arrays"][k]
                a = np.empty(spec["shape"], dtype=np.dtype(spec["dtype"]))
                if f.readinto(memoryview(a).cast("B")) != a.nbytes:
                    return None  # truncated
                arrays[k] = a
            if f.read(1):
                return None  # trailing bytes: not what we wrote
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing, unreadable header...: never use it
    if meta.get("checksum") != _checksum(list(arrays.values())):
        return None
    return arrays, meta


def load_cifar10(data_dir: str | Path | None = None, *, cache_dir: str | Path | None = None,
                 download: bool = False) -> Cifar10:
    """Load CIFAR-10 as uint8 tensors, decoding and caching it on first use.

    Args:
      data_dir: the directory holding either layout (default: :func:`default_data_dir`).
      cache_dir: where decoded tensors are cached (default: :func:`default_cache_dir`).
      download: fetch the official archive through torchvision first if it is missing
        (needs internet access).

    Returns:
      A :class:`Cifar10` with the full train and test splits and their :class:`DataInfo`.

    Raises:
      DataNotFoundError: the directory holds neither layout.
    """
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if download:
        try:
            detect_layout(root)
        except DataNotFoundError:
            import torchvision

            torchvision.datasets.CIFAR10(root=str(root), train=True, download=True)
    layout, src = detect_layout(root)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)

    sig = stat_signature(layout, src)
    index_path = cache / f"source-{sig[:24]}.json"
    with FileLock(str(cache / f"source-{sig[:24]}.lock")):
        fingerprint = None
        if index_path.is_file():
            try:
                fingerprint = json.loads(index_path.read_text())["fingerprint"]
            except (ValueError, KeyError):
                fingerprint = None  # a damaged index is recomputed
        if fingerprint is None:
            fingerprint = content_fingerprint(layout, src)
            payload = json.dumps({"fingerprint": fingerprint, "layout": layout, "path": str(src)})
            _write_atomic(index_path, lambda f: f.write(payload.encode()))
        tensor_path = cache / f"cifar10-{fingerprint[:24]}.bin"
        loaded = _load_cache(tensor_path)
        if loaded is None:
            t0 = time.perf_counter()
            decode = _decode_torchvision if layout == "torchvision" else _decode_imagefolder
            # C-contiguous, as a cached load returns them: np.stack of HWC->CHW views is
            # channels-last in memory, which breaks `x.view` in the models and changes conv bits.
            tx, ty, vx, vy = (np.ascontiguousarray(a) for a in decode(src))
            arrays = {"train_x": tx, "train_y": ty, "test_x": vx, "test_y": vy}
            meta = {"fingerprint": fingerprint, "layout": layout, "path": str(src),
                    "encoding": _encoding(layout, src), "decode_seconds": time.perf_counter() - t0}
            _save_cache(tensor_path, arrays, meta)
            loaded = arrays, meta
    arrays, meta = loaded
    info = DataInfo(layout=layout, path=str(src), fingerprint=fingerprint, encoding=meta["encoding"],
                    n_train=len(arrays["train_y"]), n_test=len(arrays["test_y"]))
    return Cifar10(*(torch.from_numpy(arrays[k]) for k in ("train_x", "train_y", "test_x", "test_y")),
                   info=info)


# ---------------------------------------------------------------------------------------
# Subsets and normalization
# ---------------------------------------------------------------------------------------

def stratified_subset(labels: torch.Tensor, limit: int | None, seed: int) -> torch.Tensor:
    """Indices of a seeded, class-stratified subset of ``limit`` examples (sorted).

    Each class gets ``limit // n_classes`` examples; the remainder goes to classes drawn by
    the same seeded generator. ``None`` or a limit >= len(labels) returns every index.

    Raises:
      ValueError: ``limit`` < number of classes, or a class has too few examples.
    """
    n = len(labels)
    if limit is None or limit >= n:
        return torch.arange(n)
    classes = torch.unique(labels)
    k = len(classes)
    if limit < k:
        raise ValueError(f"limit={limit} is too small for a class-stratified subset; "
                         f"it must be at least the number of classes ({k})")
    g = torch.Generator().manual_seed(seed)
    per_class = torch.full((k,), limit // k, dtype=torch.long)
    per_class[torch.randperm(k, generator=g)[: limit % k]] += 1
    chosen = []
    for c, m in zip(classes.tolist(), per_class.tolist()):
        idx = torch.nonzero(labels == c).flatten()
        if m > len(idx):
            raise ValueError(f"limit={limit} asks for {m} examples of class {c}, which has {len(idx)}")
        chosen.append(idx[torch.randperm(len(idx), generator=g)[:m]])
    return torch.sort(torch.cat(chosen)).values


def normalize(x_uint8: torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 (N,3,32,32) -> float32 in [-1, 1]: ToTensor() then Normalize(0.5, 0.5), on tensors."""
    x = x_uint8.to(device=device, dtype=torch.float32).div_(255.0)
    return x.sub_(MEAN).div_(STD)


@dataclass
class Prepared:
    """Float tensors ready for the training loop, on the run's device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    info: DataInfo


def prepare(data: Cifar10, *, train_limit: int | None, test_limit: int | None, subset_seed: int,
            device: str | torch.device = "cpu") -> Prepared:
    """Subset (seeded, stratified) and normalize the splits once, on the target device."""
    tr = stratified_subset(data.train_y, train_limit, subset_seed)
    te = stratified_subset(data.test_y, test_limit, subset_seed + 1)
    return Prepared(normalize(data.train_x[tr], device), data.train_y[tr].to(device),
                    normalize(data.test_x[te], device), data.test_y[te].to(device), data.info)
