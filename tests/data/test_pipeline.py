"""grain pipelines: loss masks, first-fit packing, seeded shuffles, per-process slices and exact resume."""
import collections

import numpy as np
import pytest

from rstar_jax.data import pipeline as pl
from rstar_jax.data.selection import PPMPair, SFTExample
from rstar_jax.steps import build_prompt
from rstar_jax.tokenizer import train_demo_tokenizer


def _examples(n: int) -> list[SFTExample]:
    return [SFTExample(f"What is {i} + {i % 7}?",
                       f"<code>\n# Step 1: add\nx = {i} + {i % 7}{' + 0' * (i % 5)}\n<end_of_step>"
                       f"<answer>\\boxed{{{i + i % 7}}}<end_of_answer>") for i in range(n)]


@pytest.fixture(scope="module")
def tok():
    texts = [build_prompt(e.query) + e.response for e in _examples(40)]
    return train_demo_tokenizer(texts, vocab_size=300)


def _batches(ds) -> list[dict]:
    return [{k: np.array(v) for k, v in b.items()} for b in ds]


def test_sft_tokens_mask_only_the_response_and_eos(tok):
    ex = _examples(3)
    for e, t in zip(ex, pl.tokenize_sft(tok, ex, seq_len=256)):
        prompt_len = len(tok.encode(build_prompt(e.query)))
        assert np.array_equal(t["inputs"][1:], t["targets"][:-1])
        assert t["weights"][: prompt_len - 1].sum() == 0 and t["weights"][prompt_len - 1:].all()
        learned = t["targets"][t["weights"] > 0]
        assert learned[-1] == tok.eos_id
        assert tok.decode(learned[:-1]) == e.response


def test_sft_cuts_long_examples_and_drops_prompt_only_ones(tok):
    ex = _examples(2)
    prompt_len = len(tok.encode(build_prompt(ex[0].query)))
    out = pl.tokenize_sft(tok, ex[:1], seq_len=prompt_len + 3)
    assert len(out[0]["inputs"]) == prompt_len + 3 and out[0]["weights"].sum() == 4
    with pytest.raises(ValueError, match="no SFT example fits"):
        pl.tokenize_sft(tok, ex[:1], seq_len=prompt_len - 1)


def _segments(batches) -> list[tuple]:
    """Every packed example as its tuple of input ids, checking packing invariants along the way."""
    out = []
    for b in batches:
        for row in range(b["inputs"].shape[0]):
            seg, pos = b["segment_ids"][row], b["positions"][row]
            assert np.all(b["weights"][row][seg == 0] == 0)
            for s in np.unique(seg[seg > 0]):
                where = np.flatnonzero(seg == s)
                assert np.array_equal(where, np.arange(where[0], where[-1] + 1))  # contiguous
                assert np.array_equal(pos[where], np.arange(len(where)))  # positions restart
                out.append(tuple(b["inputs"][row][where]))
    return out


def test_sft_packing_covers_every_example_once_per_epoch(tok):
    tokd = pl.tokenize_sft(tok, _examples(30), seq_len=256)
    batches = _batches(pl.sft_dataset(tokd, seq_len=256, rows=4, epochs=2, seed=1))
    assert all(b["inputs"].shape == (4, 256) for b in batches)
    assert pl.count_batches(pl.sft_dataset(tokd, seq_len=256, rows=4, epochs=2, seed=1)) == len(batches)
    want = collections.Counter(tuple(t["inputs"]) for t in tokd)
    assert collections.Counter(_segments(batches)) == collections.Counter({k: 2 * v for k, v in want.items()})
    # packing actually packs: fewer rows than examples
    assert sum(b["inputs"].shape[0] for b in batches) < 2 * len(tokd)


def test_sft_shuffle_is_seeded(tok):
    tokd = pl.tokenize_sft(tok, _examples(30), seq_len=96)
    run = lambda seed: _segments(_batches(pl.sft_dataset(tokd, seq_len=96, rows=2, epochs=1, seed=seed)))  # noqa
    assert run(3) == run(3)
    assert run(3) != run(4)


def test_process_slices_concatenate_to_the_single_process_batches(tok):
    tokd = pl.tokenize_sft(tok, _examples(30), seq_len=96)
    whole = _batches(pl.sft_dataset(tokd, seq_len=96, rows=4, epochs=1, seed=0))
    parts = [_batches(pl.sft_dataset(tokd, seq_len=96, rows=4, epochs=1, seed=0, shard=pl.Shard(i, 2)))
             for i in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(whole)
    for w, a, b in zip(whole, *parts):
        for k in pl.SFT_FIELDS:
            assert np.array_equal(w[k], np.concatenate([a[k], b[k]]))
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        next(iter(pl.sft_dataset(tokd, seq_len=96, rows=4, epochs=1, seed=0, shard=pl.Shard(0, 3))))


@pytest.mark.parametrize("kind", ["sft", "ppm"])
def test_iterator_state_resumes_exactly(tok, kind):
    if kind == "sft":
        tokd = pl.tokenize_sft(tok, _examples(30), seq_len=96)
        make = lambda: pl.sft_dataset(tokd, seq_len=96, rows=2, epochs=2, seed=5)  # noqa: E731
    else:
        tokd = pl.tokenize_ppm(tok, _pairs(11), seq_len=48)
        make = lambda: pl.ppm_dataset(tokd, rows=3, epochs=2, seed=5)  # noqa: E731
    full = _batches(make())
    it = iter(make())
    for _ in range(5):
        next(it)
    state = it.get_state()
    resumed = iter(make())
    resumed.set_state(state)
    rest = [{k: np.array(v) for k, v in b.items()} for b in resumed]
    assert len(rest) == len(full) - 5
    for a, b in zip(full[5:], rest):
        assert all(np.array_equal(a[k], b[k]) for k in a)


def _pairs(n: int) -> list[PPMPair]:
    return [PPMPair(build_prompt(f"q{i}") + "<code>\n# Step 1\n<end_of_step>", f"x = {i}\n<end_of_step>",
                    f"y = {i} / 0\n<end_of_step>", 1 + i % 2, 2) for i in range(n)]


def test_ppm_batches_lengths_weights_and_padding(tok):
    pairs = _pairs(11)
    tokd = pl.tokenize_ppm(tok, pairs, seq_len=128)
    batches = _batches(pl.ppm_dataset(tokd, rows=4, epochs=2, seed=0))
    assert len(batches) == pl.ppm_num_batches(11, 4, 2) == 6
    for t, p in zip(tokd, pairs):
        assert tok.decode(t["pos_ids"][: t["pos_len"]]) == p.prompt + p.pos
        assert tok.decode(t["neg_ids"][t["neg_start"]: t["neg_len"]]) == p.neg  # the step a log-prob head scores
        assert np.all(t["neg_ids"][t["neg_len"]:] == tok.pad_id)
        assert t["weight"] == pytest.approx(p.weight)
    weights = np.concatenate([b["weight"] for b in batches])
    assert weights.sum() == pytest.approx(2 * sum(p.weight for p in pairs))
    assert np.all(weights[22:] == 0) and np.all(batches[-1]["pos_len"] >= 1)  # 24 slots, 22 real pairs
    parts = [_batches(pl.ppm_dataset(tokd, rows=4, epochs=2, seed=0, shard=pl.Shard(i, 2))) for i in range(2)]
    for w, a, b in zip(batches, *parts):
        assert all(np.array_equal(w[k], np.concatenate([a[k], b[k]])) for k in pl.PPM_FIELDS)


def test_ppm_batches_cut_to_their_longest_pair_bucket(tok):
    pairs = _pairs(5) + [PPMPair(build_prompt("long " * 40), "x = 1\n<end_of_step>", "x = 2\n<end_of_step>")]
    tokd = pl.tokenize_ppm(tok, pairs, seq_len=256)
    full = _batches(pl.ppm_dataset(tokd, rows=2, epochs=1, seed=3))
    cut = _batches(pl.ppm_dataset(tokd, rows=2, epochs=1, seed=3, min_width=16))
    widths = []
    for f, c in zip(full, cut, strict=True):
        w = c["pos_ids"].shape[1]
        widths.append(w)
        longest = max(f["pos_len"].max(), f["neg_len"].max())
        assert w == max(16, 1 << int(longest - 1).bit_length()) and c["neg_ids"].shape[1] == w
        assert all(np.array_equal(f[k][:, :w], c[k]) for k in ("pos_ids", "neg_ids"))
        assert np.all(f["pos_ids"][:, w:] == tok.pad_id) and np.all(f["neg_ids"][:, w:] == tok.pad_id)
    assert len(set(widths)) == 2 and max(widths) <= 256  # the long pair's batch is wider than the others
    parts = [_batches(pl.ppm_dataset(tokd, rows=2, epochs=1, seed=3, min_width=16, shard=pl.Shard(i, 2)))
             for i in range(2)]
    assert [b["pos_ids"].shape[1] for b in parts[0]] == [b["pos_ids"].shape[1] for b in parts[1]] == widths


def test_ppm_long_sequences_keep_their_last_tokens(tok):
    pair = _pairs(1)[0]
    full = tok.encode(pair.prompt) + tok.encode(pair.pos)
    t = pl.tokenize_ppm(tok, [pair], seq_len=10)[0]
    assert t["pos_len"] == 10 and list(t["pos_ids"]) == full[-10:]
    assert t["pos_start"] == max(10 - len(tok.encode(pair.pos)), 0)


def test_split_holdout_is_seeded_and_disjoint():
    items = list(range(50))
    train, held = pl.split_holdout(items, 0.1, seed=2)
    assert len(held) == 5 and sorted(train + held) == items
    assert pl.split_holdout(items, 0.1, seed=2) == (train, held)
    assert pl.split_holdout(items, 0.0, seed=2) == (items, [])
    with pytest.raises(ValueError, match="leaves no training data"):
        pl.split_holdout([1], 0.5, seed=0)
