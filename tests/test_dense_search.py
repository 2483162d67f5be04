"""Dense search with a tiny real embedding model (tests/tiny_embedder.py), and /v1/embeddings.

The tiny model's vectors can be reasoned about: every word of one concept
(car, automobile, vehicle...) has the same vector, so "automobile maintenance"
lands on "Fixing cars at home" though the two share no word.
"""

from __future__ import annotations

import math
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from django.db import connection

from chat.documents import dense
from chat.documents.ranking import Hit, fuse
from chat.documents.search import lexical_search
from chat.models import ChunkVector, Document, DocumentChunk
from chat.openai import embeddings
from chat.services.accounts import account_delete
from chat.services.documents import document_delete
from inference.embedding import RemoteEmbedder
from tests.tiny_embedder import build_tiny_embedder

pytestmark = pytest.mark.django_db(transaction=True)

CARS = "Fixing cars at home, step by step."
BREAD = "Baking bread in a hot oven."
BUDGET = "Planning a budget for a salary."
VEHICLES = "Vehicles: automobiles and cars."


@pytest.fixture(scope="session")
def tiny_embedder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_embedder(tmp_path_factory.mktemp("tiny-embedder"))


@pytest.fixture
def dense_on(settings: Any, tiny_embedder_dir: Path) -> Path:
    settings.EMBEDDING_MODEL = str(tiny_embedder_dir)
    settings.EMBEDDING_URL = ""
    settings.DEVICE = "cpu"
    return tiny_embedder_dir


@pytest.fixture
def document_dir(settings: Any, tmp_path: Path) -> Path:
    settings.DOCUMENT_DIR = tmp_path / "documents"
    return settings.DOCUMENT_DIR


def make_document(user: Any, texts: list[str], *, name: str = "notes.txt") -> Document:
    """A ready document of `texts`, one chunk each, embedded (what ingestion leaves behind)."""
    document = Document.objects.create(
        owner=user,
        name=name,
        kind="text",
        size_bytes=sum(len(t) for t in texts),
        sha256="0" * 64,
        path=f"{user.pk}/{name}",
        status=Document.Status.READY,
        progress=100,
    )
    DocumentChunk.objects.bulk_create(
        DocumentChunk(document=document, ordinal=i, text=text) for i, text in enumerate(texts)
    )
    if dense.enabled():
        dense.index_document(document_id=document.pk)
    return document


def chunk_ids(document: Document) -> dict[str, int]:
    return {c.text: c.pk for c in document.chunks.all()}


def test_dense_is_off_unless_an_embedder_is_configured(settings: Any, owner: Any) -> None:
    settings.EMBEDDING_MODEL = settings.EMBEDDING_URL = ""
    assert not dense.enabled()
    document = make_document(owner, [CARS])
    assert not ChunkVector.objects.exists()  # nothing embedded, nothing loaded
    with pytest.raises(dense.DenseOff, match="EMBEDDING_MODEL"):
        dense.dense_search(user_id=owner.pk, document_ids=[document.pk], query="cars", k=3)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EMBEDDING_MODEL": "/no/such/folder"}, "not a folder (nothing is downloaded)"),
        ({"EMBEDDING_MODEL": "/", "EMBEDDING_URL": "http://127.0.0.1:9/v1"}, "name one embedder"),
        ({"EMBEDDING_URL": "http://127.0.0.1:9/v1"}, "without EMBEDDING_REMOTE_MODEL"),
    ],
)
def test_the_site_refuses_to_start_with_a_bad_embedding_setting(
    env: dict[str, str], message: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import sanjai_site.settings"],
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "SANJAI_DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_dense_search_finds_a_paraphrase_that_lexical_search_misses(dense_on: Path, owner: Any) -> None:
    document = make_document(owner, [CARS, BREAD, BUDGET])
    ids = chunk_ids(document)
    query = "automobile maintenance"

    assert lexical_search(user_id=owner.pk, document_ids=[document.pk], query=query, k=3) == []
    hits = dense.dense_search(user_id=owner.pk, document_ids=[document.pk], query=query, k=3)

    # The query is car + repair; so is the passage: the same direction. The others share nothing.
    assert [h.chunk_id for h in hits] == [ids[CARS]]
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_dense_ranks_by_cosine_similarity(dense_on: Path, owner: Any) -> None:
    document = make_document(owner, [CARS, BREAD, VEHICLES, BUDGET])
    ids = chunk_ids(document)

    hits = dense.dense_search(user_id=owner.pk, document_ids=[document.pk], query="a vehicle", k=2)

    # "Vehicles: automobiles and cars." is all car (cosine 1); "Fixing cars" is half car,
    # half repair (1/sqrt 2); bread and budget are orthogonal and left out.
    assert [h.chunk_id for h in hits] == [ids[VEHICLES], ids[CARS]]
    assert [h.score for h in hits] == pytest.approx([1.0, 1 / math.sqrt(2)], abs=1e-5)
    assert len(dense.dense_search(user_id=owner.pk, document_ids=[document.pk], query="a vehicle", k=10)) == 2
    assert (
        dense.dense_search(user_id=owner.pk, document_ids=[document.pk], query="words it knows not", k=3)
        == []
    )


def pgvector_installed() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
        return cursor.fetchone() is not None


def test_the_database_compares_vectors_itself_where_it_can_and_agrees_with_numpy(
    dense_on: Path, owner: Any
) -> None:
    document = make_document(owner, [CARS, BREAD, VEHICLES, BUDGET])
    ids = chunk_ids(document)
    [vector] = dense.embedder().embed(["a vehicle repair"], query=True)
    arguments: dict[str, Any] = {
        "user_id": owner.pk,
        "document_ids": [document.pk],
        "vector": vector,
        "k": 2,
        "model": dense.embedder_name(),
    }
    method = dense.search_method()
    if connection.vendor == "sqlite" and hasattr(sqlite3.connect(":memory:"), "enable_load_extension"):
        assert method is dense._sqlite_search  # sqlite-vec, not numpy
    if connection.vendor == "postgresql" and pgvector_installed():
        assert method is dense._pg_search
    hits, expected = method(**arguments), dense._numpy_search(**arguments)
    assert [h.chunk_id for h in hits] == [h.chunk_id for h in expected] == [ids[CARS], ids[VEHICLES]]
    assert [h.score for h in hits] == pytest.approx([h.score for h in expected], abs=1e-5)


def test_embeddings_are_batched_normalized_and_in_order(dense_on: Path, settings: Any) -> None:
    settings.EMBEDDING_BATCH_SIZE = 2
    texts = [CARS, BREAD, "nothing known", VEHICLES, BUDGET]
    vectors = np.asarray(dense.embed_texts(texts))
    assert vectors.shape == (5, 12)
    assert np.linalg.norm(vectors, axis=1) == pytest.approx([1, 1, 0, 1, 1], abs=1e-5)
    assert vectors[3] @ vectors[0] == pytest.approx(1 / math.sqrt(2), abs=1e-5)


def test_a_plain_hugging_face_folder_loads_with_mean_pooling(
    settings: Any, tiny_embedder_dir: Path, owner: Any
) -> None:
    settings.EMBEDDING_MODEL = str(tiny_embedder_dir.parent / "hf")  # no modules.json: a bare BERT
    settings.DEVICE = "cpu"
    document = make_document(owner, [CARS, BREAD])
    hits = dense.dense_search(
        user_id=owner.pk, document_ids=[document.pk], query="automobile maintenance", k=2
    )
    assert [h.chunk_id for h in hits] == [chunk_ids(document)[CARS]]
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)  # normalized by us: the folder has no Normalize


def test_results_never_cross_users(dense_on: Path, owner: Any, other_user: Any) -> None:
    mine = make_document(owner, [BREAD])
    theirs = make_document(other_user, [CARS, VEHICLES], name="theirs.txt")

    # Handed the other user's document id too, the search still sees only the owner's.
    hits = dense.dense_search(user_id=owner.pk, document_ids=[mine.pk, theirs.pk], query="cars", k=5)
    assert hits == []
    hits = dense.dense_search(user_id=owner.pk, document_ids=[mine.pk, theirs.pk], query="oven", k=5)
    assert [h.chunk_id for h in hits] == list(chunk_ids(mine).values())
    assert dense.dense_search(user_id=other_user.pk, document_ids=[mine.pk], query="oven", k=5) == []


def test_indexing_replaces_old_vectors_and_reports_progress(
    dense_on: Path, owner: Any, settings: Any
) -> None:
    document = make_document(owner, [CARS, BREAD, BUDGET, VEHICLES, CARS + " Again."])
    settings.EMBEDDING_BATCH_SIZE = 2
    heard: list[int] = []

    dense.index_document(document_id=document.pk, progress=heard.append)

    assert ChunkVector.objects.filter(document=document).count() == 5  # replaced, not added to
    assert heard == sorted(heard) and heard[-1] == 95 and all(60 <= p <= 95 for p in heard)
    assert len(heard) == 3  # one report a batch


def test_vectors_are_deleted_with_their_document_and_account(
    dense_on: Path, owner: Any, other_user: Any, document_dir: Path
) -> None:
    first = make_document(owner, [CARS, BREAD])
    make_document(owner, [BUDGET], name="second.txt")
    kept = make_document(other_user, [VEHICLES], name="kept.txt")
    assert ChunkVector.objects.count() == 4

    document_delete(user=owner, document_id=first.pk)
    assert ChunkVector.objects.filter(document__owner=owner).count() == 1
    assert not ChunkVector.objects.filter(document_id=first.pk).exists()

    account_delete(user=owner)
    assert list(ChunkVector.objects.values_list("document_id", flat=True)) == [kept.pk]
    with connection.cursor() as cursor:  # no row left behind under the ORM's back either
        cursor.execute("SELECT COUNT(*) FROM chat_chunkvector")
        assert cursor.fetchone()[0] == 1


def test_vectors_of_another_embedder_are_not_compared(dense_on: Path, owner: Any) -> None:
    document = make_document(owner, [CARS])
    ChunkVector.objects.update(model="some other model")
    assert dense.dense_search(user_id=owner.pk, document_ids=[document.pk], query="cars", k=3) == []


def test_fusion_ranks_what_both_searches_find_first(dense_on: Path, owner: Any) -> None:
    document = make_document(owner, [CARS, BREAD, BUDGET])
    ids = chunk_ids(document)
    query = "bread for automobile maintenance"

    lexical = lexical_search(user_id=owner.pk, document_ids=[document.pk], query=query, k=3)
    dense_hits = dense.dense_search(user_id=owner.pk, document_ids=[document.pk], query=query, k=3)
    assert [h.chunk_id for h in lexical] == [ids[BREAD]]  # only "bread" is a shared word
    assert [h.chunk_id for h in dense_hits] == [ids[CARS], ids[BREAD]]  # car + repair outweigh cooking

    fused = fuse([lexical, dense_hits], k=3)

    # Bread: first and second (1/61 + 1/62); cars: first of one (1/61); budget: in neither.
    assert fused == [Hit(ids[BREAD], 1 / 61 + 1 / 62), Hit(ids[CARS], 1 / 61)]


def test_search_is_hybrid_with_an_embedder_and_lexical_when_it_fails(
    dense_on: Path, owner: Any, settings: Any
) -> None:
    from chat.documents.search import search

    document = make_document(owner, [CARS, BREAD, BUDGET])
    ids = chunk_ids(document)
    query = "bread for automobile maintenance"
    assert search(user_id=owner.pk, document_ids=[document.pk], query=query, k=3) == [
        Hit(ids[BREAD], 1 / 61 + 1 / 62),
        Hit(ids[CARS], 1 / 61),
    ]
    # A remote embedder that does not answer: the words still find their passage.
    settings.EMBEDDING_MODEL = ""
    settings.EMBEDDING_URL, settings.EMBEDDING_REMOTE_MODEL = "http://127.0.0.1:9/v1", "gone"
    settings.EMBEDDING_TIMEOUT_S = 2
    hits = search(user_id=owner.pk, document_ids=[document.pk], query=query, k=3)
    assert [h.chunk_id for h in hits] == [ids[BREAD]]


def test_ingestion_embeds_the_chunks_before_the_document_is_ready(
    dense_on: Path, owner: Any, document_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chat.services import documents
    from chat.tasks import ingest_document

    monkeypatch.setattr(documents, "document_enqueue", lambda *, document_id: True)
    document = documents.document_upload(user=owner, name="garage.md", data=f"# Garage\n\n{CARS}\n".encode())
    ingest_document(document.pk)
    document.refresh_from_db()
    assert document.status == Document.Status.READY
    assert ChunkVector.objects.filter(document=document).count() == document.chunks.count() == 1


# --- /v1/embeddings through the official client -----------------------------------


@pytest.fixture
def client(live_server: Any, owner_key: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=owner_key, max_retries=0, timeout=60) as c:
        yield c


def test_v1_embeddings_answers_the_openai_format(dense_on: Path, client: openai.OpenAI) -> None:
    texts = ["fixing cars", "automobile maintenance", "baking bread"]
    # The SDK asks for base64 unless told otherwise, and decodes it.
    answer = client.embeddings.create(model="sentence-transformers", input=texts)
    floats = client.embeddings.create(model="sentence-transformers", input=texts, encoding_format="float")

    assert answer.object == "list" and answer.model == "sentence-transformers"
    assert [d.index for d in answer.data] == [0, 1, 2] and answer.data[0].object == "embedding"
    vectors = np.asarray([d.embedding for d in answer.data])
    assert vectors == pytest.approx(np.asarray([d.embedding for d in floats.data]), abs=1e-6)
    assert vectors @ vectors.T == pytest.approx(np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]]), abs=1e-5)
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == 3 * 4  # [CLS] two words [SEP]

    one = client.embeddings.create(model="sentence-transformers", input="fixing cars")
    assert len(one.data) == 1 and one.data[0].embedding == pytest.approx(answer.data[0].embedding, abs=1e-6)


def test_v1_embeddings_is_a_real_counterpart_for_the_remote_embedder(
    dense_on: Path, live_server: Any, owner_key: str
) -> None:
    remote = RemoteEmbedder(
        base_url=f"{live_server.url}/v1",
        model="sentence-transformers",
        api_key=owner_key,
        timeout_s=60,
        batch_size=2,
    )
    vectors, tokens = remote.embed_counted([CARS, "automobile maintenance", BREAD])
    assert len(vectors) == 3 and tokens > 0
    assert np.dot(vectors[0], vectors[1]) == pytest.approx(1.0, abs=1e-5)


def test_v1_embeddings_refuses_what_is_over_its_limits_or_malformed(
    dense_on: Path, settings: Any, client: openai.OpenAI
) -> None:
    settings.EMBEDDING_MAX_INPUTS = 2
    settings.EMBEDDING_MAX_CHARS = 20
    cases: list[tuple[dict[str, Any], str]] = [
        ({"input": ["a", "b", "c"]}, "at most 2 per request"),
        ({"input": ["car " * 6]}, "at most 20 per request"),
        ({"input": [""]}, "an empty string"),
        ({"input": []}, "the list is empty"),
        ({"input": [[1, 2, 3]]}, "token arrays are not taken"),
        (
            {"input": "cars", "model": "text-embedding-3-small"},
            "the embedding model is 'sentence-transformers'",
        ),
    ]
    for fields, message in cases:
        body = {"model": "sentence-transformers"} | fields
        with pytest.raises(openai.APIStatusError, match=message) as caught:
            client.embeddings.create(**body)
        assert caught.value.status_code == (404 if "model" in fields else 400), fields
        assert caught.value.body["param"] == ("model" if "model" in fields else "input")  # type: ignore[index]


def test_v1_embeddings_past_its_waiting_requests_is_503(
    dense_on: Path, settings: Any, client: openai.OpenAI
) -> None:
    settings.EMBEDDING_MAX_WAITING = 1
    with embeddings._slot():  # one request being embedded (the live server shares this process)
        with pytest.raises(openai.InternalServerError, match="busy") as caught:
            client.embeddings.create(model="sentence-transformers", input="cars")
        assert caught.value.status_code == 503
    assert len(client.embeddings.create(model="sentence-transformers", input="cars").data) == 1


def test_v1_embeddings_without_a_model_says_how_to_configure_one(
    settings: Any, client: openai.OpenAI, live_server: Any
) -> None:
    settings.EMBEDDING_MODEL = settings.EMBEDDING_URL = ""
    with pytest.raises(openai.NotFoundError, match="set EMBEDDING_MODEL"):
        client.embeddings.create(model="anything", input="cars")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="wrong", max_retries=0).embeddings.create(
            model="anything", input="cars"
        )
