"""Tests for study.data: both layouts, fingerprints, the decode-once cache and its integrity,
concurrent builders, stratified subsets and the lecture's normalization.

References: PIL decodes each JPEG independently of the loader, torchvision's transforms give
the lecture's normalization, and a torchvision-layout copy is written here from the mini set.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

import study.data as sd
from study.data import (CLASSES, DataNotFoundError, content_fingerprint, load_cifar10, normalize,
                        prepare, stat_signature, stratified_subset)

REPO = Path(__file__).resolve().parent.parent
N_TRAIN, N_TEST = 300, 100  # the bundled mini set: 30 train and 10 test images per class


def image_files(root: Path, split: str) -> list[tuple[Path, int]]:
    """(file, label) in ImageFolder order: class folders sorted, label = folder index."""
    classes = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
    return [(f, label) for label, c in enumerate(classes) for f in sorted((root / split / c).glob("*.jpg"))]


def pil_chw(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).transpose(2, 0, 1)


def same_data(a, b) -> bool:
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("train_x", "train_y", "test_x", "test_y"))


def cache_files(cache: Path, pattern: str = "cifar10-*.bin") -> list[Path]:
    return sorted(cache.glob(pattern))


@pytest.fixture
def counting_decoder(monkeypatch):
    """Wrap the ImageFolder decoder and count its calls."""
    calls = []
    real = sd._decode_imagefolder

    def counted(src):
        calls.append(src)
        return real(src)

    monkeypatch.setattr(sd, "_decode_imagefolder", counted)
    return calls


# ---------------------------------------------------------------------------
# ImageFolder layout
# ---------------------------------------------------------------------------

def test_imagefolder_shapes_dtypes_and_info(mini_data, mini_dir):
    d = mini_data
    assert d.train_x.shape == (N_TRAIN, 3, 32, 32) and d.test_x.shape == (N_TEST, 3, 32, 32)
    assert d.train_x.dtype == d.test_x.dtype == torch.uint8
    assert d.train_y.shape == (N_TRAIN,) and d.test_y.shape == (N_TEST,)
    assert d.train_y.dtype == d.test_y.dtype == torch.int64
    assert d.info.layout == "imagefolder" and d.info.encoding == "jpeg"
    assert (d.info.n_train, d.info.n_test) == (N_TRAIN, N_TEST)
    assert d.info.path == str(mini_dir.resolve()) and d.info.classes == CLASSES
    assert len(d.info.fingerprint) == 64


@pytest.mark.parametrize("split", ["train", "test"])
def test_imagefolder_pixels_and_labels_match_pil(mini_data, mini_dir, split):
    """Each image, in sorted order, decoded by PIL on its own; label = sorted class folder index."""
    xs, ys = getattr(mini_data, f"{split}_x"), getattr(mini_data, f"{split}_y")
    files = image_files(mini_dir, split)
    assert len(files) == len(ys)
    assert [label for _, label in files] == ys.tolist()
    for i, (f, label) in enumerate(files):
        assert np.array_equal(xs[i].numpy(), pil_chw(f)), f
        assert CLASSES[label] == f.parent.name
    assert Counter(ys.tolist()) == {c: len(ys) // 10 for c in range(10)}


def test_first_load_and_cached_load_are_alike(mini_dir, tmp_path, counting_decoder):
    """The decoding load and the cached load return the same, C-contiguous tensors: a
    channels-last first load would break the models' x.view() and change conv rounding."""
    first = load_cifar10(mini_dir, cache_dir=tmp_path)
    second = load_cifar10(mini_dir, cache_dir=tmp_path)
    assert len(counting_decoder) == 1
    assert same_data(first, second) and first.info == second.info
    for d in (first, second):
        assert d.train_x.is_contiguous() and d.test_x.is_contiguous()


# ---------------------------------------------------------------------------
# torchvision layout
# ---------------------------------------------------------------------------

def write_torchvision_layout(root: Path, data) -> Path:
    """cifar-10-batches-py as torchvision extracts it: 5 train batches, a test batch, a meta file;
    each batch a pickled dict with ``data`` uint8 (N, 3072) in CHW order and ``labels``."""
    out = root / "cifar-10-batches-py"
    out.mkdir(parents=True)

    def dump(name, x, y):
        entry = {"batch_label": name, "labels": y.tolist(),
                 "data": x.numpy().reshape(len(x), 3072),
                 "filenames": [f"{name}_{i}.png" for i in range(len(x))]}
        with open(out / name, "wb") as f:
            pickle.dump(entry, f)

    for i, idx in enumerate(torch.arange(len(data.train_y)).chunk(5), start=1):
        dump(f"data_batch_{i}", data.train_x[idx], data.train_y[idx])
    dump("test_batch", data.test_x, data.test_y)
    with open(out / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CLASSES), "num_cases_per_batch": len(data.train_y) // 5}, f)
    return out


def test_torchvision_layout_gives_the_source_tensors(mini_data, tmp_path):
    batches = write_torchvision_layout(tmp_path / "data", mini_data)
    # the parent folder and the batches folder itself are both accepted
    for where in (tmp_path / "data", batches):
        d = load_cifar10(where, cache_dir=tmp_path / "cache")
        assert same_data(d, mini_data)
        assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
        assert d.train_x.is_contiguous()
        assert d.info.layout == "torchvision" and d.info.encoding == "cifar-python-pickle"
        assert d.info.path == str(batches.resolve())
        assert (d.info.n_train, d.info.n_test) == (N_TRAIN, N_TEST)
        assert d.info.fingerprint != mini_data.info.fingerprint  # other bytes, other data set


# ---------------------------------------------------------------------------
# Fingerprints and the stat signature
# ---------------------------------------------------------------------------

@pytest.fixture
def mini_copy(mini_dir, tmp_path) -> Path:
    dst = tmp_path / "mini"
    shutil.copytree(mini_dir, dst)
    return dst


def test_fingerprint_is_content_not_timestamps(mini_copy, mini_data, tmp_path):
    cache = tmp_path / "cache"
    base = load_cifar10(mini_copy, cache_dir=cache)
    assert base.info.fingerprint == mini_data.info.fingerprint  # a byte copy is the same data
    sig = stat_signature("imagefolder", mini_copy)

    # re-touched with the same bytes: the stat signature changes, the fingerprint does not
    target = mini_copy / "train" / "cat" / "0000.jpg"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert stat_signature("imagefolder", mini_copy) != sig
    touched = load_cifar10(mini_copy, cache_dir=cache)
    assert touched.info.fingerprint == base.info.fingerprint
    assert content_fingerprint("imagefolder", mini_copy) == base.info.fingerprint
    assert same_data(touched, base)

    # a non-image file in a class folder is not part of the data set
    (mini_copy / "train" / "cat" / "notes.txt").write_text("not an image")
    assert content_fingerprint("imagefolder", mini_copy) == base.info.fingerprint

    # one file's bytes changed (another image copied over it): another fingerprint, other pixels
    other = mini_copy / "train" / "cat" / "0001.jpg"
    target.write_bytes(other.read_bytes())
    changed = load_cifar10(mini_copy, cache_dir=cache)
    assert changed.info.fingerprint != base.info.fingerprint
    i = [f for f, _ in image_files(mini_copy, "train")].index(target)
    assert torch.equal(changed.train_x[i], changed.train_x[i + 1])
    assert not torch.equal(changed.train_x[i], base.train_x[i])
    assert len(cache_files(cache)) == 2  # one cache per content


def test_fingerprint_covers_file_names(mini_copy, mini_data, tmp_path):
    """The last cat moved to the front of deer: the byte stream read in sorted order is the
    same, but one label changed; only the file names in the fingerprint tell the two apart."""
    (mini_copy / "test" / "cat" / "0009.jpg").rename(mini_copy / "test" / "deer" / "0.jpg")
    moved = load_cifar10(mini_copy, cache_dir=tmp_path / "cache")
    assert torch.equal(moved.test_x, mini_data.test_x)
    changed = torch.nonzero(moved.test_y != mini_data.test_y).flatten().tolist()
    assert len(changed) == 1 and (mini_data.test_y[changed[0]], moved.test_y[changed[0]]) == (3, 4)
    assert moved.info.fingerprint != mini_data.info.fingerprint


# ---------------------------------------------------------------------------
# Decode once; detect damaged caches
# ---------------------------------------------------------------------------

def test_second_load_neither_decodes_nor_reads_images(mini_dir, tmp_path, monkeypatch):
    first = load_cifar10(mini_dir, cache_dir=tmp_path)

    def refuse(*args):
        raise AssertionError("decoded or fingerprinted again")

    monkeypatch.setattr(sd, "_decode_imagefolder", refuse)
    monkeypatch.setattr(sd, "content_fingerprint", refuse)
    second = load_cifar10(mini_dir, cache_dir=tmp_path)
    assert same_data(first, second) and first.info == second.info
    # the patch is live: a fresh cache has to decode, and is refused
    with pytest.raises(AssertionError, match="again"):
        load_cifar10(mini_dir, cache_dir=tmp_path / "fresh")


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip_byte(offset_from_end: int):
    def damage(p: Path) -> None:
        b = bytearray(p.read_bytes())
        b[-offset_from_end] ^= 0x01
        p.write_bytes(bytes(b))
    return damage


DAMAGE = {
    "truncated": _truncate,
    "flipped last byte": _flip_byte(1),  # last test label
    "flipped pixel byte": _flip_byte(N_TEST * 8 + 1000),  # inside test_x
    "one byte short": lambda p: p.write_bytes(p.read_bytes()[:-1]),
    "trailing byte": lambda p: p.write_bytes(p.read_bytes() + b"\0"),
    "empty": lambda p: p.write_bytes(b""),
    "garbage header": lambda p: p.write_bytes(b"\xff" * 64 + p.read_bytes()[64:]),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_cache_is_detected_and_rebuilt(mini_dir, tmp_path, counting_decoder, damage):
    original = load_cifar10(mini_dir, cache_dir=tmp_path)
    (cache,) = cache_files(tmp_path)
    good_bytes = cache.read_bytes()
    assert sd._load_cache(cache) is not None
    DAMAGE[damage](cache)
    assert cache.read_bytes() != good_bytes
    assert sd._load_cache(cache) is None  # detected ...
    rebuilt = load_cifar10(mini_dir, cache_dir=tmp_path)
    assert len(counting_decoder) == 2  # ... decoded again ...
    assert same_data(rebuilt, original)  # ... right ...
    assert sd._load_cache(cache) is not None  # ... and the cache repaired
    assert not list(tmp_path.glob("*.tmp"))


def test_damaged_index_is_recomputed(mini_dir, tmp_path):
    original = load_cifar10(mini_dir, cache_dir=tmp_path)
    (index,) = tmp_path.glob("source-*.json")
    index.write_text("{not json")
    again = load_cifar10(mini_dir, cache_dir=tmp_path)
    assert same_data(again, original) and again.info.fingerprint == original.info.fingerprint


_RACER = r"""
import sys, time
from pathlib import Path

import torch
import study.data as sd

data_dir, cache_dir, ready, go, out = sys.argv[1:6]
calls = []
real = sd._decode_imagefolder
sd._decode_imagefolder = lambda src: calls.append(1) or real(src)
Path(ready).touch()
deadline = time.time() + 60
while not Path(go).exists() and time.time() < deadline:
    time.sleep(0.002)
d = sd.load_cifar10(data_dir, cache_dir=cache_dir)
torch.save({"train_x": d.train_x, "train_y": d.train_y, "test_x": d.test_x, "test_y": d.test_y,
            "fingerprint": d.info.fingerprint, "decodes": len(calls)}, out)
"""


def test_two_processes_building_one_cache(mini_dir, mini_data, tmp_path):
    """Two processes start at once on one empty cache: both get the right data, one decodes,
    and the cache holds exactly one valid tensor file and no temporary files."""
    cache, go = tmp_path / "cache", tmp_path / "go"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    procs, outs, readies = [], [], []
    for i in range(2):
        readies.append(tmp_path / f"ready{i}")
        outs.append(tmp_path / f"out{i}.pt")
        procs.append(subprocess.Popen(
            [sys.executable, "-c", _RACER, str(mini_dir), str(cache), str(readies[-1]), str(go), str(outs[-1])],
            cwd=REPO, env=env, stderr=subprocess.PIPE, text=True))
    deadline = time.time() + 60
    while not all(r.exists() for r in readies) and time.time() < deadline:
        time.sleep(0.01)
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    results = [torch.load(o, weights_only=False) for o in outs]
    for r in results:
        assert all(torch.equal(r[k], getattr(mini_data, k)) for k in ("train_x", "train_y", "test_x", "test_y"))
        assert r["fingerprint"] == mini_data.info.fingerprint
    assert sum(r["decodes"] for r in results) == 1  # the lock let one build, the other read
    (only,) = cache_files(cache)
    assert sd._load_cache(only) is not None
    assert len(list(cache.glob("source-*.json"))) == 1
    assert not list(cache.glob("*.tmp"))


# ---------------------------------------------------------------------------
# Stratified subsets
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("limit", [10, 11, 23, 57, 100, 299])
def test_stratified_subset_is_balanced(mini_data, limit):
    labels = mini_data.train_y
    idx = stratified_subset(labels, limit, seed=0)
    assert len(idx) == limit
    assert len(set(idx.tolist())) == limit
    assert idx.tolist() == sorted(idx.tolist())
    assert 0 <= idx.min() and idx.max() < len(labels)
    counts = Counter(labels[idx].tolist())
    assert len(counts) == 10
    # e.g. limit 23: three classes get 3, seven get 2
    assert sorted(counts.values()) == [limit // 10] * (10 - limit % 10) + [limit // 10 + 1] * (limit % 10)


def test_stratified_subset_draws_which_classes_get_the_remainder(mini_data):
    """limit 13 = 10 * 1 + 3: the three classes with a second example are drawn by the seed."""
    labels = mini_data.train_y
    extra = set()
    for seed in range(10):
        counts = Counter(labels[stratified_subset(labels, 13, seed)].tolist())
        extra.add(frozenset(c for c, n in counts.items() if n == 2))
    assert len(extra) > 1


def test_stratified_subset_is_seeded(mini_data):
    labels = mini_data.train_y
    a = stratified_subset(labels, 50, seed=1)
    assert torch.equal(a, stratified_subset(labels, 50, seed=1))
    assert not torch.equal(a, stratified_subset(labels, 50, seed=2))


@pytest.mark.parametrize("limit", [None, N_TRAIN, N_TRAIN + 1, 10**6])
def test_no_limit_or_a_large_one_keeps_everything(mini_data, limit):
    assert torch.equal(stratified_subset(mini_data.train_y, limit, seed=0), torch.arange(N_TRAIN))


@pytest.mark.parametrize("limit", [1, 5, 9])
def test_limit_below_the_class_count_is_rejected(mini_data, limit):
    with pytest.raises(ValueError, match=f"limit={limit}"):
        stratified_subset(mini_data.train_y, limit, seed=0)


def test_a_class_too_small_for_its_share_is_rejected():
    labels = torch.tensor([0] * 50 + [1] * 2)  # class 1 cannot give 10 of a 20-example subset
    with pytest.raises(ValueError, match="limit=20"):
        stratified_subset(labels, 20, seed=0)


def test_prepare_subsets_and_normalizes(mini_data):
    p = prepare(mini_data, train_limit=40, test_limit=20, subset_seed=3)
    assert p.train_x.shape == (40, 3, 32, 32) and p.test_x.shape == (20, 3, 32, 32)
    assert p.train_x.dtype == torch.float32 and p.train_y.dtype == torch.int64
    assert Counter(p.train_y.tolist()) == {c: 4 for c in range(10)}
    assert Counter(p.test_y.tolist()) == {c: 2 for c in range(10)}
    # every prepared example is a normalized source example with its own label
    src = normalize(mini_data.train_x).flatten(1)
    equal = (p.train_x.flatten(1)[:, None, :] == src[None]).all(-1)  # (40, 300)
    assert equal.sum(1).tolist() == [1] * 40  # each is exactly one source image ...
    match = equal.float().argmax(1)
    assert len(set(match.tolist())) == 40  # ... a different one each time ...
    assert torch.equal(mini_data.train_y[match], p.train_y)  # ... with its own label
    again = prepare(mini_data, train_limit=40, test_limit=20, subset_seed=3)
    assert torch.equal(p.train_x, again.train_x) and torch.equal(p.test_y, again.test_y)


# ---------------------------------------------------------------------------
# Normalization: the lecture's transform
# ---------------------------------------------------------------------------

def test_normalize_equals_the_lectures_transform(mini_data, mini_dir):
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    ours = normalize(mini_data.test_x)
    assert ours.dtype == torch.float32 and ours.shape == (N_TEST, 3, 32, 32)
    assert ours.min() >= -1 and ours.max() <= 1
    for i, (f, _) in enumerate(image_files(mini_dir, "test")):
        with Image.open(f) as im:
            ref = transform(im)
        torch.testing.assert_close(ours[i], ref, atol=1e-6, rtol=0)
    assert mini_data.test_x.dtype == torch.uint8  # the source tensor is left alone


def test_normalize_by_hand():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    # (v/255 - 0.5) / 0.5: 0 -> -1, 51 -> 0.2*2-1 = -0.6, 255 -> 1
    torch.testing.assert_close(normalize(x).flatten(), torch.tensor([-1.0, -0.6, 1.0]), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------
# Missing data
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("contents", ["empty", "unrelated files", "train without test"])
def test_missing_data_says_where_and_how(tmp_path, contents):
    root = tmp_path / "nodata"
    root.mkdir()
    if contents == "unrelated files":
        (root / "readme.txt").write_text("hello")
        (root / "images").mkdir()
    elif contents == "train without test":
        (root / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DataNotFoundError) as e:
        load_cifar10(root, cache_dir=tmp_path / "cache")
    msg = str(e.value)
    assert str(root.resolve()) in msg
    assert "cifar-10-batches-py" in msg and "torchvision" in msg  # the official layout
    assert "ImageFolder" in msg and str(root / "train") in msg and str(root / "test") in msg
    assert "CIFAR10_DIR" in msg
    assert isinstance(e.value, FileNotFoundError)


def test_wrong_number_of_class_folders_is_named(tmp_path):
    for split in ("train", "test"):
        for c in ("cat", "dog", "frog"):
            (tmp_path / split / c).mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="3 class folders"):
        load_cifar10(tmp_path, cache_dir=tmp_path / "cache")
