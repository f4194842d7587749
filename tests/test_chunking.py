"""ReplyChunker: cutting a streamed reply into spoken chunks with emotion, icon and pause."""

from __future__ import annotations

import random

import pytest

from server.chunking import EMOTION_ICONS, ReplyChunk, ReplyChunker

# Large enough that the early cut of the first chunk never fires in tests about other cuts.
NO_EARLY_CUT = 1000


def chunk_whole(text: str, **options: int) -> list[ReplyChunk]:
    chunker = ReplyChunker(**options)
    return chunker.feed(text) + chunker.finish()


def chunk_pieces(pieces: list[str], **options: int) -> list[ReplyChunk]:
    chunker = ReplyChunker(**options)
    chunks: list[ReplyChunk] = []
    for piece in pieces:
        chunks.extend(chunker.feed(piece))
    return chunks + chunker.finish()


def random_pieces(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    pieces = []
    start = 0
    while start < len(text):
        size = rng.randint(1, 7)
        pieces.append(text[start : start + size])
        start += size
    return pieces


def texts(chunks: list[ReplyChunk]) -> list[str]:
    return [chunk.text for chunk in chunks]


# -- emotion tags


def test_emotion_tag_sets_chunk_emotion() -> None:
    chunks = chunk_whole("[curious] What do you think? [calm] Take a breath.")

    assert texts(chunks) == ["What do you think?", "Take a breath."]
    assert chunks[0].emotion == "curious"
    assert chunks[1].emotion == "calm"


def test_emotion_carries_over_to_untagged_sentence() -> None:
    chunks = chunk_whole("[excited] We did it. And now we rest.", first_chunk_words=NO_EARLY_CUT)

    assert texts(chunks) == ["We did it.", "And now we rest."]
    assert chunks[1].emotion == "excited"


def test_untagged_reply_is_neutral() -> None:
    chunks = chunk_whole("Hello there.")

    assert chunks[0].emotion == "neutral"
    assert chunks[0].icon == EMOTION_ICONS["neutral"]


@pytest.mark.parametrize(
    ("tag", "emotion"),
    [
        ("cheerful", "happy"),
        ("proud", "encouraging"),
        ("enthusiastic", "excited"),
        ("interested", "curious"),
        ("thoughtful", "calm"),
        ("sad", "supportive"),
    ],
)
def test_emotion_synonym_maps_to_listed_emotion(tag: str, emotion: str) -> None:
    chunks = chunk_whole(f"[{tag}] Nice to see you.")

    assert texts(chunks) == ["Nice to see you."]
    assert chunks[0].emotion == emotion


def test_emotion_tag_ignores_case_and_spaces() -> None:
    chunks = chunk_whole("[ HAPPY ] Hi. [Proud] Well done.")

    assert chunks[0].emotion == "happy"
    assert chunks[1].emotion == "encouraging"


def test_unknown_tag_is_dropped() -> None:
    chunks = chunk_whole(
        "[happy] That is so funny [laughs] really.", first_chunk_words=NO_EARLY_CUT
    )

    assert texts(chunks) == ["That is so funny really."]
    assert chunks[0].emotion == "happy"


def test_emotion_tag_mid_sentence_cuts_before_it() -> None:
    chunks = chunk_whole("Well then [excited] off we go.", first_chunk_words=NO_EARLY_CUT)

    assert texts(chunks) == ["Well then", "off we go."]
    assert chunks[0].emotion == "neutral"
    assert chunks[0].pause_after_s == 0.15
    assert chunks[1].emotion == "excited"


# -- streaming

STREAMED_REPLY = (
    "[happy] Great job, my friend! [pause 1.2] You said *three* words today 😊. "
    "Mr. Smith paid 3.5 dollars, e.g. for bread. [laughs] [curious] What next?\n"
    "[thoughtful] Let us try again"
)


def test_one_character_pieces_match_whole_text() -> None:
    whole = chunk_whole(STREAMED_REPLY)

    assert chunk_pieces(list(STREAMED_REPLY)) == whole


@pytest.mark.parametrize("seed", range(5))
def test_random_pieces_match_whole_text(seed: int) -> None:
    whole = chunk_whole(STREAMED_REPLY)

    assert chunk_pieces(random_pieces(STREAMED_REPLY, seed)) == whole


def test_tag_split_across_pieces_is_recognised() -> None:
    chunks = chunk_pieces(["[exc", "ite", "d] Hi the", "re. [pau", "se 0.9", "] Bye now."])

    assert texts(chunks) == ["Hi there.", "Bye now."]
    assert chunks[0].emotion == "excited"
    assert chunks[0].pause_after_s == 0.9


def test_sentence_held_until_next_character() -> None:
    chunker = ReplyChunker()

    held = chunker.feed("Hi there. ")
    released = chunker.feed("N")

    assert held == []
    assert texts(released) == ["Hi there."]


# -- emphasis, emoji and icons


def test_stars_set_emphasis_and_are_removed() -> None:
    chunks = chunk_whole("You did *really* well.")

    assert texts(chunks) == ["You did really well."]
    assert chunks[0].emphasis is True


def test_plain_sentence_has_no_emphasis() -> None:
    chunks = chunk_whole("You did well.")

    assert chunks[0].emphasis is False


def test_exclamation_sets_emphasis() -> None:
    chunks = chunk_whole("That is great! See you.", first_chunk_words=NO_EARLY_CUT)

    assert texts(chunks) == ["That is great!", "See you."]
    assert chunks[0].emphasis is True
    assert chunks[1].emphasis is False


def test_emoji_becomes_icon_and_is_not_spoken() -> None:
    chunks = chunk_whole("Great job today 😊. Keep going.", first_chunk_words=NO_EARLY_CUT)

    assert texts(chunks) == ["Great job today.", "Keep going."]
    assert chunks[0].icon == "😊"
    assert chunks[1].icon == EMOTION_ICONS["neutral"]


def test_emoji_between_sentences_goes_to_next_chunk() -> None:
    chunks = chunk_whole("[happy] Hi there. 🎉 Great work today.", first_chunk_words=NO_EARLY_CUT)

    assert texts(chunks) == ["Hi there.", "Great work today."]
    assert chunks[0].icon == EMOTION_ICONS["happy"]
    assert chunks[1].icon == "🎉"


@pytest.mark.parametrize(
    ("emotion", "icon"),
    [
        ("happy", "😊"),
        ("encouraging", "👍"),
        ("neutral", "💬"),
        ("excited", "🎉"),
        ("calm", "🌿"),
        ("curious", "🤔"),
        ("supportive", "🤗"),
    ],
)
def test_emotion_gives_default_icon(emotion: str, icon: str) -> None:
    chunks = chunk_whole(f"[{emotion}] Here we are.")

    assert chunks[0].icon == icon


# -- pauses


def test_pause_tag_sets_previous_chunk_pause() -> None:
    chunks = chunk_whole(
        "Hello there my good friend. [pause 1.2] Next one here.", first_chunk_words=NO_EARLY_CUT
    )

    assert texts(chunks) == ["Hello there my good friend.", "Next one here."]
    assert chunks[0].pause_after_s == 1.2


def test_pause_tag_without_value_uses_default() -> None:
    chunks = chunk_whole("Hi there. [pause] Ok go.", first_chunk_words=NO_EARLY_CUT)

    assert chunks[0].pause_after_s == 0.6


def test_pause_tag_is_capped() -> None:
    chunks = chunk_whole("Hi there. [pause 9] Ok go.", first_chunk_words=NO_EARLY_CUT)

    assert chunks[0].pause_after_s == 2.0


def test_pause_tag_mid_sentence_cuts_there() -> None:
    chunks = chunk_whole("Hello there [pause 0.8] my friend.", first_chunk_words=NO_EARLY_CUT)

    assert texts(chunks) == ["Hello there", "my friend."]
    assert chunks[0].pause_after_s == 0.8


@pytest.mark.parametrize(
    ("text", "pause_s"),
    [
        ("Nice work here. Go on.", 0.35),
        ("Nice work here! Go on.", 0.4),
        ("Nice work here? Go on.", 0.5),
        ("Nice work here… Go on.", 0.6),
        ("Nice work here\nGo on.", 0.4),
    ],
)
def test_punctuation_sets_pause(text: str, pause_s: float) -> None:
    chunks = chunk_whole(text, first_chunk_words=NO_EARLY_CUT)

    assert len(chunks) == 2
    assert chunks[0].pause_after_s == pause_s


def test_last_chunk_has_no_pause() -> None:
    chunks = chunk_whole("First one here. Bye now. [pause 1.5]", first_chunk_words=NO_EARLY_CUT)

    assert texts(chunks) == ["First one here.", "Bye now."]
    assert chunks[0].pause_after_s == 0.35
    assert chunks[1].pause_after_s == 0.0


# -- where chunks are cut


def test_clause_cut_needs_min_clause_words() -> None:
    chunks = chunk_whole("Well, I think so, really.", first_chunk_words=NO_EARLY_CUT)

    assert texts(chunks) == ["Well, I think so,", "really."]
    assert chunks[0].pause_after_s == 0.15


def test_min_clause_words_is_configurable() -> None:
    chunks = chunk_whole("Well, I think so.", first_chunk_words=NO_EARLY_CUT, min_clause_words=1)

    assert texts(chunks) == ["Well,", "I think so."]


@pytest.mark.parametrize(
    "text",
    [
        "Mr. Smith is here today.",
        "Dr. Jones paid 3.5 dollars for it.",
        "Bring fruit e.g. apples and pears.",
        "That is 3.14159 exactly.",
    ],
)
def test_abbreviation_or_decimal_does_not_cut(text: str) -> None:
    chunks = chunk_whole(text, first_chunk_words=NO_EARLY_CUT)

    assert texts(chunks) == [text]


def test_sentence_ending_in_no_is_cut() -> None:
    chunks = chunk_whole("The answer is no. Try it again.", first_chunk_words=NO_EARLY_CUT)

    assert texts(chunks) == ["The answer is no.", "Try it again."]


def test_first_chunk_cut_after_first_chunk_words() -> None:
    chunks = chunk_whole("One two three four five six seven eight nine ten eleven twelve.")

    assert texts(chunks) == ["One two three four", "five six seven eight nine ten eleven twelve."]
    assert chunks[0].pause_after_s == 0.0


def test_first_chunk_words_is_configurable() -> None:
    chunks = chunk_whole("One two three four five.", first_chunk_words=2)

    assert texts(chunks) == ["One two", "three four five."]


def test_emoji_not_counted_as_word() -> None:
    chunks = chunk_whole("Good 😊 one two three four five six.", first_chunk_words=6)

    assert texts(chunks)[0] == "Good one two three four five"


def test_long_run_is_cut_at_max_chars() -> None:
    words = [f"w{number}" for number in range(100)]
    chunks = chunk_whole(" ".join(words), first_chunk_words=NO_EARLY_CUT, max_chars=50)

    assert len(chunks) > 1
    assert max(len(chunk.text) for chunk in chunks) <= 50
    assert " ".join(texts(chunks)).split() == words
    assert chunks[0].pause_after_s == 0.15


def test_text_without_letters_or_digits_gives_no_chunk() -> None:
    assert chunk_whole("... !!! ??? *** 😊 🎉") == []


def test_punctuation_only_sentence_is_skipped() -> None:
    chunks = chunk_whole("Hi there. ... !!! Bye now.", first_chunk_words=NO_EARLY_CUT)

    assert texts(chunks) == ["Hi there.", "Bye now."]


def test_unclosed_bracket_keeps_its_text() -> None:
    chunks = chunk_whole("Look at [this and that please.", first_chunk_words=NO_EARLY_CUT)

    assert texts(chunks) == ["Look at this and that please."]


def test_overlong_bracket_is_kept_as_text() -> None:
    inside = "this is far too long to be a tag at all"
    chunks = chunk_whole(f"See [{inside}] now.", first_chunk_words=NO_EARLY_CUT)

    assert texts(chunks) == [f"See {inside}] now."]


def test_newline_ends_unclosed_bracket() -> None:
    chunks = chunk_whole("Look [oops\nmore words here", first_chunk_words=NO_EARLY_CUT)

    assert texts(chunks) == ["Look oops", "more words here"]


def test_indexes_are_consecutive() -> None:
    chunks = chunk_whole(
        "[happy] Hi there. ... 🎉 !!! One, two, three, four. [laughs] [pause 1] Done now!"
    )

    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    assert len(chunks) == 4


def test_mixed_reply_gives_expected_chunks() -> None:
    chunks = chunk_whole(STREAMED_REPLY)

    assert texts(chunks) == [
        "Great job, my friend!",
        "You said three words today.",
        "Mr. Smith paid 3.5 dollars,",
        "e.g. for bread.",
        "What next?",
        "Let us try again",
    ]
    assert [chunk.emotion for chunk in chunks] == [
        "happy",
        "happy",
        "happy",
        "happy",
        "curious",
        "calm",
    ]
    assert [chunk.pause_after_s for chunk in chunks] == [1.2, 0.35, 0.15, 0.35, 0.5, 0.0]
    assert [chunk.emphasis for chunk in chunks] == [True, True, False, False, False, False]
