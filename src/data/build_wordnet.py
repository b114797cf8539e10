"""Build a labelled text corpus of WordNet 3.0 glosses.

Why this exists
---------------
The project needs a real, licence-clean, offline text corpus whose examples
carry a natural label. WordNet 3.0 provides one: every synset has a gloss
(a definition, often followed by example sentences) and belongs to one of 45
"lexicographer files" (``noun.animal``, ``verb.motion``, ``adj.all``, ...),
which serve as topical labels. This script turns the raw WordNet database
files into a small, gzip-compressed JSON Lines file that ships with the
package (``src/data/assets/wordnet_glosses.jsonl.gz``), so nothing has to be
downloaded at run time.

Source data
-----------
Debian's ``wordnet-base`` package (``apt-get install -y wordnet-base``)
installs the database under ``/usr/share/wordnet/``. We read
``data.noun``, ``data.verb``, ``data.adj`` and ``data.adv`` (format: wndb(5))
and map each synset's ``lex_filenum`` to a name via the ``lexnames`` file
(format: lexnames(5)). Debian's package does not ship ``lexnames``; when it
is absent we fall back to the fixed WordNet 3.0 table from lexnames(5),
copied into ``_LEXNAMES_WN30`` below.

How to run
----------
From the repository root::

    python -m src.data.build_wordnet [--wordnet-dir /usr/share/wordnet] \
        [--out src/data/assets/wordnet_glosses.jsonl.gz]

Output
------
One JSON object per line, sorted by ``(pos, offset)``, with fields:

``id``
    pos letter + 8-digit synset offset, e.g. ``"n02084071"``.
``pos``
    ``"n"``, ``"v"``, ``"a"`` or ``"r"`` (satellite adjectives ``"s"`` map
    to ``"a"``).
``ss_type``
    the raw synset type from the data file (``n v a s r``).
``lexname``
    lexicographer file name, e.g. ``"noun.animal"``.
``words``
    the synset's lemmas, underscores replaced by spaces and adjective
    syntactic markers (``(a)``, ``(p)``, ``(ip)``) removed.
``definition``
    the gloss text before the first ``; "`` (trailing ``;``/space stripped).
``examples``
    the double-quoted example sentences that follow the definition.

Synsets with an empty definition are skipped. The gzip stream is written
with ``mtime=0`` and no file name in its header, so rebuilding from the same
input gives a byte-identical file. The licence is in
``src/data/assets/WORDNET_LICENSE.txt``.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re
import sys
from pathlib import Path
from typing import Iterator

DEFAULT_WORDNET_DIR = Path("/usr/share/wordnet")
DEFAULT_OUT = Path(__file__).resolve().parent / "assets" / "wordnet_glosses.jsonl.gz"

# The four data files, in output order (sorted by pos letter: a < n < r < v).
DATA_FILES = ("data.adj", "data.noun", "data.adv", "data.verb")

# WordNet 3.0 lexicographer file numbers -> names, as listed in lexnames(5).
# Used only when the ``lexnames`` file is missing (Debian omits it).
_LEXNAMES_WN30 = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal",
    "noun.artifact", "noun.attribute", "noun.body", "noun.cognition",
    "noun.communication", "noun.event", "noun.feeling", "noun.food",
    "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession",
    "noun.process", "noun.quantity", "noun.relation", "noun.shape",
    "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change",
    "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion",
    "verb.motion", "verb.perception", "verb.possession", "verb.social",
    "verb.stative", "verb.weather", "adj.ppl",
)

# Adjective syntactic markers glued to a word in data.adj, e.g. "galore(ip)".
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")
# Example sentences are the double-quoted strings after the definition.
_QUOTED = re.compile(r'"([^"]*)"')
# Fallback separator between examples for glosses with unbalanced quotes.
_EXAMPLE_SEP = re.compile(r'(?<=");\s*|;\s*(?=")')


def load_lexnames(wordnet_dir: Path) -> dict[int, str]:
    """Return {lex_filenum: lexname}, from ``lexnames`` if present."""
    path = wordnet_dir / "lexnames"
    if not path.exists():
        return dict(enumerate(_LEXNAMES_WN30))
    table: dict[int, str] = {}
    with path.open(encoding="ascii") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 2:
                table[int(fields[0])] = fields[1]
    return table


def split_gloss(gloss: str) -> tuple[str, list[str]]:
    """Split a gloss into (definition, example sentences).

    The definition is the text before the first ``; "``. The examples are the
    double-quoted strings after it; anything between them that is not quoted
    (``"; "`` separators, attributions such as ``- Shakespeare``) is dropped.
    """
    head, sep, tail = gloss.partition('; "')
    definition = head.strip().rstrip(";").rstrip()
    if not sep:
        return definition, []
    tail = '"' + tail  # put back the opening quote that partition consumed
    if tail.count('"') % 2 == 0:
        pieces = _QUOTED.findall(tail)
    else:
        # About 17 WordNet 3.0 glosses have a stray or missing quote, e.g.
        # '"long-toed; "five-toed"'. Pairing quotes would mangle them, so split
        # on the '; ' next to a quote instead and trim quotes off each piece.
        pieces = [p.strip('"') for p in _EXAMPLE_SEP.split(tail)]
    examples = [p.strip(" ;") for p in pieces]
    return definition, [e for e in examples if e]


def clean_word(word: str) -> str:
    """'galore(ip)' -> 'galore'; 'physical_entity' -> 'physical entity'."""
    return _ADJ_MARKER.sub("", word).replace("_", " ")


def parse_line(line: str, lexnames: dict[int, str]) -> dict | None:
    """Parse one synset line of a data.* file (wndb(5)); None if no definition."""
    data, sep, gloss = line.partition(" | ")
    if not sep:
        gloss = ""
    fields = data.split()
    offset = int(fields[0])
    lex_filenum = int(fields[1])
    ss_type = fields[2]
    w_cnt = int(fields[3], 16)
    words = [clean_word(fields[4 + 2 * i]) for i in range(w_cnt)]
    # Sanity-check the rest of the record layout: p_cnt, then 4 fields per pointer.
    p_index = 4 + 2 * w_cnt
    p_cnt = int(fields[p_index])
    after_pointers = p_index + 1 + 4 * p_cnt
    if ss_type == "v":
        f_cnt = int(fields[after_pointers])
        after_pointers += 1 + 3 * f_cnt
    if after_pointers != len(fields):
        raise ValueError(f"unexpected field layout in synset {offset:08d} ({ss_type})")

    definition, examples = split_gloss(gloss)
    if not definition:
        return None
    pos = "a" if ss_type == "s" else ss_type
    return {
        "id": f"{pos}{offset:08d}",
        "pos": pos,
        "ss_type": ss_type,
        "lexname": lexnames[lex_filenum],
        "words": words,
        "definition": definition,
        "examples": examples,
    }


def iter_synsets(wordnet_dir: Path, lexnames: dict[int, str]) -> Iterator[dict]:
    """Yield parsed synsets from all four data files (licence header skipped)."""
    for name in DATA_FILES:
        with (wordnet_dir / name).open(encoding="utf-8") as f:
            for line in f:
                if line.startswith("  ") or not line.strip():
                    continue  # licence header lines start with two spaces
                record = parse_line(line.rstrip("\n"), lexnames)
                if record is not None:
                    yield record


def write_jsonl_gz(records: list[dict], out: Path) -> None:
    """Write records as gzip-compressed JSON Lines, reproducibly and atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as raw:
        # filename="" and mtime=0 keep the gzip header free of paths and timestamps.
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
            for record in records:
                gz.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wordnet-dir", type=Path, default=DEFAULT_WORDNET_DIR,
                        help="directory holding data.noun etc. (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output .jsonl.gz path (default: %(default)s)")
    args = parser.parse_args(argv)

    lexnames = load_lexnames(args.wordnet_dir)
    records = sorted(iter_synsets(args.wordnet_dir, lexnames),
                     key=lambda r: (r["pos"], r["id"][1:]))
    write_jsonl_gz(records, args.out)

    print_counts(records, "lexname", args.out)
    return 0


def print_counts(records: list[dict], field: str, out: Path) -> None:
    """Rows per value of ``field``, most first, the total and the file written (the build scripts' report)."""
    counts = collections.Counter(r[field] for r in records)
    for value, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"{value:22s} {n:7d}")
    print(f"{'total':22s} {len(records):7d}")
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    sys.exit(main())
