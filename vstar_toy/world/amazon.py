"""Real data: Amazon Reviews 2018 in MiniOneRec's format, loaded as a :class:`World`.

MiniOneRec (github.com/AkaliKong/MiniOneRec) ships each Amazon category as a directory::

    index/<Category>.index.json   item id -> its SID tokens, {"0": ["<a_60>", "<b_159>", "<c_203>"], ...}
    info/<Category>*.txt          one line per item: SID string <TAB> title <TAB> item id
    train/ valid/ test/ *.csv     one row per (user, next item): user_id, history_item_id (a list literal),
                                  item_id, and optionally history_item_sid / item_sid / titles

``load_world("amazon18-office")`` reads the compact copy shipped in ``vstar_toy/data`` (JSON lines,
written by :func:`write_compact`); ``load_world(path)`` reads such a directory. Both go through
:func:`build_world`, so they give the same world. Recipe:

1. items: one catalog item per distinct SID (items whose SIDs collide are merged: MiniOneRec
   scores a hit by the SID string, so they are one item to every decoder and metric);
2. embeddings e(i) of the titles (``world/text.py``): all-MiniLM-L6-v2 sentence embeddings when the
   optional extra ``text`` is installed (computed once, cached by the titles' content), else TF-IDF +
   truncated SVD to 64 dims; ``World.embedding`` names which;
3. queries: every valid / test row is one query (split 1 / 2), ``World.people`` naming the user behind it
   (a user has one row per interaction in the period: sliding windows); training pairs are the train rows
   (split 0) or, when train/ is absent, windows rebuilt from the histories (see :func:`training_windows`);
4. histories keep the most recent ``history_len`` items, left-padded with -1.

Every malformed input raises one :class:`DataFormatError` naming the file, the line and the problem;
the world is built in full before anything is returned.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import gzip
import io
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from .catalog import Catalog
from .text import title_embeddings
from .users import SPLITS
from .world import World

CODEBOOK_SIZE = 256
"""Codes per SID level: MiniOneRec's RQ-VAE has 256 per level, tokens <a_0> .. <a_255>."""
SHIPPED = {"amazon18-office": "amazon18-office.jsonl.gz"}
"""Data sets shipped inside the package (vstar_toy/data), by the name ``load_world`` accepts."""
REQUIRED_COLUMNS = ("user_id", "history_item_id", "item_id")
COMPACT_FORMAT = "vstar-toy/minionerec-compact"
_TOKEN = re.compile(r"<([a-z])_(\d+)>")
_PIECE = re.compile(r"<[^<>]*>")


class DataFormatError(ValueError):
    """A data file that cannot be read as MiniOneRec data: names the file, the line and the problem."""

    def __init__(self, file: str | Path, line: int | None, problem: str):
        self.file, self.line, self.problem = str(file), line, problem
        where = f"{file}, line {line}" if line is not None else str(file)
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class Rows:
    """One split as read: row r is (users[r], histories[r] -> targets[r]), raw item ids, from ``lines[r]``."""

    file: str
    users: list[str] = field(default_factory=list)
    histories: list[list[int]] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class MiniOneRecData:
    """A MiniOneRec data set as read, before it becomes a World (raw item ids, token strings).

    items: raw item ids in index order; sids: each item's SID string "<a_60><b_159><c_203>";
    codes: (N, L) the same SIDs as integers; titles: display names ("" when unknown);
    splits: {"train"?, "valid", "test"} -> Rows; index_file: where the items came from.
    """

    name: str
    items: list[int]
    sids: list[str]
    codes: np.ndarray
    titles: list[str]
    splits: dict[str, Rows]
    index_file: str
    source: str


# ----------------------------------------------------------------------------------------------
# parsing pieces


def parse_sid(text: str, levels: int | None, file: str | Path, line: int | None) -> list[int]:
    """Codes of a SID string: ``"<a_12><b_3><c_200>" -> [12, 3, 200]``; level l's letter is the
    l-th of the alphabet and its code is in [0, 256). Raises :class:`DataFormatError` otherwise."""
    pieces = _PIECE.findall(text)
    if "".join(pieces) != text or not pieces:
        raise DataFormatError(file, line, f"SID {text!r} is not a sequence of tokens like <a_12><b_3><c_200>")
    if levels is not None and len(pieces) != levels:
        raise DataFormatError(file, line, f"SID {text!r} has {len(pieces)} tokens, expected {levels}")
    return [parse_token(tok, lvl, file, line) for lvl, tok in enumerate(pieces)]


def parse_token(tok: str, level: int, file: str | Path, line: int | None) -> int:
    """The code of one SID token at 0-based ``level``: ``parse_token("<b_3>", 1, ...) == 3``."""
    letter = chr(ord("a") + level)
    m = _TOKEN.fullmatch(tok)
    if m is None or m.group(1) != letter or int(m.group(2)) >= CODEBOOK_SIZE:
        raise DataFormatError(
            file, line, f"unknown SID token {tok!r} at level {level + 1}: expected <{letter}_0> .. "
            f"<{letter}_{CODEBOOK_SIZE - 1}>"
        )
    return int(m.group(2))


def _literal_list(text: str, column: str, file: Path, line: int) -> list:
    """A Python/JSON list literal ("[1, 2]", "['<a_1>...']"), or a DataFormatError naming the column."""
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            value = None
    if not isinstance(value, list):
        raise DataFormatError(file, line, f"{column} = {text[:80]!r} is not a list literal such as [12, 40]")
    return value


def _int(value, column: str, file: Path, line: int) -> int:
    if isinstance(value, bool):
        raise DataFormatError(file, line, f"{column} holds {value!r}, expected an integer item id")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataFormatError(file, line, f"{column} holds {value!r}, expected an integer item id") from None


def _one_file(folder: Path, suffix: str, category: str) -> Path:
    """The single ``*suffix`` file of ``folder`` (the one named after ``category`` if there are several)."""
    found = sorted(p for p in folder.glob(f"*{suffix}") if p.is_file()) if folder.is_dir() else []
    if len(found) > 1:
        found = [p for p in found if p.name.startswith(category)]
    if len(found) != 1:
        what = "no" if not found else "several"
        named = f" named after {category!r}" if category else ""
        raise DataFormatError(folder, None, f"{what} *{suffix} file(s){named}: expected exactly one")
    return found[0]


# ----------------------------------------------------------------------------------------------
# reading a MiniOneRec directory


def read_minionerec(path: str | Path) -> MiniOneRecData:
    """Read a MiniOneRec directory (index/, info/, optional train/, valid/, test/)."""
    root = Path(path)
    if not root.is_dir():
        raise DataFormatError(root, None, "not a directory: expected MiniOneRec's index/, info/, valid/, test/")
    index_file = _one_file(root / "index", ".index.json", "")
    category = index_file.name[: -len(".index.json")]
    items, sids, codes = _read_index(index_file)
    titles = _read_titles(root, category, items, codes)
    code_of = dict(zip(items, map(tuple, codes.tolist())))
    splits = {}
    for split in SPLITS:
        folder = root / split
        if split == "train" and not folder.exists():
            continue
        splits[split] = _read_csv(_one_file(folder, ".csv", category), code_of, codes.shape[1])
    return MiniOneRecData(
        name=root.name, items=items, sids=sids, codes=codes, titles=titles, splits=splits,
        index_file=str(index_file), source=str(root),
    )


def _read_text(file: Path) -> str:
    """The file as UTF-8 text, without the byte-order mark that spreadsheet programs put first; a byte that
    is not UTF-8 is a DataFormatError naming its line."""
    raw = file.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataFormatError(file, line, f"not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start}): "
                              "save the file as UTF-8") from None


def _read_index(file: Path) -> tuple[list[int], list[str], np.ndarray]:
    """index/*.index.json: item id -> list of SID tokens."""
    text = _read_text(file)
    try:
        index = json.loads(text)
    except ValueError as e:
        raise DataFormatError(file, getattr(e, "lineno", None), f"malformed JSON: {e}") from None
    if not isinstance(index, dict) or not index:
        raise DataFormatError(file, 1, "expected a non-empty JSON object {item id: [SID tokens]}")

    def line_of(key: str) -> int:  # the line an item's entry starts on (errors only)
        return text.count("\n", 0, max(text.find(f'"{key}"'), 0)) + 1

    items, sids, codes = [], [], []
    for key, tokens in index.items():
        if not key.lstrip("-").isdigit():
            raise DataFormatError(file, line_of(key), f"item id {key!r} is not an integer")
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
            raise DataFormatError(file, line_of(key), f"item {key}: expected a list of SID tokens, got {tokens!r}")
        if codes and len(tokens) != len(codes[0]):
            raise DataFormatError(file, line_of(key), f"item {key} has {len(tokens)} SID tokens, others have "
                                  f"{len(codes[0])}")
        codes.append([parse_token(t, lvl, file, line_of(key)) for lvl, t in enumerate(tokens)])
        items.append(int(key))
        sids.append("".join(tokens))
    return items, sids, np.array(codes, dtype=np.int64)


def _read_titles(root: Path, category: str, items: list[int], codes: np.ndarray) -> list[str]:
    """Titles from info/*.txt (SID, title, item id per line), else from index/*.item.json."""
    title_of: dict[int, str] = {}
    code_of = dict(zip(items, map(tuple, codes.tolist())))
    if (root / "info").is_dir():
        file = _one_file(root / "info", ".txt", category)
        for n, line in enumerate(_read_text(file).split("\n"), 1):
            line = line.removesuffix("\r")  # CRLF line ends
            if not line.strip():
                continue
            if line.count("\t") < 2:
                raise DataFormatError(file, n, "expected 3 tab-separated fields: SID, title, item id")
            sid, rest = line.split("\t", 1)
            title, item = rest.rsplit("\t", 1)
            item = _int(item, "the item id field", file, n)
            if item not in code_of:
                raise DataFormatError(file, n, f"item id {item} is not in index/{category}.index.json")
            if tuple(parse_sid(sid, codes.shape[1], file, n)) != code_of[item]:
                raise DataFormatError(file, n, f"SID {sid} of item {item} differs from the index's")
            title_of[item] = title
    else:
        meta = root / "index" / f"{category}.item.json"
        if not meta.is_file():
            raise DataFormatError(root / "info", None, f"no titles: neither info/*.txt nor {meta.name}")
        try:
            for key, value in json.loads(_read_text(meta)).items():
                title_of[int(key)] = str(value.get("title", "")) if isinstance(value, dict) else ""
        except (ValueError, AttributeError) as e:
            raise DataFormatError(meta, None, f"expected {{item id: {{'title': ...}}}}: {e}") from None
    return [title_of.get(i, "") for i in items]


def _read_csv(file: Path, code_of: dict[int, tuple], levels: int) -> Rows:
    """One split's CSV. SID columns, when present, must agree with the index."""
    rows = Rows(str(file))
    with _csv_fields_of_any_size():
        reader = csv.reader(io.StringIO(_read_text(file), newline=""))
        header = next(reader, None)
        if header is None:
            raise DataFormatError(file, 1, "empty file: expected a header and at least one row")
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise DataFormatError(file, 1, f"missing column(s) {', '.join(missing)}; the header has {header}")
        col = {name: header.index(name) for name in header}
        end = reader.line_num
        for fields in _csv_rows(reader, file):
            line, end = end + 1, reader.line_num  # a row starts after the last one ends (quoted newlines)
            if len(fields) != len(header):
                lost = (f"no column {header[len(fields)]!r} (and any after it)" if len(fields) < len(header)
                        else f"{len(fields) - len(header)} field(s) after the last column {header[-1]!r}")
                raise DataFormatError(file, line, f"{len(fields)} fields, the header has {len(header)}: {lost}")
            hist = _literal_list(fields[col["history_item_id"]], "history_item_id", file, line)
            hist = [_int(x, "history_item_id", file, line) for x in hist]
            target = _int(fields[col["item_id"]], "item_id", file, line)
            if "history_item_sid" in col:
                hsid = _literal_list(fields[col["history_item_sid"]], "history_item_sid", file, line)
                if len(hsid) != len(hist):
                    raise DataFormatError(file, line, f"history_item_sid has {len(hsid)} SIDs, history_item_id "
                                          f"{len(hist)} ids")
                _check_sids(hist, hsid, "history_item_sid", code_of, levels, file, line)
            if "item_sid" in col:
                _check_sids([target], [fields[col["item_sid"]]], "item_sid", code_of, levels, file, line)
            rows.users.append(fields[col["user_id"]])
            rows.histories.append(hist)
            rows.targets.append(target)
            rows.lines.append(line)
    if not rows.users:
        raise DataFormatError(file, 2, "no rows after the header: the split is empty")
    return rows


@contextlib.contextmanager
def _csv_fields_of_any_size():
    """csv's 131,072-character field limit lifted while a split is read (a long history is a long field)."""
    before = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)
    try:
        yield
    finally:
        csv.field_size_limit(before)


def _csv_rows(reader, file: Path):
    """The reader's rows; a CSV syntax error becomes a DataFormatError naming the file and line."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataFormatError(file, reader.line_num, f"not valid CSV: {e}") from None


def _check_sids(ids, sids, column, code_of, levels, file, line) -> None:
    for item, sid in zip(ids, sids):
        if not isinstance(sid, str):
            raise DataFormatError(file, line, f"{column} holds {sid!r}, expected a SID string")
        codes = tuple(parse_sid(sid, levels, file, line))
        if item in code_of and codes != code_of[item]:
            raise DataFormatError(file, line, f"{column} gives item {item} the SID {sid}, the index another")


# ----------------------------------------------------------------------------------------------
# the compact copy: JSON lines, gzip


def write_compact(data: MiniOneRecData, out: str | Path, provenance: str = "") -> Path:
    """Write ``data`` as a compact JSON-lines file (gzip, byte-reproducible): a header line, one
    ``["item", id, sid, title]`` line per item, one ``[split, user_id, history ids, item id]`` per row."""
    out = Path(out)
    lines = [{"format": COMPACT_FORMAT, "version": 1, "name": data.name, "provenance": provenance,
              "items": ["item", "id", "sid", "title"], "rows": ["split", "user_id", "history_item_id", "item_id"]}]
    lines += [["item", i, s, t] for i, s, t in zip(data.items, data.sids, data.titles)]
    for split, rows in data.splits.items():
        lines += [[split, u, h, t] for u, h, t in zip(rows.users, rows.histories, rows.targets)]
    text = "".join(json.dumps(x, ensure_ascii=False, separators=(",", ":")) + "\n" for x in lines)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
        f.write(text.encode("utf-8"))
    os.replace(tmp, out)  # all or nothing on disk
    return out


def read_compact(path: str | Path) -> MiniOneRecData:
    """Read a file written by :func:`write_compact`."""
    file = Path(path)
    try:
        with gzip.open(file, "rt", encoding="utf-8") as f:
            text = f.read()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataFormatError(file, None, f"not a readable gzip file of UTF-8 text: {e}") from None
    items, sids, codes, titles, splits, header, seen = [], [], [], [], {}, None, set()
    for n, raw in enumerate(text.splitlines(), 1):
        try:
            rec = json.loads(raw)
        except ValueError as e:
            raise DataFormatError(file, n, f"malformed JSON line: {e}") from None
        if n == 1:
            if not (isinstance(rec, dict) and rec.get("format") == COMPACT_FORMAT):
                raise DataFormatError(file, 1, f"expected a header line with format {COMPACT_FORMAT!r}")
            header = rec
        elif isinstance(rec, list) and len(rec) == 4 and rec[0] == "item":
            if not (isinstance(rec[2], str) and isinstance(rec[3], str)):
                raise DataFormatError(file, n, "an item line is [\"item\", id, sid string, title string]")
            items.append(_int(rec[1], "the item id", file, n))
            if items[-1] in seen:
                raise DataFormatError(file, n, f"item id {items[-1]} appears twice")
            seen.add(items[-1])
            codes.append(parse_sid(rec[2], len(codes[0]) if codes else None, file, n))
            sids.append(rec[2])
            titles.append(rec[3])
        elif isinstance(rec, list) and len(rec) == 4 and rec[0] in SPLITS:
            if not isinstance(rec[2], list):
                raise DataFormatError(file, n, f"history_item_id = {rec[2]!r} is not a list of item ids")
            rows = splits.setdefault(rec[0], Rows(str(file)))
            rows.users.append(str(rec[1]))
            rows.histories.append([_int(x, "history_item_id", file, n) for x in rec[2]])
            rows.targets.append(_int(rec[3], "item_id", file, n))
            rows.lines.append(n)
        else:
            raise DataFormatError(file, n, f"expected an item line or a {'/'.join(SPLITS)} row, got {raw[:80]!r}")
    if header is None or not items:
        raise DataFormatError(file, None, "no header or no item lines")
    for split in ("valid", "test"):
        splits.setdefault(split, Rows(str(file)))
    return MiniOneRecData(
        name=str(header.get("name", file.name)), items=items, sids=sids, codes=np.array(codes, dtype=np.int64),
        titles=titles, splits=splits, index_file=str(file), source=str(header.get("provenance") or file),
    )


def shipped_path(name: str) -> Path:
    """The compact copy of a shipped data set (``SHIPPED``)."""
    return Path(str(resources.files("vstar_toy") / "data" / SHIPPED[name]))


# ----------------------------------------------------------------------------------------------
# the world


TRAIN_UNTIL = ("valid", "test")
"""Where the training windows of a world without train/ end: before the validation period (the model whose
settings are chosen on validation rows) or before the test period (the model that is tested)."""


def training_windows(rows: list[tuple[int, list[int], int]], before: int) -> tuple[list[list[int]], list[int]]:
    """One user's legal training windows: every (history, next item) pair whose next item precedes the period
    of split ``before`` (1 valid, 2 test).

    ``rows``: the user's evaluated rows in time order, each (split, history, target). MiniOneRec cuts all
    interactions 8:1:1 by time and writes one row per interaction after a user's first, in the period of its
    target; so the user's first evaluated row is their earliest interaction after the training period, and
    its history lies inside that period: its windows ``h[:k] -> h[k]`` are legal for both. Before the test
    period, the validation rows are legal too (their targets are in the validation period).

    >>> training_windows([(1, [5, 6], 7), (2, [5, 6, 7], 8)], before=1)
    ([[5]], [6])
    >>> training_windows([(1, [5, 6], 7), (2, [5, 6, 7], 8)], before=2)
    ([[5], [5, 6]], [6, 7])
    """
    if before not in (SPLITS["valid"], SPLITS["test"]):
        raise ValueError(f"before = {before!r} is invalid: expected 1 (the validation period) or 2 (test)")
    first = rows[0][1]
    hists, targets = [first[:k] for k in range(1, len(first))], first[1:]
    if before == SPLITS["test"]:
        hists += [list(h) for split, h, _ in rows if split == SPLITS["valid"]]
        targets += [t for split, _, t in rows if split == SPLITS["valid"]]
    return hists, list(targets)


def left_pad(seqs: list[list[int]], length: int) -> np.ndarray:
    """(S, length) int64: the last ``length`` items of each sequence, left-padded with -1."""
    out = np.full((len(seqs), length), -1, dtype=np.int64)
    for r, s in enumerate(seqs):
        s = s[-length:]
        if s:
            out[r, length - len(s):] = s
    return out


def merge_collisions(data: MiniOneRecData) -> tuple[list[int], dict[int, int]]:
    """Catalog items of a data set: (index positions of the items kept, raw item id -> catalog id).

    One catalog item per distinct SID, in index order; an item whose SID an earlier item holds maps to
    that earlier item. Items 0, 1, 2 with SIDs A, B, A give ``([0, 1], {0: 0, 1: 1, 2: 0})``.
    """
    item_of_sid: dict[tuple, int] = {}
    item_of_raw: dict[int, int] = {}
    keep = []
    for r, (raw, sid) in enumerate(zip(data.items, map(tuple, data.codes.tolist()))):
        if sid not in item_of_sid:
            item_of_sid[sid] = len(keep)
            keep.append(r)
        item_of_raw[raw] = item_of_sid[sid]
    return keep, item_of_raw


def build_world(data: MiniOneRecData, history_len: int = 10, encoder: str = "auto",
                say: Callable[[str], None] = lambda m: None, train_until: str = "valid") -> World:
    """The World of a data set read by :func:`read_minionerec` or :func:`read_compact`; the items are
    embedded by their titles with ``encoder`` (``world/text.py``: "auto", "minilm" or "tfidf").
    ``train_until`` (``TRAIN_UNTIL``), without train/: the training windows end before the validation period
    ("valid", for choices made on validation rows) or before the test period ("test", adding the validation
    rows, for the model that is only tested)."""
    _check_history_len(history_len)
    if train_until not in TRAIN_UNTIL:
        raise ValueError(f"train_until = {train_until!r} is invalid: expected one of {', '.join(TRAIN_UNTIL)}")
    # 1. one catalog item per distinct SID, in index order; colliding items merge into the first
    keep, item_of_raw = merge_collisions(data)
    merged = len(data.items) - len(keep)
    # 2. map every row to catalog ids, naming the file and line of anything unknown
    mapped: dict[str, tuple[list[str], list[list[int]], list[int]]] = {}
    for split, rows in data.splits.items():
        if not rows.users:
            raise DataFormatError(rows.file, rows.lines[0] if rows.lines else None, f"the {split} split has no rows")
        hists, targets = [], []
        for h, t, line in zip(rows.histories, rows.targets, rows.lines):
            if not h:
                raise DataFormatError(rows.file, line, "empty history_item_id: a query needs >= 1 earlier item")
            for x, column in [(x, "history_item_id") for x in h] + [(t, "item_id")]:
                if x not in item_of_raw:
                    raise DataFormatError(rows.file, line, f"{column} holds item id {x}, which is not in "
                                          f"{Path(data.index_file).name}")
            hists.append([item_of_raw[x] for x in h])
            targets.append(item_of_raw[t])
        mapped[split] = (rows.users, hists, targets)
    for split in ("valid", "test"):
        if split not in mapped:
            raise DataFormatError(data.source, None, f"the {split} split is missing")
    # 3. embeddings and the trie
    titles = tuple(data.titles[r] for r in keep)
    emb, embedding = title_embeddings(list(titles), encoder, say)
    catalog = Catalog.from_sids(data.codes[keep], emb, (CODEBOOK_SIZE,) * data.codes.shape[1], titles)
    # 4. training pairs: the train rows, or every window whose target precedes the period of ``train_until``
    people_of: dict[str, int] = {}
    for split in ("valid", "test"):
        for user in mapped[split][0]:
            people_of.setdefault(user, len(people_of))
    if "train" in mapped:
        train_h, train_t = mapped["train"][1], mapped["train"][2]
        train_p = [people_of.setdefault(u, len(people_of)) for u in mapped["train"][0]]
        protocol = f"train split: {len(train_t)} rows of train/ as given (MiniOneRec's sliding windows)"
    else:
        rows_of: dict[str, list] = {}
        for split in ("valid", "test"):  # MiniOneRec writes a user's rows in time order, valid before test
            for user, h, t in zip(*mapped[split]):
                rows_of.setdefault(user, []).append((SPLITS[split], h, t))
        train_h, train_t, train_p = [], [], []
        for user, rows in rows_of.items():
            h, t = training_windows(rows, SPLITS[train_until])
            train_h += h
            train_t += t
            train_p += [people_of[user]] * len(t)
        protocol = (
            f"train split absent: {len(train_t)} training windows (history[:k] -> history[k]) from "
            f"{len(set(train_p))} users, every target before the {train_until} period (rebuilt from the users' "
            "valid/test rows, which MiniOneRec cuts 8:1:1 by time); absolute HR/NDCG are not comparable with "
            "the paper's Table 1, which trains on the windows of all users"
            + ("; the validation rows are among them, so nothing may be chosen on them with this world"
               if train_until == "test" else "")
        )
    # 5. users = train pairs, valid rows, test rows (``SPLITS``)
    parts = [(train_h, train_t, SPLITS["train"]), (mapped["valid"][1], mapped["valid"][2], SPLITS["valid"]),
             (mapped["test"][1], mapped["test"][2], SPLITS["test"])]
    histories = left_pad([h for hs, _, _ in parts for h in hs], history_len)
    targets = np.array([t for _, ts, _ in parts for t in ts], dtype=np.int64)
    split = np.concatenate([np.full(len(ts), s, dtype=np.int64) for _, ts, s in parts])
    people = np.array(train_p + [people_of[u] for u in mapped["valid"][0]] + [people_of[u] for u in
                      mapped["test"][0]], dtype=np.int64)
    train = split == SPLITS["train"]
    valid, test = split == SPLITS["valid"], split == SPLITS["test"]
    notes = (
        f"source: {data.source} (MiniOneRec format)",
        protocol,
        f"queries: {int(valid.sum())} valid rows of {len(np.unique(people[valid]))} users and "
        f"{int(test.sum())} test rows of {len(np.unique(people[test]))} users (intervals resample "
        f"users: ``World.people``); histories keep the last {history_len} items",
        f"items: {len(data.items)} item ids, {catalog.n_items} distinct SIDs; {merged} items sharing a SID were "
        "merged into one catalog item (MiniOneRec counts a hit by SID)",
        f"embeddings: {embedding}",
    )
    return World(
        catalog=catalog, histories=histories, targets=targets, split=split,
        train_histories=histories[train], train_targets=targets[train][:, None], name=data.name,
        collisions_resolved=merged, notes=notes, embedding=embedding, people=people,
        valid_seen=train_until == "test" and "train" not in mapped,
    )


def _check_history_len(history_len) -> None:
    if isinstance(history_len, bool) or not isinstance(history_len, int) or history_len < 1:
        raise ValueError(f"history_len = {history_len!r} is invalid: expected an integer >= 1")


def load_world(source: str | Path, history_len: int = 10, encoder: str = "auto",
               say: Callable[[str], None] = lambda m: None, train_until: str = "valid") -> World:
    """The World of real data: a shipped name (``"amazon18-office"``), a MiniOneRec directory, or a
    compact ``.jsonl.gz`` file. ``history_len``: H, the most recent items kept per history, >= 1;
    ``encoder``: how titles become item embeddings (``world/text.py``); ``train_until``: see :func:`build_world`."""
    _check_history_len(history_len)
    if isinstance(source, str) and source in SHIPPED:
        return build_world(read_compact(shipped_path(source)), history_len, encoder, say, train_until)
    path = Path(source)
    if path.is_dir():
        return build_world(read_minionerec(path), history_len, encoder, say, train_until)
    if path.is_file() and path.name.endswith(".gz"):
        return build_world(read_compact(path), history_len, encoder, say, train_until)
    raise ValueError(
        f"source = {str(source)!r} is invalid: expected one of {', '.join(SHIPPED)}, a MiniOneRec directory "
        "(index/, info/, valid/, test/) or a compact .jsonl.gz file"
    )
