"""bnref.mnist.data: where MNIST is looked for, how a bad file is reported, and the model-input helpers.

Every test builds its own small .npz in tmp_path and isolates the environment (BNREF_MNIST, HOME,
KERAS_HOME); only test_real_file reads the real MNIST, and only when BNREF_MNIST names it (CI does).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bnref.mnist import data
from bnref.mnist.data import MnistError, MnistNotFoundError, load_mnist


def small_arrays(n_train: int = 20, n_test: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """MNIST-shaped uint8 arrays, small: every label 0..9 appears."""
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "y_test": (np.arange(n_test)[::-1] % 10).astype(np.uint8),
    }


def write_npz(path: Path, arrays: dict[str, np.ndarray], compressed: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


@pytest.fixture
def env(tmp_path, monkeypatch):
    """No BNREF_MNIST, HOME and KERAS_HOME in tmp_path, and no download unless a test allows one."""
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.delenv("KERAS_HOME", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))

    def no_download():
        raise AssertionError("a test tried to download MNIST")

    monkeypatch.setattr(data, "_download_with_keras", no_download)
    return tmp_path


# ---------------------------------------------------------------------------------------------
# finding the file
# ---------------------------------------------------------------------------------------------


def test_explicit_path_loads_small_file(env):
    arrays = small_arrays()
    path = write_npz(env / "m.npz", arrays)
    m = load_mnist(path, verify=False)
    assert isinstance(m, data.Mnist)
    x_train, y_train, x_test, y_test = m  # unpacks like the plain 4-tuple
    for key, got in zip(data.KEYS, (x_train, y_train, x_test, y_test), strict=True):
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, arrays[key])


def test_env_var_is_used(env, monkeypatch):
    path = write_npz(env / "from_env.npz", small_arrays(seed=1))
    monkeypatch.setenv(data.ENV_VAR, str(path))
    np.testing.assert_array_equal(load_mnist(verify=False).x_train, small_arrays(seed=1)["x_train"])


def test_explicit_path_wins_over_env(env, monkeypatch):
    good = write_npz(env / "good.npz", small_arrays(seed=2))
    monkeypatch.setenv(data.ENV_VAR, str(env / "does_not_exist.npz"))
    np.testing.assert_array_equal(load_mnist(good, verify=False).y_test, small_arrays(seed=2)["y_test"])


def test_keras_home_cache_is_used(env, monkeypatch):
    keras_home = env / "kh"
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    write_npz(keras_home / "datasets" / "mnist.npz", small_arrays(seed=3))
    assert data.keras_cache_path() == keras_home / "datasets" / "mnist.npz"
    np.testing.assert_array_equal(load_mnist(verify=False).x_test, small_arrays(seed=3)["x_test"])


def test_default_keras_cache_is_under_home(env):
    write_npz(env / "home" / ".keras" / "datasets" / "mnist.npz", small_arrays(seed=4))
    np.testing.assert_array_equal(load_mnist(verify=False).x_train, small_arrays(seed=4)["x_train"])


def test_candidates_in_documented_order(env, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(env / "e.npz"))
    monkeypatch.setenv("KERAS_HOME", str(env / "kh"))
    got = data.candidate_paths(env / "p.npz")
    assert [p for _, p in got] == [env / "p.npz", env / "e.npz", env / "kh" / "datasets" / "mnist.npz"]


# ---------------------------------------------------------------------------------------------
# nothing found
# ---------------------------------------------------------------------------------------------


def test_missing_explicit_file_is_reported_not_skipped(env, monkeypatch):
    # A good file in the cache must not stand in for a path the user named.
    write_npz(env / "home" / ".keras" / "datasets" / "mnist.npz", small_arrays())
    missing = env / "typo.npz"
    with pytest.raises(MnistNotFoundError) as info:
        load_mnist(missing, verify=False)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
    msg = str(info.value)
    assert str(missing) in msg and "BNREF_MNIST=/path/to/mnist.npz" in msg


def test_missing_env_file_is_reported(env, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(env / "nowhere" / "mnist.npz"))
    with pytest.raises(MnistNotFoundError, match="nowhere"):
        load_mnist(verify=False)


def test_nothing_anywhere_without_download_lists_every_place(env):
    with pytest.raises(MnistNotFoundError) as info:
        load_mnist(download=False)
    msg = str(info.value)
    assert str(data.keras_cache_path()) in msg
    assert "download=False" in msg and "BNREF_MNIST" in msg


def test_failed_download_says_where_it_looked(env, monkeypatch):
    def offline():
        raise OSError("URL fetch failure: no network")

    monkeypatch.setattr(data, "_download_with_keras", offline)
    with pytest.raises(MnistNotFoundError) as info:
        load_mnist()
    msg = str(info.value)
    assert "no network" in msg
    assert str(data.keras_cache_path()) in msg
    assert msg.index(str(data.keras_cache_path())) < msg.index("download with keras")
    assert "BNREF_MNIST=/path/to/mnist.npz" in msg


def test_download_result_is_validated(env, monkeypatch):
    monkeypatch.setattr(data, "_download_with_keras", lambda: small_arrays(seed=5))
    np.testing.assert_array_equal(load_mnist(verify=False).y_train, small_arrays(seed=5)["y_train"])
    bad = small_arrays()
    bad["y_train"] = bad["y_train"] + 10
    monkeypatch.setattr(data, "_download_with_keras", lambda: bad)
    with pytest.raises(MnistError, match="outside 0..9"):
        load_mnist(verify=False)


def test_damaged_cache_falls_through_to_download(env, monkeypatch):
    cache = env / "home" / ".keras" / "datasets" / "mnist.npz"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"not a zip file")
    monkeypatch.setattr(data, "_download_with_keras", lambda: small_arrays(seed=6))
    np.testing.assert_array_equal(load_mnist(verify=False).x_test, small_arrays(seed=6)["x_test"])
    # and without a download, the message says why the cache was passed over
    with pytest.raises(MnistNotFoundError, match="unusable"):
        load_mnist(verify=False, download=False)


# ---------------------------------------------------------------------------------------------
# found but bad
# ---------------------------------------------------------------------------------------------


def test_truncated_file(env):
    path = write_npz(env / "m.npz", small_arrays())
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(MnistError, match="truncated or corrupt") as info:
        load_mnist(path, verify=False)
    assert not isinstance(info.value, FileNotFoundError)
    assert str(path) in str(info.value)


def test_corrupt_bytes_inside_archive(env):
    path = write_npz(env / "m.npz", small_arrays(), compressed=False)
    blob = bytearray(path.read_bytes())
    # Flip bytes in the middle of x_train's pixel data (the first member, after its header);
    # the zip member's CRC-32 no longer matches.
    for i in range(600, 700):
        blob[i] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(MnistError, match="truncated or corrupt.*CRC"):
        load_mnist(path, verify=False)


def test_not_an_archive(env):
    path = env / "m.npz"
    path.write_text("<html>proxy error page</html>")
    with pytest.raises(MnistError, match="cannot be read"):
        load_mnist(path, verify=False)


def test_single_npy_array(env):
    path = env / "m.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(MnistError, match="single .npy array"):
        load_mnist(path, verify=False)


def test_missing_key(env):
    arrays = small_arrays()
    del arrays["y_test"]
    path = write_npz(env / "m.npz", arrays)
    with pytest.raises(MnistError, match="y_test"):
        load_mnist(path, verify=False)


@pytest.mark.parametrize(
    "key, bad, words",
    [
        ("x_train", np.zeros((20, 28, 27), np.uint8), r"x_train must have shape \(n, 28, 28\)"),
        ("x_test", np.zeros((10, 784), np.uint8), r"x_test must have shape \(n, 28, 28\)"),
        ("y_train", np.zeros((19,), np.uint8), r"y_train must have shape \(20,\)"),
        ("y_test", np.zeros((10, 1), np.uint8), r"y_test must have shape \(10,\)"),
        ("x_train", np.zeros((20, 28, 28), np.float32), "must be uint8"),
        ("y_test", np.zeros((10,), np.int64), "must be uint8"),
        ("y_train", np.full((20,), 10, np.uint8), r"outside 0..9 \(max 10\)"),
    ],
)
def test_wrong_layout(env, key, bad, words):
    arrays = small_arrays()
    arrays[key] = bad
    path = write_npz(env / "m.npz", arrays)
    with pytest.raises(MnistError, match=words):
        load_mnist(path, verify=False)


def test_small_file_fails_full_verification(env):
    path = write_npz(env / "m.npz", small_arrays())
    with pytest.raises(MnistError, match=r"full MNIST has \(60000, 28, 28\)"):
        load_mnist(path)  # verify=True is the default


def test_full_shape_wrong_content_fails_hash_check():
    fake = {k: np.zeros(shape, np.uint8) for k, shape in data.FULL_SHAPES.items()}
    with pytest.raises(MnistError, match="not MNIST's content"):
        data.validate_mnist(fake, verify=True)
    data.validate_mnist(fake, verify=False)  # the layout itself is fine


def test_array_hash_ignores_memory_order():
    a = np.arange(28 * 28 * 3, dtype=np.uint8).reshape(3, 28, 28)
    assert data.array_sha256(np.asfortranarray(a)) == data.array_sha256(a)
    assert data.array_sha256(a[::-1]) != data.array_sha256(a)


@pytest.mark.skipif(not os.environ.get(data.ENV_VAR), reason="BNREF_MNIST is not set (CI sets it)")
def test_real_file():
    m = load_mnist()  # verify=True: full shapes and the four array hashes
    assert [a.shape for a in m] == [(60000, 28, 28), (60000,), (10000, 28, 28), (10000,)]
    # Facts published with the file (../shared/data/README.md), independent of our hashes:
    assert m.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert round(float(m.x_train.mean()), 6) == 33.318421
    assert round(float(m.x_test.mean()), 6) == 33.791224


# ---------------------------------------------------------------------------------------------
# model inputs; import hygiene
# ---------------------------------------------------------------------------------------------


def test_to_features():
    x = np.zeros((2, 28, 28), np.uint8)
    x[0, 0, 0], x[1, 27, 27] = 255, 51
    f = data.to_features(x)
    assert f.shape == (2, 784) and f.dtype == np.float32
    assert f[0, 0] == 1.0 and f[1, 783] == np.float32(51) / np.float32(255)
    assert f.sum() == f[0, 0] + f[1, 783]
    with pytest.raises(ValueError, match=r"\(n, 28, 28\)"):
        data.to_features(np.zeros((2, 784), np.uint8))


def test_one_hot():
    y = np.array([3, 0, 9], np.uint8)
    np.testing.assert_array_equal(data.one_hot(y), np.eye(10, dtype=np.float32)[[3, 0, 9]])
    with pytest.raises(ValueError, match="0..9"):
        data.one_hot(np.array([10]))
    with pytest.raises(ValueError, match=r"\(n,\)"):
        data.one_hot(np.zeros((2, 2), np.int64))


def test_as_features_and_as_labeled():
    images = np.zeros((2, 28, 28), np.uint8)
    images[1, 0, 0] = 255
    np.testing.assert_array_equal(data.as_features(images), data.to_features(images))
    feats = np.arange(6, dtype=np.float64).reshape(3, 2)
    out = data.as_features(feats)
    assert out.dtype == np.float32 and out.flags["C_CONTIGUOUS"] and np.array_equal(out, feats)
    with pytest.raises(ValueError, match=r"x_sub must be images \(n, 28, 28\) or features \(n, d\); got shape \(4,\)"):
        data.as_features(np.zeros(4), name="x_sub")
    x, y = data.as_labeled(feats, np.array([0, 9, 3], np.uint8))
    assert y.dtype == np.int64 and y.tolist() == [0, 9, 3]
    with pytest.raises(ValueError, match=r"y_train must have shape \(3,\) to match x_train"):
        data.as_labeled(feats, np.array([0, 1]), name="train")
    with pytest.raises(ValueError, match=r"y must hold labels in 0..9; got 0..10"):
        data.as_labeled(feats, np.array([0, 1, 10]))
    with pytest.raises(ValueError, match="integer labels"):
        data.as_labeled(feats, np.array([0.0, 1.0, 2.0]))
    assert data.as_labeled(feats, np.array([0, 1, 10]), num_classes=None)[1].tolist() == [0, 1, 10]


def test_import_does_not_pull_frameworks():
    code = (
        "import sys, bnref.mnist.data, bnref.mnist.models, bnref.mnist.training, bnref.mnist.cli; "
        "print(sorted(m for m in ('torch', 'tensorflow', 'keras', 'jax') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
