"""MNIST for the book: find a local ``mnist.npz``, check it by content, return the four arrays.

Where the file is looked for, in this order (the first location that names an existing file wins):

1. the ``path`` argument of :func:`load_mnist`;
2. the environment variable ``BNREF_MNIST``;
3. the Keras cache, ``$KERAS_HOME/datasets/mnist.npz`` (``~/.keras/datasets/mnist.npz`` when
   ``KERAS_HOME`` is unset; Keras itself falls back to ``/tmp/.keras`` when the home folder is not
   writable, and so do we);
4. ``keras.datasets.mnist.load_data()``, which downloads the official file into that cache.

A location given explicitly (1 or 2) that does not hold a readable, valid file is an error: a typo
should not turn into a silent download of some other file. A damaged file in the Keras cache is
passed over, since the download that follows replaces it (Keras checks the file's own hash).

Why not just call ``keras.datasets.mnist.load_data()``? In Keras 3 it accepts no local path, and a
cached file whose bytes differ from the official download (for instance one rewritten with
``numpy.savez_compressed``, as the project's shared copy is) triggers a new download. So we read
the file with :func:`numpy.load` ourselves and check what it contains instead of how it was
compressed: the keys, shapes and dtypes of the Keras layout, labels in 0..9, and (by default) the
SHA-256 of each array's C-contiguous bytes, which is the same for every faithful copy.
"""

from __future__ import annotations

import functools
import hashlib
import os
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "ENV_VAR",
    "ARRAY_SHA256",
    "KERAS_FILE_SHA256",
    "FULL_SHAPES",
    "MnistError",
    "MnistNotFoundError",
    "Mnist",
    "load_mnist",
    "mnist_features",
    "candidate_paths",
    "array_sha256",
    "validate_mnist",
    "to_features",
    "one_hot",
    "as_features",
    "as_labeled",
]

ENV_VAR = "BNREF_MNIST"

#: SHA-256 of each array's C-contiguous bytes (uint8), for every faithful copy of MNIST in the
#: Keras layout, whatever the compression of the ``.npz`` that carries it.
ARRAY_SHA256: dict[str, str] = {
    "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}

#: SHA-256 of the official Keras download (the file, not its arrays). Its arrays hash to
#: :data:`ARRAY_SHA256`, so the content check accepts it as it accepts any faithful copy.
KERAS_FILE_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"

#: The shapes of the complete data set.
FULL_SHAPES: dict[str, tuple[int, ...]] = {
    "x_train": (60000, 28, 28),
    "y_train": (60000,),
    "x_test": (10000, 28, 28),
    "y_test": (10000,),
}

KEYS = ("x_train", "y_train", "x_test", "y_test")

HOW_TO_PROVIDE = (
    "To provide the file, point the environment variable at a copy of the Keras MNIST file, e.g.\n"
    f"    export {ENV_VAR}=/path/to/mnist.npz\n"
    "or pass it explicitly: bnref.mnist.data.load_mnist('/path/to/mnist.npz'). Any faithful copy works "
    "(the official https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz, sha256 "
    f"{KERAS_FILE_SHA256}, or a numpy.savez_compressed rewrite of it), since the arrays are checked, "
    "not the file's bytes."
)


class MnistError(ValueError):
    """The MNIST file was found but cannot be read or does not hold MNIST in the Keras layout."""


class MnistNotFoundError(MnistError, FileNotFoundError):
    """No MNIST file was found and none could be downloaded."""


class Mnist(NamedTuple):
    """The four arrays of the Keras layout, all ``uint8``.

    Attributes
    ----------
    x_train : ndarray, shape (60000, 28, 28)
    y_train : ndarray, shape (60000,)
    x_test : ndarray, shape (10000, 28, 28)
    y_test : ndarray, shape (10000,)
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


# --------------------------------------------------------------------------------------------
# where to look
# --------------------------------------------------------------------------------------------


def keras_cache_path() -> Path:
    """Where Keras 3 caches ``mnist.npz``: ``$KERAS_HOME/datasets`` or ``~/.keras/datasets``.

    Mirrors ``keras.src.backend.config``: with ``KERAS_HOME`` unset and a home folder that is not
    writable, Keras uses ``/tmp/.keras``.
    """
    keras_home = os.environ.get("KERAS_HOME")
    if keras_home:
        base = Path(keras_home).expanduser()
    else:
        home = Path("~").expanduser()
        base = (home if os.access(home, os.W_OK) else Path("/tmp")) / ".keras"
    return base / "datasets" / "mnist.npz"


def candidate_paths(path: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """The locations :func:`load_mnist` looks at, in order, each with where it came from.

    Parameters
    ----------
    path : str or PathLike, optional
        An explicit file; it comes first.

    Returns
    -------
    list of (str, Path)
        ``(source, path)`` pairs; source is ``"the path argument"``, ``"$BNREF_MNIST"`` or ``"Keras cache"``.
    """
    found: list[tuple[str, Path]] = []
    if path is not None:
        found.append(("the path argument", Path(path).expanduser()))
    env = os.environ.get(ENV_VAR)
    if env:
        found.append((f"${ENV_VAR}", Path(env).expanduser()))
    found.append(("Keras cache", keras_cache_path()))
    return found


# --------------------------------------------------------------------------------------------
# reading and checking
# --------------------------------------------------------------------------------------------


def array_sha256(a: np.ndarray) -> str:
    """SHA-256 (hex) of an array's C-contiguous bytes; independent of how a file compressed it."""
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` into memory, turning every way it can fail into MnistError."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise MnistError(f"{path} is a single .npy array, not an .npz archive of four arrays")
        with loaded as f:
            missing = [k for k in KEYS if k not in f.files]
            if missing:
                raise MnistError(
                    f"{path} lacks the arrays {missing}; it holds {sorted(f.files)}, "
                    f"and MNIST in the Keras layout holds {list(KEYS)}"
                )
            return {k: f[k] for k in KEYS}
    except MnistError:
        raise
    except (zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise MnistError(f"{path} is truncated or corrupt ({type(e).__name__}: {e}); download or copy it again") from e
    except (OSError, ValueError) as e:
        # numpy raises ValueError for bytes that are neither .npz nor .npy (it refuses pickles).
        raise MnistError(f"{path} cannot be read as an .npz archive ({type(e).__name__}: {e})") from e


def validate_mnist(arrays: dict[str, np.ndarray], *, verify: bool = True, source: str = "") -> Mnist:
    """Check that four arrays are MNIST in the Keras layout; return them as :class:`Mnist`.

    Parameters
    ----------
    arrays : dict of str to ndarray
        Must hold ``x_train``, ``y_train``, ``x_test``, ``y_test``.
    verify : bool, default True
        Also demand the full shapes (60000 and 10000 images) and the known SHA-256 of each array
        (:data:`ARRAY_SHA256`). Costs about 0.1 s. With ``verify=False`` only the layout is checked
        (uint8 images ``(n, 28, 28)``, uint8 labels ``(n,)`` in 0..9), so a small file of the same
        layout is accepted, which is what tests use.
    source : str
        Where the arrays came from, for error messages.

    Raises
    ------
    MnistError
        Naming the array and what is wrong with it.
    """
    where = f"{source}: " if source else ""
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise MnistError(f"{where}missing arrays {missing}")
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or y.dtype != np.uint8:
            raise MnistError(f"{where}x_{split} and y_{split} must be uint8; got {x.dtype} and {y.dtype}")
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise MnistError(f"{where}x_{split} must have shape (n, 28, 28); got {x.shape}")
        if y.shape != (x.shape[0],):
            raise MnistError(f"{where}y_{split} must have shape ({x.shape[0]},) to match x_{split}; got {y.shape}")
        if y.size and y.max() > 9:
            raise MnistError(f"{where}y_{split} holds labels outside 0..9 (max {int(y.max())})")
    if verify:
        for key in KEYS:
            if arrays[key].shape != FULL_SHAPES[key]:
                raise MnistError(
                    f"{where}{key} has shape {arrays[key].shape}; the full MNIST has "
                    f"{FULL_SHAPES[key]} (pass verify=False to accept a subset)"
                )
        for key in KEYS:
            digest = array_sha256(arrays[key])
            if digest != ARRAY_SHA256[key]:
                raise MnistError(
                    f"{where}{key} has the right shape but not MNIST's content "
                    f"(sha256 {digest[:16]}..., expected {ARRAY_SHA256[key][:16]}...)"
                )
    return Mnist(*(np.ascontiguousarray(arrays[k]) for k in KEYS))


def _download_with_keras() -> dict[str, np.ndarray]:
    """Fetch MNIST with ``keras.datasets.mnist.load_data()`` (imports Keras only here)."""
    from keras.datasets import mnist  # heavy import: only when every local location failed

    (x_train, y_train), (x_test, y_test) = mnist.load_data()
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _report(looked: list[str]) -> str:
    return "Looked in this order:\n" + "\n".join(f"  {i}. {line}" for i, line in enumerate(looked, 1))


def load_mnist(path: str | os.PathLike | None = None, *, verify: bool = True, download: bool = True) -> Mnist:
    """Load MNIST as four ``uint8`` arrays in the Keras layout.

    Parameters
    ----------
    path : str or PathLike, optional
        An ``mnist.npz`` to read. Without it, ``$BNREF_MNIST``, then the Keras cache, then a download
        (see the module docstring for the order and why).
    verify : bool, default True
        Check the full shapes and each array's SHA-256 (about 0.1 s); see :func:`validate_mnist`.
    download : bool, default True
        Whether to fall back to ``keras.datasets.mnist.load_data()`` when no local file is found.

    Returns
    -------
    Mnist
        ``(x_train, y_train, x_test, y_test)``: uint8 arrays of shapes (60000, 28, 28), (60000,),
        (10000, 28, 28), (10000,); a named tuple, so it unpacks like the plain 4-tuple.

    Raises
    ------
    MnistError
        A file was found but is truncated, corrupt, or not MNIST (the message says which file and why).
    MnistNotFoundError
        No file anywhere and no download; the message lists every location tried and how to provide one.
    """
    looked: list[str] = []
    for source, candidate in candidate_paths(path):
        explicit = source != "Keras cache"
        if not candidate.is_file():
            looked.append(f"{candidate} ({source}): no such file")
            if explicit:
                raise MnistNotFoundError(
                    f"MNIST file not found at {candidate} (named by {source}).\n{_report(looked)}\n{HOW_TO_PROVIDE}"
                )
            continue
        try:
            return validate_mnist(_read_npz(candidate), verify=verify, source=str(candidate))
        except MnistError as e:
            looked.append(f"{candidate} ({source}): unusable: {e}")
            if explicit:
                raise MnistError(f"{e}\n{_report(looked)}\n{HOW_TO_PROVIDE}") from e
    if not download:
        looked.append("download: not attempted (download=False)")
        raise MnistNotFoundError(f"MNIST not found.\n{_report(looked)}\n{HOW_TO_PROVIDE}")
    try:
        arrays = _download_with_keras()
    except Exception as e:  # no network, no Keras, a proxy error page...: all end the same way
        looked.append(f"download with keras.datasets.mnist.load_data(): failed ({type(e).__name__}: {e})")
        raise MnistNotFoundError(
            f"MNIST not found locally and the download failed.\n{_report(looked)}\n{HOW_TO_PROVIDE}"
        ) from e
    return validate_mnist(arrays, verify=verify, source="keras.datasets.mnist.load_data()")


# --------------------------------------------------------------------------------------------
# model inputs
# --------------------------------------------------------------------------------------------


def to_features(x: np.ndarray) -> np.ndarray:
    """Images to the model's input: ``uint8 (n, 28, 28)`` -> ``float32 (n, 784)`` in [0, 1].

    The article does the same (``reshape(-1, 28 * 28) / 255``); the models then take 784 features
    and need no ``Flatten`` layer.
    """
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise ValueError(f"expected images of shape (n, 28, 28); got {x.shape}")
    return (x.reshape(len(x), 28 * 28).astype(np.float32)) / np.float32(255.0)


@functools.lru_cache(maxsize=1)
def mnist_features() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST as ``(x_train, y_train, x_test, y_test)``: float32 features ``(n, 784)`` in [0, 1] and int64 labels,
    read once per process (:func:`load_mnist`, :func:`to_features`). The arrays are shared: do not modify them."""
    x_train, y_train, x_test, y_test = load_mnist()
    return to_features(x_train), y_train.astype(np.int64), to_features(x_test), y_test.astype(np.int64)


def one_hot(y: np.ndarray, num_classes: int = 10) -> np.ndarray:
    """Integer labels ``(n,)`` -> one-hot ``float32 (n, num_classes)``, as ``to_categorical`` does."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"expected labels of shape (n,); got {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}; got {y.min()}..{y.max()}")
    out = np.zeros((len(y), num_classes), dtype=np.float32)
    out[np.arange(len(y)), y.astype(np.int64)] = 1.0
    return out


def as_features(x: np.ndarray, *, name: str = "x") -> np.ndarray:
    """Any model input as a C-contiguous float32 matrix ``(n, d)``: the one place inputs are coerced.

    Images ``(n, 28, 28)`` go through :func:`to_features` (flattened, scaled to [0, 1]); a 2-D array
    of features is cast to float32 as it is (tests and the claims chapter feed synthetic features
    this way). Anything else raises ValueError naming ``name``.
    """
    x = np.asarray(x)
    if x.ndim == 3:
        return to_features(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be images (n, 28, 28) or features (n, d); got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def as_labeled(
    x: np.ndarray, y: np.ndarray, *, name: str = "", num_classes: int | None = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels checked against each other: ``(float32 (n, d), int64 (n,))``.

    Parameters
    ----------
    x : ndarray
        Images ``(n, 28, 28)`` or features ``(n, d)`` (:func:`as_features`).
    y : ndarray, shape (n,)
        Integer class labels.
    name : str
        Suffix for error messages (``"train"`` gives ``x_train``, ``y_train``).
    num_classes : int or None
        Labels must lie in ``0..num_classes - 1``; None skips that check.
    """
    xn, yn = (f"x_{name}", f"y_{name}") if name else ("x", "y")
    x = as_features(x, name=xn)
    y = np.asarray(y)
    if y.shape != (len(x),):
        raise ValueError(f"{yn} must have shape ({len(x)},) to match {xn}; got {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{yn} must hold integer labels; got dtype {y.dtype}")
    if num_classes is not None and y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{yn} must hold labels in 0..{num_classes - 1}; got {y.min()}..{y.max()}")
    return x, y.astype(np.int64)
