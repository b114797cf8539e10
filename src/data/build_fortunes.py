"""Build a labelled text corpus of short fortune-mod "fortunes".

Why this exists
---------------
The recovery benchmark needs a second real, licence-clean, offline text world
besides WordNet, in a different register (quips, quotations, jokes instead of
dictionary definitions) but again with a natural topic label. The classic
BSD ``fortune`` data files provide one: each file is a *category* (``art``,
``computers``, ``food``, ``law``, ``politics``, ``science``, ``work``, ...)
holding short texts. This script turns those files into a small,
gzip-compressed JSON Lines file that ships with the package
(``src/data/assets/fortunes.jsonl.gz``), so nothing has to be downloaded at
run time.

Source data
-----------
Debian's ``fortunes`` package and its dependency ``fortunes-min`` (fortune-mod
1.99.1, BSD-style licence; ``apt-get install -y fortunes``) install the data
files under ``/usr/share/games/fortunes/``: one plain-text file per category
(format: strfile(1); entries separated by lines that are exactly ``%``), next
to a ``.dat`` index and a ``.u8`` symlink for each. Only the regular files at
the top level are read: ``.dat``/``.u8`` files, symbolic links and
sub-directories are skipped, so the offensive set (``fortunes-off``, under
``off/``) is never used even where it is installed.

Without ``--fortune-dir`` the script reads ``/usr/share/games/fortunes`` if it
exists; otherwise it runs ``apt-get download fortunes fortunes-min`` (no root
needed) in a temporary directory, unpacks both ``.deb`` files there with
``dpkg-deb -x`` and reads the unpacked ``usr/share/games/fortunes``. The
package's copyright file (``usr/share/doc/fortunes/copyright``) is committed
as ``src/data/assets/fortunes.COPYRIGHT``.

How to run
----------
From the repository root::

    python -m src.data.build_fortunes [--fortune-dir /usr/share/games/fortunes] \
        [--out src/data/assets/fortunes.jsonl.gz]

Each entry is cleaned and filtered as follows: every whitespace run (newlines,
tabs, indentation) collapses to a single space and the ends are stripped;
entries that are not valid UTF-8, that still hold other control characters
(backspace overstriking, terminal escapes) or that are shorter than
``MIN_CHARS`` (20) or longer than ``MAX_CHARS`` (160) characters after
cleaning are dropped; of exact duplicate texts (across all categories) the
first, in sorted-id order, is kept.

Output
------
One JSON object per line, sorted by ``id``, with fields:

``id``
    ``"<category>:<nnnn>"``, the entry's 0-based index in its file (counted
    before any filtering, so ids are stable), e.g. ``"science:0042"``.
``category``
    the data file's name, e.g. ``"science"``.
``text``
    the cleaned entry text.
``chars``
    ``len(text)``.

The gzip stream is written with ``mtime=0`` and no file name in its header,
so rebuilding from the same input gives a byte-identical file.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from src.data.build_wordnet import print_counts, write_jsonl_gz

DEFAULT_FORTUNE_DIR = Path("/usr/share/games/fortunes")
DEFAULT_OUT = Path(__file__).resolve().parent / "assets" / "fortunes.jsonl.gz"
# The Debian packages fetched when no fortune directory is installed (fortunes-min holds the
# "fortunes", "literature" and "riddles" files an installed ``fortunes`` pulls in too).
DEBIAN_PACKAGES = ("fortunes", "fortunes-min")

MIN_CHARS = 20
# 160, not more: the project's models read 64 tokens, and the embedded base LM's tokenizer (learnt on
# WordNet glosses) spends more tokens on fortunes than on glosses. At 160 characters 95% of the texts are
# <= 55 of its tokens (<= 60 with classify_lm's "\nTopic:" after them); at 200 it would be 64.
MAX_CHARS = 160

# An entry ends at a line that is exactly "%" (strfile's default delimiter).
_SEPARATOR = re.compile(r"^%$", re.MULTILINE)
# Control characters left after whitespace collapsing: overstrikes (\b), escapes (\x1b), etc.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def clean_entry(entry: str) -> str:
    """Collapse every whitespace run to one space and strip the ends."""
    return " ".join(entry.split())


def split_entries(text: str) -> list[str]:
    """The raw entries of a fortune file, in file order (blank pieces included, so indices are stable).

    A trailing piece after the last ``%`` that is blank is not an entry.
    """
    text = text.replace("\r\n", "\n")
    pieces = _SEPARATOR.split(text)
    if pieces and not pieces[-1].strip():
        pieces.pop()
    return pieces


def keep_entry(text: str) -> bool:
    """True for a cleaned entry within the length limits and free of control characters."""
    return MIN_CHARS <= len(text) <= MAX_CHARS and not _CONTROL.search(text)


def parse_fortune_file(text: str) -> list[str]:
    """Cleaned entries of one fortune file that pass the filters, in file order (duplicates kept)."""
    out = []
    for piece in split_entries(text):
        entry = clean_entry(piece)
        if keep_entry(entry):
            out.append(entry)
    return out


def category_files(fortune_dir: Path) -> list[Path]:
    """The category data files of a fortune directory: regular files, no index/links/sub-directories."""
    files = []
    for path in sorted(fortune_dir.iterdir()):
        if path.is_symlink() or not path.is_file() or path.suffix in (".dat", ".u8"):
            continue
        files.append(path)
    return files


def records_from_file(path: Path) -> list[dict]:
    """Records of one category file; each entry is decoded on its own, so a bad byte drops one entry."""
    category = path.name
    pieces = split_entries(path.read_bytes().decode("latin-1"))  # latin-1 maps bytes 1:1, never fails
    records = []
    for index, piece in enumerate(pieces):
        try:
            raw = piece.encode("latin-1").decode("utf-8")
        except UnicodeDecodeError:
            continue
        text = clean_entry(raw)
        if keep_entry(text):
            if index > 9999:
                raise ValueError(f"{path}: more than 10000 entries, ids need more than 4 digits")
            records.append({"id": f"{category}:{index:04d}", "category": category,
                            "text": text, "chars": len(text)})
    return records


def build_records(fortune_dir: Path) -> list[dict]:
    """All records of a fortune directory, sorted by id, exact duplicate texts dropped (first kept)."""
    files = category_files(fortune_dir)
    if not files:
        raise SystemExit(f"no fortune data files in {fortune_dir}")
    records = sorted((r for path in files for r in records_from_file(path)), key=lambda r: r["id"])
    seen: set[str] = set()
    unique = []
    for record in records:
        if record["text"] not in seen:
            seen.add(record["text"])
            unique.append(record)
    return unique


def download_fortune_dir(workdir: Path) -> Path:
    """``apt-get download`` the Debian packages into ``workdir``, unpack them, return the data dir."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{DEFAULT_FORTUNE_DIR} is absent and {tool} is not available; "
                             "pass --fortune-dir with fortune-mod's data files")
    subprocess.run(["apt-get", "download", *DEBIAN_PACKAGES], cwd=workdir, check=True)
    root = workdir / "root"
    for deb in sorted(workdir.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root / "usr" / "share" / "games" / "fortunes"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fortune-dir", type=Path, default=None,
                        help=f"directory holding the fortune data files (default: {DEFAULT_FORTUNE_DIR} "
                             "if present, else Debian's packages fetched with apt-get download)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output .jsonl.gz path (default: %(default)s)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="fortunes-") as tmp:
        fortune_dir = args.fortune_dir
        if fortune_dir is None:
            fortune_dir = DEFAULT_FORTUNE_DIR if DEFAULT_FORTUNE_DIR.is_dir() else download_fortune_dir(Path(tmp))
        print(f"reading {fortune_dir}")
        records = build_records(fortune_dir)
    write_jsonl_gz(records, args.out)

    print_counts(records, "category", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
