import json

import pytest

from rstar_jax import steps
from rstar_jax.io import InputError
from rstar_jax.tokenizer import StepTokenizer, train_demo_tokenizer

CORPUS = [
    steps.build_prompt("Mia has 12 marbles. She gives away 5. How many marbles does Mia have now?")
    + "<code>\n# Step 1: start\nmarbles = 12\n<end_of_step>\n# Step 2: give away\nmarbles = marbles - 5\n"
    "<end_of_step>\n# Now print the final answer\nprint(marbles)\n<end_of_code>\n<output>7\n<end_of_output>\n"
    "<answer>The answer is \\boxed{7}<end_of_answer>",
    "Tom has 3 apples and buys 40 more. Ünïcödé text, tabs\tand  double spaces.",
] * 20


@pytest.fixture(scope="module")
def tok():
    return train_demo_tokenizer(CORPUS, vocab_size=400)


def test_round_trip_and_step_tokens_are_single_ids(tok):
    for text in CORPUS[:2] + ["x = 10 // 3\n", "<end_of_step><end_of_code>"]:
        assert tok.decode(tok.encode(text)) == text
    for marker in steps.STEP_TOKENS:
        ids = tok.encode(marker)
        assert ids == [tok.token_id(marker)]
    # digits are split one per token so a tiny model can copy numbers
    assert len(tok.encode("12345")) == 5


def test_save_load_keeps_ids_and_eos(tok, tmp_path):
    tok.save(tmp_path)
    again = StepTokenizer.from_file(tmp_path)
    assert again.added_step_tokens == 0
    assert again.vocab_size == tok.vocab_size
    assert again.encode(CORPUS[0]) == tok.encode(CORPUS[0])
    assert again.eos_id == again.token_id("<|endoftext|>") == again.pad_id


def test_missing_step_tokens_are_added(tok, tmp_path):
    # A checkpoint tokenizer without step tokens (drop them from the saved json) gets them appended.
    raw = json.loads(tok.tok.to_str())
    raw["added_tokens"] = [t for t in raw["added_tokens"] if t["content"] not in steps.STEP_TOKENS]
    (tmp_path / "tokenizer.json").write_text(json.dumps(raw))
    plain = StepTokenizer.from_file(tmp_path, add_step_tokens=False)
    assert plain.tok.token_to_id("<end_of_step>") is None
    grown = StepTokenizer.from_file(tmp_path)
    assert grown.added_step_tokens == len(steps.STEP_TOKENS)
    assert grown.vocab_size == plain.vocab_size + len(steps.STEP_TOKENS)
    assert grown.decode(grown.encode("a<end_of_step>b")) == "a<end_of_step>b"


def test_bad_files_error_clearly(tmp_path):
    with pytest.raises(InputError, match="not found"):
        StepTokenizer.from_file(tmp_path / "nope")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(InputError, match="not a valid tokenizer.json"):
        StepTokenizer.from_file(tmp_path)


def test_encode_extended_equals_encoding_the_whole_text(tok, tmp_path):
    path = CORPUS[0][: CORPUS[0].index("# Step 2")]          # ends with <end_of_step>\n: no marker cut
    step_end = CORPUS[0][: CORPUS[0].index("<end_of_step>") + len("<end_of_step>")]
    code_end = CORPUS[0][: CORPUS[0].index("<end_of_code>") + len("<end_of_code>")]
    prefixes = [step_end, code_end, path, steps.build_prompt("How many?"), ""]
    suffixes = ["\n# Step 2: give away\nmarbles = marbles - 5\n<end_of_step>", "\n<output>7\n<end_of_output>\n",
                "marbles -= 5\n<end_of_step>", "<code>\n# Step 1\nx = 1\n<end_of_step>", "a<end_of_step>b"]
    got = tok.encode_extended([(p, tok.encode(p)) for p in prefixes], suffixes)
    assert got == [tok.encode(p + s) for p, s in zip(prefixes, suffixes)]
    # The cut is taken only after a marker; a marker some other added token contains is no cut.
    assert tok.token_id("<end_of_step>") in tok._boundaries and tok.token_id("<end_of_code>") in tok._boundaries
    from tokenizers import AddedToken
    other = StepTokenizer.from_file(tok.save(tmp_path))
    other.tok.add_tokens([AddedToken("<end_of_step>!", special=False, normalized=False)])
    other._boundaries = other._boundary_markers()
    assert other.token_id("<end_of_step>") not in other._boundaries
    text = step_end + "!x"
    assert other.encode_extended([(step_end, other.encode(step_end))], ["!x"]) == [other.encode(text)]

