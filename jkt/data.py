"""Datasets for the Jacobian-matching experiments, held in memory as uint8 tensors.

Every loader returns a :class:`Dataset` with raw uint8 pixels (N, C, H, W) and int64
labels; images are normalised per batch on the device (:class:`Batches`), which keeps
CIFAR-100 at 150 MB instead of 600 MB.  Nothing here downloads unless ``download=True``.
"""
from __future__ import annotations

import contextlib
import copy
import gzip
import math
import numbers
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DATASETS = ("digits", "fashion-mnist", "cifar10", "cifar100")  # plus "imagefolder:PATH"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
# Per-channel statistics of the training splits, in [0, 1] pixel units.
# Fashion-MNIST values were checked on the official files (0.28604 / 0.35302).
STATS = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclass
class Split:
    """Images ``x`` (uint8, N×C×H×W, raw pixels) and labels ``y`` (int64, N)."""
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device) -> "Split":
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class Dataset:
    """A train split, the full official test split, class names and normalisation constants."""
    name: str
    train: Split
    test: Split
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    _stats: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return (int(self.train.x.shape[2]), int(self.train.x.shape[3]))

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """float32 ``(x/255 - mean) / std`` per channel, on ``x``'s device."""
        if x_uint8.shape[-3] != len(self.mean):
            raise ValueError(f"normalize: expected {len(self.mean)} channels (dim -3) for {self.name}, "
                             f"got a tensor of shape {tuple(x_uint8.shape)}")
        key = x_uint8.device
        if key not in self._stats:
            shape = (len(self.mean), 1, 1)
            self._stats[key] = (torch.tensor(self.mean, dtype=torch.float32, device=key).view(shape),
                                torch.tensor(self.std, dtype=torch.float32, device=key).view(shape))
        mean, std = self._stats[key]
        return (x_uint8.to(torch.float32) / 255.0 - mean) / std

    def class_counts(self) -> dict:
        """``{"train": {class: n}, "test": {class: n}}``, for checking balance at a glance."""
        out = {}
        for part, split in (("train", self.train), ("test", self.test)):
            counts = torch.bincount(split.y.cpu(), minlength=self.num_classes).tolist()
            out[part] = dict(zip(self.classes, counts))
        return out


def data_root(root=None) -> Path:
    """``root`` if given, else ``$JKT_DATA``, else ``<repo>/data``."""
    if root is None:
        root = os.environ.get("JKT_DATA") or Path(__file__).resolve().parents[1] / "data"
    return Path(root).expanduser().resolve()


# ---------------------------------------------------------------- loading
def load(name: str, root=None, download: bool = False, image_size: int | None = None) -> Dataset:
    """Load a dataset by name (see ``DATASETS``, or ``"imagefolder:PATH"``).

    ``image_size`` resizes the images to a square (bilinear, antialiased); for image
    folders it defaults to 64, for the built-in datasets to their native size.
    """
    if not isinstance(name, str) or not (name in DATASETS or (name.startswith("imagefolder:")
                                                              and len(name) > len("imagefolder:"))):
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)} or 'imagefolder:PATH' "
                         f"(a folder with one sub-folder of images per class); got {name!r}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                   or image_size < 1):
        raise ValueError(f"image_size must be a positive integer or None; got {image_size!r}")
    root = data_root(root)
    if name == "digits":
        ds = _load_digits()
    elif name == "fashion-mnist":
        ds = _load_fashion(root, download)
    elif name in ("cifar10", "cifar100"):
        ds = _load_cifar(name, root, download)
    else:
        return _load_imagefolder(name, root, image_size or 64)
    if image_size is not None and (image_size, image_size) != ds.image_size:
        ds.train = Split(_resize(ds.train.x, image_size), ds.train.y)
        ds.test = Split(_resize(ds.test.x, image_size), ds.test.y)
    return ds


def _resize(x: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """Resize uint8 images to size×size with antialiased bilinear interpolation, in chunks."""
    out = [F.interpolate(x[i:i + chunk].float(), size=(size, size), mode="bilinear",
                         align_corners=False, antialias=True).round_().clamp_(0, 255).to(torch.uint8)
           for i in range(0, len(x), chunk)]
    return torch.cat(out) if out else x.new_empty((0, x.shape[1], size, size))


def _not_found(name: str, looked: list[Path], remedies: list[str], note: str = "") -> FileNotFoundError:
    places = "\n".join(f"  - {p}" for p in looked)
    fixes = "\n".join(f"  - {r}" for r in remedies)
    return FileNotFoundError(f"Could not find the {name} dataset{note}. Looked in:\n{places}\n"
                             f"To fix it, do one of:\n{fixes}")


def _load_digits() -> Dataset:
    """scikit-learn's 8×8 digits (bundled, always available) with a fixed stratified split.

    There is no official split: for each class, in the original order, the last third
    (``n // 3`` images) is the test split and the rest is train (1201 train / 596 test).
    Pixels 0..16 are scaled to uint8 by ``round(v * 255 / 16)``; mean/std come from train.
    """
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.from_numpy(np.rint(d.images * 255.0 / 16.0).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    test = np.zeros(len(y), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(d.target == c)
        test[idx[len(idx) - len(idx) // 3:]] = True
    test_t = torch.from_numpy(test)
    train = Split(x[~test_t].contiguous(), y[~test_t].contiguous())
    pixels = train.x.double() / 255.0
    return Dataset("digits", train, Split(x[test_t].contiguous(), y[test_t].contiguous()),
                   [str(c) for c in range(10)],
                   (round(pixels.mean().item(), 4),), (round(pixels.std(unbiased=False).item(), 4),))


def _idx_path(folder: Path, stem: str) -> Path | None:
    for p in (folder / stem, folder / (stem + ".gz")):
        if p.is_file():
            return p
    return None


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic 2051 = uint8 images N×H×W, 2049 = labels N."""
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path} is corrupt or not a gzip file ({e}); delete it and reinstall or "
                         f"re-download the dataset") from e
    ndim = 3 if magic == 2051 else 1
    head = 4 + 4 * ndim
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found != magic:
        kind = "image" if magic == 2051 else "label"
        raise ValueError(f"{path} is not an IDX {kind} file: magic number {found}, expected {magic}; "
                         f"the file is corrupt or misnamed, replace it with the original")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) != head + int(np.prod(dims)):
        raise ValueError(f"{path} is truncated or corrupt: header says {dims} "
                         f"({head + int(np.prod(dims))} bytes) but the file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(dims).copy()


def _load_fashion(root: Path, download: bool) -> Dataset:
    """Fashion-MNIST from raw IDX files: data/fashion-mnist, torchvision's layout, or Debian's package."""
    stems = [f"{s}-{k}" for s in ("train", "t10k") for k in ("images-idx3-ubyte", "labels-idx1-ubyte")]
    candidates = [root / "fashion-mnist", root / "FashionMNIST" / "raw", DEBIAN_FASHION_MNIST]
    note = ""
    for attempt in range(2):
        for folder in candidates:
            paths = [_idx_path(folder, s) for s in stems]
            if all(paths):
                xtr, ytr, xte, yte = (read_idx(p, 2051 if "images" in p.name else 2049) for p in paths)
                if len(xtr) != len(ytr) or len(xte) != len(yte):
                    raise ValueError(f"Fashion-MNIST files in {folder} disagree: {len(xtr)} train images "
                                     f"vs {len(ytr)} labels, {len(xte)} test images vs {len(yte)} labels")
                mean, std = STATS["fashion-mnist"]
                return Dataset("fashion-mnist", _split(xtr[:, None], ytr), _split(xte[:, None], yte),
                               list(FASHION_CLASSES), mean, std)
        if not download or attempt:
            break
        try:
            import torchvision
            torchvision.datasets.FashionMNIST(root=str(root), download=True)  # fetches all four files
        except Exception as e:  # no internet, proxy, disk full: report with the places looked
            note = f" (download=True failed: {type(e).__name__}: {e})"
    files = ", ".join(s + ".gz" for s in stems)
    raise _not_found("fashion-mnist", candidates, [
        "sudo apt-get install dataset-fashion-mnist  (Debian/Ubuntu; installs " f"{DEBIAN_FASHION_MNIST})",
        f"put the four files {files} (gzipped or not) in {root / 'fashion-mnist'}  "
        "(the data folder is <repo>/data, or set JKT_DATA=/your/dir)",
        "on a machine with internet: jkt.data.load('fashion-mnist', download=True)"], note)


def _split(x: np.ndarray, y) -> Split:
    return Split(torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8)),
                 torch.as_tensor(np.asarray(y, dtype=np.int64)))


def _unpickle(path: Path) -> dict:
    """Load one CIFAR python batch; keys come back as str whether pickled as bytes or str."""
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="latin1")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def _cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    if "data" not in d or label_key not in d:
        raise ValueError(f"{path} is not a CIFAR python batch: keys {sorted(d)}, "
                         f"expected 'data' and '{label_key}'")
    data = np.asarray(d["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(d[label_key]):
        raise ValueError(f"{path}: expected data of shape (N, 3072) and N labels, got {data.shape} "
                         f"and {len(d[label_key])} labels")
    # each row is 1024 red, 1024 green, 1024 blue bytes, each plane row-major 32×32
    return data.reshape(-1, 3, 32, 32), np.asarray(d[label_key], dtype=np.int64)


def _load_cifar(name: str, root: Path, download: bool) -> Dataset:
    """CIFAR-10/100 from the official python-pickle batches (the folders torchvision also writes)."""
    ten = name == "cifar10"
    folder = root / ("cifar-10-batches-py" if ten else "cifar-100-python")
    train_files = [f"data_batch_{i}" for i in range(1, 6)] if ten else ["train"]
    test_file, meta_file = ("test_batch", "batches.meta") if ten else ("test", "meta")
    label_key, names_key = ("labels", "label_names") if ten else ("fine_labels", "fine_label_names")
    note = ""
    if not all((folder / f).is_file() for f in train_files + [test_file]) and download:
        try:
            import torchvision
            cls = torchvision.datasets.CIFAR10 if ten else torchvision.datasets.CIFAR100
            cls(root=str(root), download=True)  # fetches and extracts the whole archive
        except Exception as e:  # no internet etc.: fall through to the not-found message
            note = f" (download=True failed: {type(e).__name__}: {e})"
    if not all((folder / f).is_file() for f in train_files + [test_file]):
        missing = [f for f in train_files + [test_file] if not (folder / f).is_file()]
        raise _not_found(name, [folder], [
            f"put the extracted python version ({'cifar-10' if ten else 'cifar-100'}-python.tar.gz) so "
            f"that {folder} holds {', '.join(train_files + [test_file, meta_file])} (missing now: "
            f"{', '.join(missing)}; the data folder is <repo>/data, or set JKT_DATA=/your/dir)",
            f"on a machine with internet: jkt.data.load('{name}', download=True)"], note)
    parts = [_cifar_batch(folder / f, label_key) for f in train_files]
    xtr, ytr = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    xte, yte = _cifar_batch(folder / test_file, label_key)
    n = 10 if ten else 100
    classes = CIFAR10_CLASSES if ten else [f"class_{i}" for i in range(n)]
    if (folder / meta_file).is_file():
        names = _unpickle(folder / meta_file).get(names_key)
        if names is not None and len(names) == n:
            classes = [c.decode() if isinstance(c, bytes) else str(c) for c in names]
    mean, std = STATS[name]
    return Dataset(name, _split(xtr, ytr), _split(xte, yte), list(classes), mean, std)


MIT67_REMEDY = ("MIT Indoor 67 is never downloaded by jkt: fetch indoorCVPR_09.tar and the two split files "
                "TrainImages.txt and TestImages.txt from the dataset's page, and unpack them so that "
                "<data>/mit-indoor-67/Images/<class>/*.jpg, <data>/mit-indoor-67/TrainImages.txt and "
                "<data>/mit-indoor-67/TestImages.txt exist (see data/README.md); without it, the transfer notebook "
                "also takes dataset='cifar10'")


def _imagefolder_base(name: str, root: Path) -> Path:
    """The folder of ``imagefolder:PATH`` (absolute, or relative to the current directory or the data folder)."""
    raw = Path(name[len("imagefolder:"):]).expanduser()
    tries = [raw] if raw.is_absolute() else [Path.cwd() / raw, root / raw]
    base = next((p.resolve() for p in tries if p.is_dir()), None)
    if base is None:
        remedies = [MIT67_REMEDY.replace("<data>", str(root))] if raw.name == "mit-indoor-67" else []
        raise _not_found(name, [p.resolve() for p in tries], remedies + [
            "give the path of a folder holding one sub-folder of images per class (or an Images/ "
            "folder of those), absolute or relative to the current directory or the data folder "
            "(<repo>/data, or set JKT_DATA=/your/dir)"])
    return base


def require(name: str, root=None) -> None:
    """Raise the dataset's FileNotFoundError (where it looked, how to get it) unless ``name`` is on this machine.
    An image folder is only looked up (not read); the other datasets are loaded."""
    if isinstance(name, str) and name.startswith("imagefolder:"):
        _imagefolder_base(name, data_root(root))
    else:
        load(name, root)


def _load_imagefolder(name: str, root: Path, size: int) -> Dataset:
    """A folder of class sub-folders (``PATH/Images/<class>/*`` or ``PATH/<class>/*``), e.g. MIT Indoor 67.

    If ``PATH/TrainImages.txt`` and ``PATH/TestImages.txt`` exist (lines ``class/file.jpg``
    relative to the image folder; MIT Indoor's official split) they define the split and
    unlisted images are ignored; otherwise every 5th image of each class, sorted by file
    name (positions 5, 10, ...), is test.  Images become RGB, resized to size×size
    (bilinear, aspect ratio not kept).  Classes are sorted by name; ImageNet statistics.
    """
    from PIL import Image
    base = _imagefolder_base(name, root)
    images = base / "Images" if (base / "Images").is_dir() else base
    classes = sorted(p.name for p in images.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{images} has no class sub-folders; expected {images}/<class>/<image>")
    index = {c: i for i, c in enumerate(classes)}
    lists = [base / "TrainImages.txt", base / "TestImages.txt"]
    if any(p.is_file() for p in lists):
        if not all(p.is_file() for p in lists):
            raise ValueError(f"found only one of {lists[0].name} and {lists[1].name} in {base}: "
                             "provide both (official split) or neither (fixed every-5th split)")
        entries = []
        for p in lists:
            rels = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
            bad = [r for r in rels if r.replace("\\", "/").split("/")[0] not in index]
            if bad:
                raise ValueError(f"{p}: {len(bad)} line(s) name no class folder of {images}, "
                                 f"e.g. {bad[0]!r}; lines must look like 'class/file.jpg'")
            entries.append([(images / r, index[r.replace("\\", "/").split("/")[0]]) for r in rels])
        train_list, test_list = entries
    else:
        train_list, test_list = [], []
        for c in classes:
            files = sorted(f for f in (images / c).iterdir()
                           if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            for i, f in enumerate(files):
                (test_list if i % 5 == 4 else train_list).append((f, index[c]))

    def read(items) -> Split:
        x = np.empty((len(items), size, size, 3), dtype=np.uint8)
        for i, (path, _) in enumerate(items):
            if not path.is_file():
                raise FileNotFoundError(f"{path} is listed in the split files but does not exist")
            with Image.open(path) as im:
                x[i] = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))
        return _split(x.transpose(0, 3, 1, 2), [c for _, c in items])

    mean, std = STATS["imagenet"]
    return Dataset(name, read(train_list), read(test_list), classes, mean, std)


# ---------------------------------------------------------------- subsets, noise (batches: jkt.batching)
HOLDOUT_SEED = 2018  # the validation pool's draw: fixed, independent of every run's seed


def _per_class_draw(y: np.ndarray, labels, allowed: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    chosen = []
    for c in labels:
        pool = np.flatnonzero((y == c) & allowed)
        chosen.append(pool[rng.permutation(len(pool))[:per_class]])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def holdout_indices(split: Split, per_class: int) -> torch.Tensor:
    """Sorted row indices of the validation pool: ``per_class`` images of every class, drawn once with
    :data:`HOLDOUT_SEED` (the same pool for every run seed). ``subset(..., holdout=per_class)`` never draws them,
    so a student's validation accuracy is measured on images that no training subset uses (never the test split)."""
    y = split.y.cpu().numpy()
    labels, counts = np.unique(y, return_counts=True)
    if isinstance(per_class, bool) or not isinstance(per_class, numbers.Integral) \
            or not 1 <= per_class < int(counts.min()):
        raise ValueError(f"a validation pool of {per_class!r} per class needs an integer from 1 to "
                         f"{int(counts.min()) - 1} (the smallest class minus one image for training)")
    return torch.from_numpy(_per_class_draw(y, labels, np.ones(len(y), bool), per_class, HOLDOUT_SEED))


def subset_indices(split: Split, per_class, seed: int, holdout: int = 0) -> torch.Tensor:
    """Sorted row indices of ``per_class`` examples of every class outside the validation pool of ``holdout``
    per class (see :func:`subset`)."""
    y = split.y.cpu().numpy()
    labels, counts = np.unique(y, return_counts=True)
    allowed = np.ones(len(y), bool)
    if holdout:
        allowed[holdout_indices(split, holdout).numpy()] = False
    smallest = int(counts.min()) - (holdout or 0) if len(counts) else 0
    if per_class == "full":
        return torch.from_numpy(np.flatnonzero(allowed).astype(np.int64))
    if isinstance(per_class, bool) or not isinstance(per_class, numbers.Integral) \
            or not 1 <= per_class <= smallest:
        held = f", outside a validation pool of {holdout} per class" if holdout else ""
        raise ValueError(f"per_class must be an integer from 1 to {smallest} (the size of the smallest "
                         f"class in this split{held}) or 'full'; got {per_class!r}")
    return torch.from_numpy(_per_class_draw(y, labels, allowed, per_class, seed))


def subset(split: Split, per_class, seed: int, holdout: int = 0) -> Split:
    """Exactly ``per_class`` examples of each class, kept in their original order.

    Classes are visited in increasing label order, each drawing one permutation of its
    (sorted) indices from ``numpy.random.default_rng(seed)`` and keeping its first
    ``per_class``: identical on every machine, and nested (5 per class ⊂ 10 per class for
    the same seed).  ``holdout``: leave out the validation pool of that many per class
    (:func:`holdout_indices`); ``per_class="full"`` returns every image outside it.
    """
    if per_class == "full" and not holdout:
        return split
    idx = subset_indices(split, per_class, seed, holdout).to(split.y.device)
    return Split(split.x[idx], split.y[idx])


def holdout(split: Split, per_class: int) -> Split:
    """The validation pool of ``per_class`` images per class (:func:`holdout_indices`)."""
    idx = holdout_indices(split, per_class).to(split.y.device)
    return Split(split.x[idx], split.y[idx])


def add_noise(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x + sigma * N(0, 1)`` on normalised float images (the paper's Table 3 robustness test)."""
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not math.isfinite(sigma) \
            or sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0 (noise std in normalised units); got {sigma!r}")
    if not x.is_floating_point():
        raise ValueError(f"add_noise expects normalised float images, got dtype {x.dtype}; "
                         "call Dataset.normalize first")
    if sigma == 0:
        return x
    return x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


# ---- dataset surgery: class-restricted datasets, resizing on the device ------------------------------

def restrict_classes(data: Dataset, classes, name: str = "classes") -> Dataset:
    """The images of ``classes`` only (both splits), relabelled 0..k-1 in the given order, with their names.

    ``name`` is the parameter named in errors (e.g. ``source_classes``)."""
    if isinstance(classes, str) or not hasattr(classes, "__iter__"):
        raise ValueError(f"{name}={classes!r} must be a list of class labels, e.g. [0, 1, 2, 3, 4]")
    classes = list(classes)
    allowed = f"integers from 0 to {data.num_classes - 1} ({data.name} has {data.num_classes} classes)"
    if len(classes) < 2:
        raise ValueError(f"{name}={classes!r} needs at least 2 classes; give distinct {allowed}")
    for c in classes:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < data.num_classes:
            raise ValueError(f"{name} entry {c!r} is not allowed; entries must be {allowed}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"{name}={classes!r} repeats a class")
    relabel = torch.full((data.num_classes,), -1, dtype=torch.long)
    relabel[torch.tensor(classes)] = torch.arange(len(classes))

    def keep(split: Split) -> Split:
        new = relabel[split.y.cpu()]
        rows = (new >= 0).nonzero().flatten()
        return Split(split.x[rows.to(split.x.device)], new[rows].to(split.y.device))

    out = copy.copy(data)  # keeps the class (and a resize) of ``data``
    out.name = f"{data.name}[{','.join(map(str, classes))}]"
    out.train, out.test = keep(data.train), keep(data.test)
    out.classes = [data.classes[c] for c in classes]
    out._stats = {}
    return out


@dataclass
class ResizedDataset(Dataset):
    """A dataset stored at its own size and resized on the device, batch by batch, when normalised
    (bilinear): CIFAR-10 at 224x224 for an ImageNet teacher without 7 GB of upsampled copies in memory."""
    size: int = 0

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = super().normalize(x_uint8)
        if tuple(x.shape[-2:]) == (self.size, self.size):
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.size, self.size)


@contextlib.contextmanager
def shared_loads():
    """Inside: ``jkt.data.load`` returns one in-memory copy per dataset (plans for many grid cells load it once).
    It patches the module: use it from one thread only (the report notebook does)."""
    global load
    original, cache = load, {}

    def cached(name, root=None, download=False, image_size=None):
        key = (name, str(root), image_size)
        if key not in cache:
            cache[key] = original(name, root=root, download=download, image_size=image_size)
        return cache[key]

    load = cached
    try:
        yield
    finally:
        load = original
