"""Omniglot: archives, a leak-free character split, and an N-way K-shot task sampler.

Reads the standard archives ``images_background.zip`` / ``images_evaluation.zip`` (and the
small subsets ``images_background_small1/2.zip``, same layout), from the zip or from an
extracted folder: ``<archive>/<Alphabet>/characterNN/<id>_<rep>.png``, 105x105 one-bit
images. Each character becomes a 28x28 uint8 stack (LANCZOS, ink = 255), cached as .npz
next to nothing else (``cache_dir``). Rotations by 0/90/180/270 degrees are new classes,
made at sampling time from the character's own images, so a split by character can never
put any rotation of a test character into training.
"""
from __future__ import annotations

import hashlib
import io
import re
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

STANDARD = {  # name -> md5 of the public archives (Lake et al., MIT licence)
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}
SMALL = {"images_background_small1": "e704a628b5459e08445c13499850abc4",
         "images_background_small2": "b75a71a51d3b13f821f212756fe481fd"}
DOWNLOAD_URL = "https://github.com/brendenlake/omniglot/raw/master/python/{name}.zip"
IMAGE_SIZE = 28
_CHECKOUT = Path(__file__).resolve().parents[3]
SHARED = _CHECKOUT.parent / "shared" / "data" / "omniglot"   # the small archives, beside it
CACHE = _CHECKOUT / ".cache" / "omniglot"                     # decoded images, git-ignored
STANDARD_TRAIN_CHARACTERS = 1200   # the remaining 423 of 1623 are for meta-testing
_PNG = re.compile(r"(?:^|/)([^/]+)/(character\d+)/[^/]+\.png$")


def md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(root: Path, names=tuple(STANDARD), url: str = DOWNLOAD_URL) -> list[Path]:
    """Fetch the standard archives into ``root`` and check their MD5 (a mismatch is an
    error and the file is removed). ``url`` has a ``{name}`` field (tests use file://)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        expected = {**STANDARD, **SMALL}[name]
        path = root / f"{name}.zip"
        if not (path.exists() and md5(path) == expected):
            tmp = path.with_suffix(".zip.part")
            with urllib.request.urlopen(url.format(name=name)) as response, open(tmp, "wb") as f:
                f.write(response.read())
            got = md5(tmp)
            if got != expected:
                tmp.unlink()
                raise ValueError(f"{name}.zip: MD5 {got} does not match the published {expected}")
            tmp.replace(path)
        paths.append(path)
    return paths


def _to_28(png: bytes | Path) -> np.ndarray:
    image = Image.open(io.BytesIO(png) if isinstance(png, bytes) else png).convert("L")
    image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS)
    return 255 - np.asarray(image, dtype=np.uint8)   # ink (black strokes) -> 255


def _read_source(source: Path) -> dict[tuple[str, str], list[np.ndarray]]:
    """{(alphabet, character): [28x28 uint8 images in file-name order]} of a zip or folder."""
    chars: dict[tuple[str, str], list[tuple[str, np.ndarray]]] = {}
    if source.suffix == ".zip":
        with zipfile.ZipFile(source) as z:
            for name in sorted(z.namelist()):
                m = _PNG.search(name)
                if m:
                    chars.setdefault(m.groups(), []).append((name, _to_28(z.read(name))))
    else:
        for path in sorted(source.rglob("*.png")):
            m = _PNG.search(path.relative_to(source.parent).as_posix())
            if m:
                chars.setdefault(m.groups(), []).append((str(path), _to_28(path)))
    if not chars:
        raise ValueError(f"{source}: no <Alphabet>/characterNN/*.png images found")
    return {k: [img for _, img in sorted(v, key=lambda t: t[0])] for k, v in chars.items()}


@dataclass
class Characters:
    """Characters of one or more archives: ``images[i]`` is (20, 28, 28) uint8 for
    character ``names[i] = (alphabet, character)``, the identity of a character across
    archives (the small subsets share their Greek and Latin characters, for example)."""

    names: list[tuple[str, str]]
    images: np.ndarray

    def subset(self, index) -> "Characters":
        index = list(index)
        return Characters([self.names[i] for i in index], self.images[index])

    def without(self, other: "Characters") -> "Characters":
        """These characters minus those of ``other`` (checked to be the same drawings)."""
        theirs = dict(zip(other.names, other.images))
        keep = []
        for i, name in enumerate(self.names):
            if name not in theirs:
                keep.append(i)
            elif not np.array_equal(self.images[i], theirs[name]):
                raise ValueError(f"character {name} has different drawings in two archives")
        return self.subset(keep)


def load(source, cache_dir: Path | None = None) -> Characters:
    """The characters of an archive (``.zip`` or extracted folder), cached as .npz."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist (see suite.experiments.omniglot.data.download)")
    archive = source.name.removesuffix(".zip")
    cache = None
    if cache_dir is not None:
        stamp = f"{source.stat().st_size}-{int(source.stat().st_mtime)}" if source.is_file() else "dir"
        cache = Path(cache_dir) / f"{archive}-{stamp}-{IMAGE_SIZE}.npz"
        if cache.exists():
            data = np.load(cache, allow_pickle=False)
            return Characters([tuple(n) for n in data["names"].tolist()], data["images"])
    chars = _read_source(source)
    counts = {len(v) for v in chars.values()}
    if len(counts) != 1:
        raise ValueError(f"{source}: characters have different numbers of drawings {counts}")
    keys = sorted(chars)
    result = Characters(keys,
                        np.stack([np.stack(chars[k]) for k in keys]))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache, names=np.array(result.names), images=result.images)
    return result


def concat(parts: list[Characters]) -> Characters:
    """The union of archives; a character present in several (same drawings) counts once."""
    union = parts[0]
    for part in parts[1:]:
        new = part.without(union)
        union = Characters(union.names + new.names, np.concatenate([union.images, new.images]))
    return union


def split(chars: Characters, n_train: int, seed: int = 0) -> tuple[Characters, Characters]:
    """A deterministic split by character: a seeded permutation of the sorted names, the
    first ``n_train`` for meta-training and the rest for meta-testing."""
    if not 0 < n_train < len(chars.names):
        raise ValueError(f"n_train must be in [1, {len(chars.names) - 1}], got {n_train}")
    order = sorted(range(len(chars.names)), key=lambda i: chars.names[i])
    perm = np.random.default_rng(seed).permutation(len(order))
    chosen = [order[i] for i in perm]
    return chars.subset(chosen[:n_train]), chars.subset(chosen[n_train:])


def standard_split(root: Path, cache_dir: Path | None = None, seed: int = 0):
    """The paper's protocol on the full data: 1623 characters of both archives, 1200 for
    meta-training and 423 for meta-testing."""
    root = Path(root)
    parts = [load(_find(root, name), cache_dir) for name in STANDARD]
    return split(concat(parts), STANDARD_TRAIN_CHARACTERS, seed)


def small_split(root: Path, cache_dir: Path | None = None):
    """The small subsets: all 136 characters of small1 (Balinese, Early Aramaic, Greek,
    Korean, Latin) for meta-training; for meta-testing the 106 characters of small2 that
    small1 lacks (Japanese katakana, Sanskrit, Tagalog). small2 also holds small1's 50
    Greek and Latin characters, the same drawings: testing on all of small2 would leak."""
    root = Path(root)
    train, test = (load(_find(root, name), cache_dir) for name in SMALL)
    return train, test.without(train)


def _find(root: Path, name: str) -> Path:
    for candidate in (root / f"{name}.zip", root / name):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"neither {name}.zip nor {name}/ in {root}")


class TaskSampler:
    """Seeded N-way K-shot tasks: N classes drawn from (character, rotation) pairs, K
    support and ``k_query`` query drawings per class; labels 0..N-1 in a random order."""

    def __init__(self, chars: Characters, n_way: int, k_shot: int, k_query: int, *,
                 seed: int = 0, rotations: bool = True, device="cpu", dtype=torch.float32):
        per_char = chars.images.shape[1]
        if k_shot + k_query > per_char:
            raise ValueError(f"k_shot + k_query must be <= {per_char} drawings per character, "
                             f"got {k_shot} + {k_query}")
        n_classes = len(chars.names) * (4 if rotations else 1)
        if not 2 <= n_way <= n_classes:
            raise ValueError(f"n_way must be in [2, {n_classes}], got {n_way}")
        self.chars, self.n_way, self.k_shot, self.k_query = chars, n_way, k_shot, k_query
        self.rotations, self.device, self.dtype = rotations, device, dtype
        self.rng = np.random.default_rng(seed)

    def sample(self):
        """((x_support, y_support), (x_query, y_query)); x is (N*K, 1, 28, 28) in [0, 1]."""
        n_rot = 4 if self.rotations else 1
        classes = self.rng.choice(len(self.chars.names) * n_rot, self.n_way, replace=False)
        xs, ys, xq, yq = [], [], [], []
        for label, cls in enumerate(classes):
            char, rot = divmod(int(cls), n_rot)
            draws = self.rng.choice(self.chars.images.shape[1], self.k_shot + self.k_query,
                                    replace=False)
            imgs = np.rot90(self.chars.images[char, draws], k=rot, axes=(1, 2))
            xs.append(imgs[:self.k_shot])
            xq.append(imgs[self.k_shot:])
            ys += [label] * self.k_shot
            yq += [label] * self.k_query

        def tensor(parts):
            x = torch.from_numpy(np.ascontiguousarray(np.concatenate(parts)))
            return (x.to(self.dtype) / 255.0).unsqueeze(1).to(self.device)
        return ((tensor(xs), torch.tensor(ys, device=self.device)),
                (tensor(xq), torch.tensor(yq, device=self.device)))
