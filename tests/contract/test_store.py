"""The Store contract (`loradex.store.Store`), run against every backend named in `loradex.backends.STORES`.

A new backend joins by adding its line there. Backends that keep nothing on disk say so with a class
attribute `persistent = False`; the reopen rows are skipped for them.
"""
from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest

from loradex.backends import STORES
from loradex.config import RetrievalConfig
from loradex.embed import HashingEmbedder
from loradex.errors import IndexMismatch, StoreError
from loradex.retrieve import search
from loradex.store import open_store
from loradex.types import Chunk, DocMeta, Filters, Source

DIM = 256
EMB = HashingEmbedder(DIM)
HOSTILE = ["'", '"', "%", "\\", "_", "*", ") OR 1=1 --", "x' OR '1'='1", "'); DROP TABLE chunks; --",
           '" OR ""="', "a\nb\tc", "ünïcödé ✓ 東京", "NOT", "(", "\\' OR 1=1 --", "%' OR doc_id LIKE '%"]
ODD_ID = "o'brien \"50%\" \\ ünï.md"  # a document whose id, domain and tags need quoting


def _chunk(doc_id, text, domain=None, tags=(), groups=(), i=0, version="v1", heading=(), page=None):
    return Chunk(f"{doc_id}-{i}", doc_id, i, text, Source(doc_id, page, tuple(heading), 0, len(text)), version,
                 0.0, DocMeta(domain, tuple(tags), tuple(groups)))


def _put(store, doc_id, chunks):
    store.replace([doc_id], chunks, EMB.embed([c.search_text() for c in chunks]))


CORPUS = {
    "claims.md": [_chunk("claims.md", "report a burst pipe within thirty days", "claims", ["home"])],
    "theft.md": [_chunk("theft.md", "report theft to the police within 24 hours", "claims", ["home", "motor"])],
    "fees.md": [_chunk("fees.md", "a returned payment costs fifteen euro", "billing", [], ["finance"])],
    "secret.md": [_chunk("secret.md", "the staff bonus pool is secret payment data", "billing", [], ["hr"])],
    "policy.md": [_chunk("policy.md", text, "claims", [], [], i, heading=("Policy", f"Part {i}"), page=i + 1)
                  for i, text in enumerate(["the policy covers storm damage to the roof",
                                            "the policy excludes wear and tear of the pipes",
                                            "the policy ends when the premium is unpaid"])],
}
N_CHUNKS = sum(len(cs) for cs in CORPUS.values())
PUBLIC = {"claims.md", "theft.md", "policy.md"}


@pytest.fixture(params=sorted(STORES))
def backend(request):
    return request.param


@pytest.fixture
def make(backend, tmp_path, request):
    """Opens the backend's store called `name` for this test: a folder under tmp_path, or for `pgvector` a
    database of its own on the session's PostgreSQL server (`tests/conftest.py`)."""
    def where(name):
        if backend == "pgvector":
            return request.getfixturevalue("postgres").database(str(tmp_path / name))
        return tmp_path / name

    def make(name="db", dim=DIM, reset=False):
        return open_store(backend, where(name), dim, reset=reset)
    return make


@pytest.fixture
def store(make):
    s = make()
    for doc_id, chunks in CORPUS.items():
        _put(s, doc_id, chunks)
    s.build_indexes()
    return s


def _docs(pairs):
    return {c.doc_id for c, _ in pairs}


EVERY_DOC = "report payment policy secret data theft pipe zebra"  # a word of every document (and the odd one)


def _seen(store, filters, text=EVERY_DOC):
    """Documents each search method returns under `filters` (k large enough for everything)."""
    dense = _docs(store.search_vector(EMB.embed([text])[0], 100, filters))
    keyword = _docs(store.search_text(text, 100, filters))
    return dense, keyword


def _ids(hits):
    return [h.chunk.doc_id for h in hits]


# ---- writing and reading --------------------------------------------------------------------------------

def test_replace_then_search_finds_each_chunk(make):
    s = make()
    for doc_id, chunks in CORPUS.items():
        _put(s, doc_id, chunks)
    for _ in range(2):  # complete before build_indexes, then after it
        for chunks in CORPUS.values():
            for c in chunks:
                top, cos = s.search_vector(EMB.embed([c.search_text()])[0], 1)[0]
                assert top == c and cos == pytest.approx(1.0, abs=1e-5)
        assert s.search_text("police theft", 3)[0][0] == CORPUS["theft.md"][0]
        s.build_indexes()
    late = _chunk("late.md", "a hailstorm dented the bonnet")  # written after the index was built
    _put(s, "late.md", [late])
    assert s.search_text("hailstorm", 5)[0][0] == late
    assert s.search_vector(EMB.embed([late.search_text()])[0], 1)[0][0] == late


def test_chunks_round_trip_every_field_in_ordinal_order(make):
    s = make()
    policy = CORPUS["policy.md"]
    shuffled = [policy[2], policy[0], policy[1]]
    _put(s, "policy.md", shuffled)
    assert s.chunks("policy.md") == policy
    assert [c.ordinal for c in s.chunks("policy.md")] == [0, 1, 2]
    assert s.chunks("nothing.md") == []


def test_replace_swaps_all_chunks_of_a_document(store):
    new = [dataclasses.replace(_chunk("policy.md", "the new policy covers floods", "claims", i=i, version="v2"),
                               chunk_id=f"policy.md#v2-{i}") for i in range(2)]
    _put(store, "policy.md", new)
    got = store.chunks("policy.md")
    assert [c.chunk_id for c in got] == ["policy.md#v2-0", "policy.md#v2-1"]
    assert {c.doc_version for c in got} == {"v2"}
    assert store.count() == N_CHUNKS - 3 + 2
    old_ids = {c.chunk_id for c in CORPUS["policy.md"]}
    everything = store.search_vector(EMB.embed(["policy"])[0], 100) + store.search_text("policy roof", 100)
    assert not old_ids & {c.chunk_id for c, _ in everything}
    assert store.chunks("theft.md") == CORPUS["theft.md"]  # other documents untouched
    store.replace(["policy.md"], [], np.zeros((0, DIM), np.float32))  # no chunks: the document is gone
    assert store.chunks("policy.md") == [] and store.count() == N_CHUNKS - 3


def test_replace_is_atomic_under_a_concurrent_reader(make):
    s = make()
    _put(s, "theft.md", CORPUS["theft.md"])
    versions = {v: [Chunk(f"doc-{v}-{i}", "doc", i, f"shared words of version {v} part {i}",
                          Source("doc", None, (), 0, 1), v, 0.0) for i in range(n)]
                for v, n in (("A", 3), ("B", 2))}
    expect = {v: {c.chunk_id for c in cs} for v, cs in versions.items()}
    _put(s, "doc", versions["A"])
    done, problems, seen = threading.Event(), [], {"A": 0, "B": 0}

    def check(ids, how):
        match = [v for v, want in expect.items() if ids == want]
        if not match:
            problems.append((how, sorted(ids)))
        else:
            seen[match[0]] += 1

    def reader():
        only_doc = Filters(doc_ids=("doc",))
        while not done.is_set():
            try:
                check({c.chunk_id for c in s.chunks("doc")}, "chunks")
                check({c.chunk_id for c, _ in s.search_text("shared words", 10, only_doc)}, "search_text")
                check({c.chunk_id for c, _ in s.search_vector(EMB.embed(["shared"])[0], 10, only_doc)}, "vector")
            except Exception as e:  # noqa: BLE001 - reported below
                problems.append(("error", repr(e)))
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    deadline, writes = time.monotonic() + 2.0, 0
    while time.monotonic() < deadline and not problems:
        _put(s, "doc", versions["B" if writes % 2 == 0 else "A"])
        writes += 1
    done.set()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert problems == [], problems[:5]
    assert writes >= 2 and sum(seen.values()) > 0
    assert s.chunks("theft.md") == CORPUS["theft.md"]


def test_export_gives_each_document_back_with_its_vectors(store, make):
    for doc_id, chunks in CORPUS.items():
        got, vectors = store.export(doc_id)
        assert got == chunks and vectors.dtype == np.float32 and vectors.shape == (len(chunks), DIM)
        want = EMB.embed([c.search_text() for c in chunks])
        cos = (vectors * want).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(want, axis=1)
        assert np.allclose(cos, 1.0, atol=1e-5)
    nothing, empty = store.export("never-stored.md")
    assert nothing == [] and empty.shape == (0, DIM)
    copy = make("copy")  # what export gives, replace takes: the same searches on the copy
    for doc_id in CORPUS:
        copy.replace([doc_id], *store.export(doc_id))
    v = EMB.embed(["police theft"])[0]
    assert [c for c, _ in copy.search_vector(v, 3)] == [c for c, _ in store.search_vector(v, 3)]
    assert copy.count() == store.count()


def test_delete(store):
    store.delete(["fees.md", "policy.md", "never-stored.md"])
    assert store.chunks("fees.md") == [] and store.chunks("policy.md") == []
    assert store.count() == N_CHUNKS - 4
    assert _seen(store, Filters()) == ({"claims.md", "theft.md", "secret.md"},) * 2
    store.delete([])
    assert store.count() == N_CHUNKS - 4


def test_count_and_build_indexes_any_time(make):
    s = make()
    assert s.count() == 0
    s.build_indexes()  # on an empty store
    assert s.search_vector(EMB.embed(["x"])[0], 5) == [] and s.search_text("x", 5) == []
    for doc_id, chunks in CORPUS.items():
        _put(s, doc_id, chunks)
        s.build_indexes()
    s.build_indexes()  # twice in a row
    assert s.count() == N_CHUNKS
    s.delete(list(CORPUS))
    s.build_indexes()  # after everything is gone
    assert s.count() == 0 and s.search_text("policy", 5) == []


# ---- filters --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("filters, expected", [
    (Filters(), set(CORPUS)),
    (Filters(domain="billing"), {"fees.md", "secret.md"}),
    (Filters(domain="nope"), set()),
    (Filters(tags=("motor",)), {"theft.md"}),
    (Filters(tags=("motor", "home")), {"claims.md", "theft.md"}),  # any of them
    (Filters(doc_ids=("fees.md", "policy.md")), {"fees.md", "policy.md"}),
    (Filters(groups=None), set(CORPUS)),  # EVERYTHING: no access check
    (Filters(groups=()), PUBLIC),  # a caller without groups: public documents only
    (Filters(groups=("finance",)), PUBLIC | {"fees.md"}),
    (Filters(groups=("finance", "hr")), set(CORPUS)),
    (Filters(domain="billing", groups=("finance",)), {"fees.md"}),
    (Filters(domain="claims", tags=("home",), doc_ids=("theft.md", "fees.md"), groups=()), {"theft.md"}),
])
def test_every_filter_in_both_searches(store, filters, expected):
    assert _seen(store, filters) == (expected, expected)


def test_filters_domain_tags_groups(store):  # moved from tests/unit/test_search.py
    cfg = RetrievalConfig()
    assert set(_ids(search(store, EMB, "report payment", cfg, k=10, filters=Filters(domain="billing")))) == \
        {"fees.md", "secret.md"}
    assert _ids(search(store, EMB, "report", cfg, k=10, filters=Filters(tags=("motor",)))) == ["theft.md"]
    # a caller in 'finance' sees public documents and finance ones, never the hr secret
    seen = _ids(search(store, EMB, "payment secret data", cfg, k=10, filters=Filters(groups=("finance",))))
    assert "fees.md" in seen and "claims.md" in seen and "secret.md" not in seen
    seen = _ids(search(store, EMB, "payment secret data", cfg, k=10, filters=Filters(groups=())))
    assert "fees.md" not in seen and "secret.md" not in seen


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_filter_values_and_queries_neither_fail_nor_leak(store, value):
    odd = _chunk(ODD_ID, "zebra crossing near the öffice", "it's 100%", ["a'b", "\\"], ["r&d'"])
    _put(store, ODD_ID, [odd])
    everyone = set(CORPUS) | {ODD_ID}
    for filters, expected in [
        (Filters(domain=value), set()),
        (Filters(tags=(value,)), {ODD_ID} if value == "\\" else set()),
        (Filters(doc_ids=(value,)), set()),
        (Filters(groups=(value,)), PUBLIC),
        (Filters(groups=(value, "finance")), PUBLIC | {"fees.md"}),
    ]:
        assert _seen(store, filters, f"{EVERY_DOC} {value}") == (expected, expected), filters
    for filters, expected in [(Filters(), everyone), (Filters(groups=()), PUBLIC),
                              (Filters(groups=("finance",)), PUBLIC | {"fees.md"})]:
        for text in (value, f"payment {value}", f"{value} police", f"'{value}'"):
            pairs = store.search_text(text, 100, filters)
            assert _docs(pairs) <= expected and all(score >= 0 for _, score in pairs), (text, filters)
        assert "theft.md" in _docs(store.search_text(f"{value} police", 100, filters))
    # values that need quoting still match exactly what they name
    assert _seen(store, Filters(domain="it's 100%"), "zebra") == ({ODD_ID},) * 2
    assert _seen(store, Filters(tags=("a'b",)), "zebra") == ({ODD_ID},) * 2
    assert _seen(store, Filters(doc_ids=(ODD_ID,)), "zebra") == ({ODD_ID},) * 2
    assert _seen(store, Filters(groups=("r&d'",))) == (PUBLIC | {ODD_ID},) * 2
    assert store.chunks(ODD_ID) == [odd]
    store.delete([ODD_ID])
    assert store.chunks(ODD_ID) == [] and store.count() == N_CHUNKS


# ---- scores and ordering --------------------------------------------------------------------------------

def test_results_best_first_with_scores_in_their_units(store):
    v = EMB.embed([CORPUS["theft.md"][0].search_text()])[0]
    pairs = store.search_vector(v, 100)
    cos = [s for _, s in pairs]
    assert len(pairs) == N_CHUNKS and cos == sorted(cos, reverse=True)
    assert all(-1 - 1e-5 <= s <= 1 + 1e-5 for s in cos)
    assert pairs[0][0].doc_id == "theft.md" and cos[0] == pytest.approx(1.0, abs=1e-5)
    opposite = store.search_vector(-v, 100)
    assert opposite[-1][0].doc_id == "theft.md" and opposite[-1][1] == pytest.approx(-1.0, abs=1e-5)
    assert [c.chunk_id for c, _ in store.search_vector(v, 2)] == [c.chunk_id for c, _ in pairs[:2]]  # k bounds
    bm25 = store.search_text("policy pipe report", 100)
    scores = [s for _, s in bm25]
    assert scores == sorted(scores, reverse=True) and all(s >= 0 for s in scores)
    assert _docs(bm25) == {"claims.md", "theft.md", "policy.md"}
    assert len(store.search_text("policy pipe report", 2)) == 2
    # a word in fewer chunks weighs more: "roof" (1 chunk) beats "policy" (3 chunks) for the chunk having both
    assert store.search_text("roof policy", 1)[0][0] == CORPUS["policy.md"][0]


@pytest.mark.parametrize("indexed", [False, True])
def test_text_is_matched_as_words_not_a_query_language(store, make, indexed):
    s = store if indexed else make("fresh")
    if not indexed:
        for doc_id, chunks in CORPUS.items():
            _put(s, doc_id, chunks)
    for text in ('"police theft"', '"police', "police NOT theft", "police && !theft", "+police -theft", "(police)",
                 "police:theft", "'police' OR 7=7", "police*", "police~9", "police^9 fees.md", "\\police"):
        assert _docs(s.search_text(text, 10)) == {"theft.md"}, text
    for text in ('" OR ""="', "*", "?", "-", "''", '""', "%", "\\", "()"):
        assert s.search_text(text, 10) == [], text


@pytest.mark.parametrize("text", ["", " ", "\n\t  "])
def test_blank_text_finds_nothing(store, text):
    assert store.search_text(text, 10) == []


# ---- dimensions and persistence -------------------------------------------------------------------------

def test_wrong_vector_dimension_raises_store_error(store):
    c = _chunk("new.md", "text")
    for bad in (np.ones((1, DIM + 1), np.float32), np.ones((1, DIM // 2), np.float32)):
        with pytest.raises(StoreError):
            store.replace(["new.md"], [c], bad)
    two = [_chunk("new.md", "one", i=0), _chunk("new.md", "two", i=1)]
    with pytest.raises(StoreError):  # one row of 2*dim is not two vectors
        store.replace(["new.md"], two, np.ones((1, 2 * DIM), np.float32))
    assert store.count() == N_CHUNKS and store.chunks("new.md") == []
    with pytest.raises(StoreError):
        store.search_vector(np.ones(DIM + 1, np.float32), 3)


def test_store_rejects_dimension_change(make):  # moved from tests/unit/test_search.py
    s = make(dim=8)
    if not getattr(s, "persistent", True):
        pytest.skip(f"{type(s).__name__} keeps nothing to reopen")
    s.replace(["d"], [_chunk("d", "text")], np.ones((1, 8), dtype=np.float32) / np.sqrt(8))
    with pytest.raises(IndexMismatch, match="--rebuild"):
        make(dim=16)


def test_reopen_keeps_chunks_and_reset_drops_them(make):
    s = make()
    if not getattr(s, "persistent", True):
        pytest.skip(f"{type(s).__name__} keeps nothing to reopen")
    _put(s, "theft.md", CORPUS["theft.md"])
    again = make()
    assert again.count() == 1 and again.chunks("theft.md") == CORPUS["theft.md"]
    assert make(reset=True).count() == 0
    assert make(dim=16, reset=True).dim == 16  # reset also frees the dimension
