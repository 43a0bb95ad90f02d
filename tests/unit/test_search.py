"""Retrieval over a store: modes, fusion and query errors. What every store must do is in
`tests/contract/test_store.py` (filters, dimension checks and the rest, run for every backend)."""
import pytest

from loradex.config import RetrievalConfig
from loradex.embed import HashingEmbedder
from loradex.errors import QueryError
from loradex.retrieve import Ranked, fuse, search
from loradex.store import StoreError, open_store
from loradex.store.lancedb import where_clause
from loradex.types import Chunk, DocMeta, Filters, Source

EMB = HashingEmbedder()


def _chunk(doc_id, text, domain=None, tags=(), groups=(), i=0):
    return Chunk(f"{doc_id}-{i}", doc_id, i, text, Source(doc_id, None, (), 0, len(text)), "v1", 0.0,
                 DocMeta(domain, tuple(tags), tuple(groups)))


@pytest.fixture
def store(tmp_path):
    s = open_store("lancedb", tmp_path / "db", EMB.dim)
    chunks = [
        _chunk("claims.md", "report a burst pipe within thirty days", "claims", ["home"]),
        _chunk("theft.md", "report theft to the police within 24 hours", "claims", ["home", "motor"]),
        _chunk("fees.md", "a returned payment costs fifteen euro", "billing", [], ["finance"]),
        _chunk("secret.md", "the staff bonus pool is secret payment data", "billing", [], ["hr"]),
    ]
    for c in chunks:
        s.replace([c.doc_id], [c], EMB.embed([c.search_text()]))
    s.build_indexes()
    return s


def _ids(hits):
    return [h.chunk.doc_id for h in hits]


def test_dense_bm25_and_hybrid_find_the_matching_passage(store):
    cfg = RetrievalConfig()
    for mode in ("dense", "bm25", "hybrid"):
        hits = search(store, EMB, "police theft", cfg, k=2, mode=mode)
        assert _ids(hits)[0] == "theft.md", mode
    hit = search(store, EMB, "police theft", cfg, k=1)[0]
    assert hit.dense_rank == 1 and hit.bm25_rank == 1 and hit.bm25_score > 0 and 0 < hit.dense_score <= 1


def test_filter_values_are_quoted_not_injected():
    clause = where_clause(Filters(domain="x' OR '1'='1", tags=("a'b",)))
    assert clause == "domain = 'x'' OR ''1''=''1' AND array_has_any(tags, ['a''b'])"


def test_rrf_fusion_weights_and_ties():
    a, b, c = (_chunk(n, n) for n in "abc")
    dense = {"a-0": Ranked(a, 0.9, 1), "b-0": Ranked(b, 0.8, 2)}
    bm25 = {"b-0": Ranked(b, 7.0, 1), "c-0": Ranked(c, 5.0, 2)}
    hits = fuse(dense, bm25, RetrievalConfig(rrf_k=60))
    assert _ids(hits)[0] == "b"  # in both lists
    assert hits[0].score == pytest.approx(1 / 62 + 1 / 61)
    hits = fuse(dense, bm25, RetrievalConfig(rrf_k=60, dense_weight=0.0))
    assert _ids(hits)[:2] == ["b", "c"]


def test_bad_queries_and_backends(store):
    with pytest.raises(QueryError, match="empty query"):
        search(store, EMB, "  ", RetrievalConfig())
    with pytest.raises(QueryError, match="unknown retrieval mode"):
        search(store, EMB, "x", RetrievalConfig(), mode="magic")
    with pytest.raises(StoreError, match="unknown store backend"):
        open_store("nope", "/tmp/x", 4)
    assert search(store, EMB, "zzzz qqqq", RetrievalConfig(), mode="bm25") == []


def test_widen_adds_neighbours_merges_overlaps_and_respects_the_budget():
    import numpy as np

    from loradex.retrieve import widen
    from loradex.testing import MemoryStore
    from loradex.types import Chunk, Hit, Source

    def chunk(doc, i, text, start):
        return Chunk(f"{doc}-{i}", doc, i, text, Source(doc, None, ("Guide",), start, start + len(text)), "v1", 0.0)

    theft = [chunk("theft", i, t, 100 * i) for i, t in enumerate(
        ["Title.", "Police within 24 hours, insurer within 7 days.", "First steps: call the police.",
         "What is covered: forced entry.", "What is not covered: open windows."])]
    other = [chunk("other", 0, "Unrelated passage.", 0)]
    store = MemoryStore(dim=2)
    store.replace(["theft", "other"], theft + other, np.ones((6, 2), dtype=np.float32))
    hits = [Hit(theft[2], 0.9), Hit(other[0], 0.8), Hit(theft[4], 0.7), Hit(theft[1], 0.6)]
    assert widen(store, hits, 0) == hits
    wide = widen(store, hits, 1)
    assert [h.chunk.chunk_id for h in wide] == ["theft-2", "other-0", "theft-4"]  # theft-1: already given
    assert wide[0].chunk.text == "\n\n".join(c.text for c in theft[1:4]) and wide[0].score == 0.9
    assert (wide[0].chunk.source.start, wide[0].chunk.source.end) == (100, 300 + len(theft[3].text))
    assert wide[2].chunk.text == theft[4].text  # its neighbour theft-3 went to the first passage
    # the passage starts one chunk early; what `ask` shows under the matched chunk's heading starts at that chunk
    # (a new user saw "> Insured events" above text that began "## Who and where is covered")
    from loradex.types import SourceRef

    assert wide[0].chunk.text[wide[0].focus:].startswith("First steps") and wide[2].focus == 0
    assert SourceRef.from_hit(1, wide[0]).quote.startswith("...First steps: call the police.")
    assert SourceRef.from_hit(3, wide[2]).quote == theft[4].text
    tight = widen(store, hits, 2, max_chars=len(theft[2].text) + len(theft[1].text) + 2)
    assert tight[0].chunk.text == theft[1].text + "\n\n" + theft[2].text  # nearest first, within the budget
