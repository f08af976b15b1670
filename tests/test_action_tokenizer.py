import itertools

import numpy as np
import pytest

from vla import ActionTokenizer, build_prompt


def test_id_range_is_last_256_llama_ids(action_tokenizer):
    assert action_tokenizer.id_range == (31744, 31999)
    ids = action_tokenizer.encode(np.random.default_rng(0).uniform(-1, 1, (1000, 7)))
    assert ids.dtype == np.int64 and ids.min() >= 31744 and ids.max() <= 31999


def test_round_trip_within_half_a_bin(action_tokenizer):
    actions = np.random.default_rng(1).uniform(-1, 1, (5000, 7))
    decoded = action_tokenizer.decode(action_tokenizer.encode(actions))
    bin_width = 2 / 255
    # The topmost bin [1 - w, 1] decodes to the last center 1 - w/2, so every in-range value is within half a bin.
    assert np.abs(decoded - actions).max() <= bin_width / 2 + 1e-12


def test_edges_and_reference_examples(action_tokenizer):
    ids = action_tokenizer.encode(np.array([-1.0, 0.0, 0.5, 0.999, 1.0]))
    assert ids.tolist() == [31999, 31872, 31808, 31745, 31744]
    # -1 and +1 decode to the outermost centers (+-0.996078); exact +-1 is never reproduced.
    np.testing.assert_allclose(action_tokenizer.decode([31999, 31744]), [-1 + 1 / 255, 1 - 1 / 255])
    assert action_tokenizer.decode([31872])[0] == 0.0


def test_out_of_range_actions_are_clipped(action_tokenizer):
    ids = action_tokenizer.encode(np.array([-7.0, -1.0001, 1.0001, 3.0]))
    assert ids.tolist() == [31999, 31999, 31744, 31744]


@pytest.mark.parametrize("bad", [2, 32000, 31743, 32063])
def test_decoding_a_non_action_id_raises(action_tokenizer, bad):
    with pytest.raises(ValueError, match=str(bad)):
        action_tokenizer.decode([31872, bad])


def test_vocab_must_exceed_bins():
    class Tiny:
        vocab_size = 100

    with pytest.raises(ValueError, match="vocab_size"):
        ActionTokenizer(Tiny())


def _training_text_ids(tokenizer, ids):
    text = build_prompt("go") + " " + tokenizer.decode(list(ids)) + "</s>"
    return tokenizer(text).input_ids


def test_every_action_id_round_trips_through_text(llama_tokenizer, action_tokenizer):
    lo, hi = action_tokenizer.id_range
    for token_id in range(lo, hi + 1):
        assert _training_text_ids(llama_tokenizer, [token_id])[-3:] == [29871, token_id, 2], token_id


def test_every_ordered_pair_round_trips_through_text(llama_tokenizer, action_tokenizer):
    lo, hi = action_tokenizer.id_range
    pairs = list(itertools.product(range(lo, hi + 1), repeat=2))
    assert (31881, 31881) in pairs  # U+202D, the id openvla#226 worried about
    texts = ["Out: " + llama_tokenizer.decode(list(p)) for p in pairs]
    encoded = llama_tokenizer(texts, add_special_tokens=False).input_ids
    bad = [p for p, ids in zip(pairs, encoded, strict=True) if ids[-3:] != [29871, *p]]
    assert not bad, f"{len(bad)} pairs do not round-trip, e.g. {bad[:5]}"
