"""Text: tokenizers, text sources and the text dataset.

- :class:`CharTokenizer`: one symbol per Unicode code point seen in the corpus (a multi-byte UTF-8
  character is one symbol); unknown characters in a prompt raise an error that lists them.
- :class:`ByteTokenizer`: the 256 byte values; any text encodes, nothing is unknown.
- Sources: a path to a UTF-8 text file, or a built-in corpus: ``python-stdlib`` (the running
  Python's standard library modules, present on every machine) and ``tinyshakespeare``.

Tokenizing is vectorized: the text becomes an array of code points (``str.encode('utf-32-le')``
read as ``uint32``), a lookup table maps code points to ids, and ids are stored in the smallest
unsigned integer dtype, so a 100 MB file tokenizes in seconds.

Example::

    dataset = load_text_dataset("tinyshakespeare", val_fraction=0.1)
    dataset.vocab_size, dataset.train_tokens.dtype        # 65, uint8
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import sysconfig
import urllib.request
from typing import Iterator

import numpy as np

from seqmodel.data.batching import (
    Batch,
    BatchIterator,
    DataError,
    evaluation_batches,
    make_batch_iterator,
)

MAX_CODE_POINT = 0x110000
# Code points are translated in chunks so that peak memory stays a small multiple of the file size.
_CHUNK_CHARS = 1 << 24

TINYSHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINYSHAKESPEARE_FILE = "tinyshakespeare.txt"


def smallest_uint_dtype(num_values: int) -> np.dtype:
    """The narrowest unsigned dtype that holds ids ``0 .. num_values - 1``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if num_values <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def _code_points(text: str) -> np.ndarray:
    """``str`` -> ``(n,)`` uint32 code points, without a Python loop per character."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def _chunks(text: str) -> Iterator[str]:
    for start in range(0, len(text), _CHUNK_CHARS):
        yield text[start : start + _CHUNK_CHARS]


# ---------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------


class CharTokenizer:
    """Characters (Unicode code points) <-> ids ``0 .. V - 1``, in code-point order.

    Example::

        tokenizer = CharTokenizer.from_text("hello")
        tokenizer.vocabulary                   # 'ehlo'
        tokenizer.encode("hole")               # array([1, 3, 2, 0], dtype=uint8)
        tokenizer.decode([1, 3, 2, 0])         # 'hole'
    """

    kind = "char"

    def __init__(self, vocabulary: str):
        if not vocabulary:
            raise DataError("CharTokenizer needs a non-empty vocabulary (the corpus is empty)")
        points = _code_points(vocabulary)
        if len(np.unique(points)) != len(points):
            raise DataError("CharTokenizer vocabulary holds a character twice")
        self.vocabulary = vocabulary
        self.dtype = smallest_uint_dtype(len(vocabulary))
        self._points = points
        # Code point -> id; -1 marks characters outside the vocabulary, and the last slot stands
        # for every code point above the largest known one (inputs are clipped to it).
        self._table = np.full(int(points.max()) + 2, -1, dtype=np.int32)
        self._table[points] = np.arange(len(points))

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """Vocabulary = the distinct characters of ``text``, sorted by code point."""
        seen = np.zeros(MAX_CODE_POINT, dtype=bool)
        for chunk in _chunks(text):
            seen[_code_points(chunk)] = True
        points = np.flatnonzero(seen).astype(np.uint32)
        return cls(points.tobytes().decode("utf-32-le"))

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    def encode(self, text: str, *, what: str = "text") -> np.ndarray:
        """``str`` -> ``(n,)`` ids in the smallest unsigned dtype.

        Raises ``DataError`` listing the characters that are not in the vocabulary (``what`` names
        the text in that message, e.g. ``"prompt"``)."""
        out = np.empty(len(text), dtype=self.dtype)
        start = 0
        for chunk in _chunks(text):
            points = _code_points(chunk)
            ids = self._table[np.minimum(points, len(self._table) - 1)]
            if ids.min(initial=0) < 0:
                unknown = sorted(set(np.unique(points[ids < 0]).tolist()))
                shown = ", ".join(repr(chr(p)) for p in unknown[:20])
                more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
                raise DataError(
                    f"the {what} holds {len(unknown)} character(s) that are not in the model's "
                    f"vocabulary: {shown}{more}; remove them, or train with --tokenizer byte"
                )
            out[start : start + len(points)] = ids
            start += len(points)
        return out

    def decode(self, ids) -> str:
        """ids ``(n,)`` -> ``str``."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        return self._points[ids].tobytes().decode("utf-32-le")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "vocabulary": self.vocabulary}

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class ByteTokenizer:
    """UTF-8 bytes <-> ids ``0 .. 255``: no unknown symbols; a character may take several ids.

    Example::

        ByteTokenizer().encode("é")            # array([195, 169], dtype=uint8)
    """

    kind = "byte"
    vocab_size = 256
    dtype = np.dtype(np.uint8)

    def encode(self, text: str, *, what: str = "text") -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()

    def encode_bytes(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8).copy()

    def decode(self, ids) -> str:
        """ids -> text; an incomplete trailing character (possible in samples) becomes U+FFFD."""
        ids = np.asarray(ids, dtype=np.uint8).reshape(-1)
        return ids.tobytes().decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"kind": self.kind}

    def __repr__(self) -> str:
        return "ByteTokenizer()"


from seqmodel.configs import TOKENIZERS  # noqa: E402,F401  (the names live with the configs)


def tokenizer_from_dict(values: dict):
    """Rebuild a tokenizer from ``tokenizer.to_dict()`` (as stored in checkpoints)."""
    kind = values.get("kind")
    if kind == "char":
        return CharTokenizer(values["vocabulary"])
    if kind == "byte":
        return ByteTokenizer()
    raise DataError(f"unknown tokenizer kind {kind!r} in checkpoint; allowed: {', '.join(TOKENIZERS)}")


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------


def data_directories() -> list[pathlib.Path]:
    """Where built-in corpora are looked up: ``$SEQMODEL_DATA_DIR``, then the user cache folder."""
    folders = []
    if os.environ.get("SEQMODEL_DATA_DIR"):
        folders.append(pathlib.Path(os.environ["SEQMODEL_DATA_DIR"]).expanduser())
    folders.append(cache_directory())
    return folders


def cache_directory() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "seqmodel"


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tinyshakespeare_path(*, download: bool = True) -> pathlib.Path:
    """The tinyshakespeare file: found in :func:`data_directories`, else downloaded from char-rnn
    into the cache folder and checked against its sha256."""
    for folder in data_directories():
        for name in (TINYSHAKESPEARE_FILE, "input.txt"):
            path = folder / name
            if path.is_file() and (name == TINYSHAKESPEARE_FILE or _sha256(path) == TINYSHAKESPEARE_SHA256):
                return path
    target = cache_directory() / TINYSHAKESPEARE_FILE
    where = f"put {TINYSHAKESPEARE_FILE} (sha256 {TINYSHAKESPEARE_SHA256[:12]}...) into {target.parent}"
    if os.environ.get("SEQMODEL_DATA_DIR"):
        where += f" or into $SEQMODEL_DATA_DIR={os.environ['SEQMODEL_DATA_DIR']}"
    if not download:
        raise DataError(f"tinyshakespeare not found; {where}")
    try:
        with urllib.request.urlopen(TINYSHAKESPEARE_URL, timeout=30) as response:
            data = response.read()
    except OSError as error:
        raise DataError(
            f"tinyshakespeare not found locally and the download from {TINYSHAKESPEARE_URL} "
            f"failed ({error}); {where}"
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != TINYSHAKESPEARE_SHA256:
        raise DataError(
            f"downloaded tinyshakespeare has sha256 {digest}, expected {TINYSHAKESPEARE_SHA256}; {where}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(target)
    return target


# The python-stdlib corpus stops after this many characters: more than a few minutes of training
# can use on 2 cores, and small enough that the exact evaluation of its last 10% takes seconds.
PYTHON_STDLIB_MAX_CHARS = 3_000_000


def python_stdlib_files() -> list[pathlib.Path]:
    """The top-level modules of the running Python's standard library (``Lib/*.py``), sorted by
    name (packages and the test suite are left out)."""
    folder = pathlib.Path(sysconfig.get_paths()["stdlib"])
    return sorted(folder.glob("*.py"))


def read_python_stdlib(max_chars: int = PYTHON_STDLIB_MAX_CHARS) -> str:
    """The standard library modules, in name order, joined, up to ``max_chars`` characters
    (whole modules only; about 3 MB of real Python on every machine)."""
    parts, size = [], 0
    for path in python_stdlib_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # a module in another encoding is simply left out
        if parts and size + len(text) > max_chars:
            break
        parts.append(text)
        size += len(text) + 1
    if not parts:
        raise DataError("python-stdlib: no standard library modules found next to this Python")
    return "\n".join(parts)


def read_text_file(path: str | os.PathLike) -> str:
    """A UTF-8 text file as ``str``; a clear error for a missing, unreadable or non-UTF-8 file."""
    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise DataError(f"--data {str(path)!r}: no such file (and not a built-in source; "
                        f"built-ins: {', '.join(TEXT_BUILTINS)})")
    if path.is_dir():
        raise DataError(f"--data {str(path)!r} is a directory; give a text file")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"--data {str(path)!r} cannot be read: {error.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"--data {str(path)!r} is not valid UTF-8 (byte {error.start}); convert it to UTF-8"
        ) from None


TEXT_BUILTINS = {
    "python-stdlib": read_python_stdlib,
    "tinyshakespeare": lambda: tinyshakespeare_path().read_text(encoding="utf-8"),
}


def read_text_source(source: str) -> str:
    """``source`` is a built-in name (:data:`TEXT_BUILTINS`) or a path to a UTF-8 text file."""
    if source in TEXT_BUILTINS:
        return TEXT_BUILTINS[source]()
    return read_text_file(source)


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------


class TextDataset:
    """A token stream split into train (first part) and validation (the last ``val_fraction``).

    Implements the dataset protocol of :mod:`seqmodel.data` (see ``Dataset`` there).

    Example::

        dataset = TextDataset.from_text(text, tokenizer="char", val_fraction=0.1)
        batches = dataset.train_batches(batch_size=32, seq_len=128, batching="lanes", seed=0)
        batch = next(batches)                  # Batch(inputs (32, 128) uint8, targets, mask, reset)
    """

    kind = "text"

    def __init__(self, tokens: np.ndarray, tokenizer, *, val_fraction: float = 0.1,
                 name: str = "text"):
        if not (isinstance(val_fraction, (int, float)) and 0.0 <= val_fraction < 1.0):
            raise DataError(f"val_fraction={val_fraction!r} is invalid: must be in [0, 1)")
        if tokens.ndim != 1:
            raise DataError(f"tokens must be a 1-D stream, got shape {tokens.shape}")
        if len(tokens) == 0:
            raise DataError(f"--data {name!r} is empty: nothing to train on")
        self.tokens = tokens
        self.tokenizer = tokenizer
        self.name = name
        self.val_fraction = float(val_fraction)
        split = len(tokens) - int(round(len(tokens) * self.val_fraction))
        self.train_tokens = tokens[:split]
        self.val_tokens = tokens[split:]

    @classmethod
    def from_text(cls, text: str, *, tokenizer="char", val_fraction: float = 0.1,
                  name: str = "text") -> "TextDataset":
        """``tokenizer``: ``"char"`` (built from ``text``), ``"byte"``, or a tokenizer object (e.g.
        restored from a checkpoint; characters it does not know raise a clear error)."""
        if not text:
            raise DataError(f"--data {name!r} is empty: nothing to train on")
        if tokenizer == "char":
            tokenizer = CharTokenizer.from_text(text)
        elif tokenizer == "byte":
            tokenizer = ByteTokenizer()
        elif isinstance(tokenizer, str):
            raise DataError(f"--tokenizer {tokenizer!r} is invalid; allowed: {', '.join(TOKENIZERS)}")
        tokens = tokenizer.encode(text, what=f"data {name!r}")
        return cls(tokens, tokenizer, val_fraction=val_fraction, name=name)

    # -- what the model needs -----------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def model_fields(self) -> dict:
        """The :class:`seqmodel.ModelConfig` fields this data fixes."""
        return {"vocab_size": self.vocab_size, "head": "categorical"}

    @property
    def bits_per_unit(self) -> str | None:
        """Name of the unit for bits-per-unit reporting (``"char"`` / ``"byte"``)."""
        return self.tokenizer.kind

    def metadata(self) -> dict:
        """What a checkpoint keeps to rebuild the data side (JSON-compatible)."""
        return {"kind": self.kind, "name": self.name, "tokenizer": self.tokenizer.to_dict(),
                "val_fraction": self.val_fraction}

    # -- batches ---------------------------------------------------------------------------------

    def train_batches(self, *, batch_size: int, seq_len: int, batching: str = "lanes",
                      seed: int = 0, position: dict | None = None) -> BatchIterator:
        """Endless, resumable iterator of training :class:`Batch` es over the train part."""
        return make_batch_iterator(
            self.train_tokens, batch_size=batch_size, seq_len=seq_len, batching=batching,
            seed=seed, position=position, what=f"the train part of {self.name!r}",
        )

    def validation_batches(self, *, batch_size: int, seq_len: int) -> list[Batch]:
        """The whole validation stream, once, as masked lanes (see :func:`evaluation_batches`)."""
        return evaluation_batches(self.val_tokens, batch_size=batch_size, seq_len=seq_len)

    @property
    def num_validation_targets(self) -> int:
        return max(len(self.val_tokens) - 1, 0)


def load_text_dataset(source: str, *, tokenizer="char", val_fraction: float = 0.1) -> TextDataset:
    """Read ``source`` (built-in name or text file path) and tokenize it."""
    text = read_text_source(source)
    return TextDataset.from_text(text, tokenizer=tokenizer, val_fraction=val_fraction, name=source)
