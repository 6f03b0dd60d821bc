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


def _row(t: dict) -> tuple[list[int], list[int], list[int]]:
    """A tokenized pair's row split into its prompt, pos step and neg step ids."""
    p, a, n = int(t["prefix_len"]), int(t["pos_len"]), int(t["neg_len"])
    ids = t["ids"].tolist()
    return ids[:p], ids[p:p + a], ids[p + a:p + a + n]


def test_ppm_rows_hold_prompt_then_both_steps_with_weights_and_padding(tok):
    pairs = _pairs(11)
    tokd = pl.tokenize_ppm(tok, pairs, seq_len=128)
    batches = _batches(pl.ppm_dataset(tokd, rows=4, epochs=2, seed=0))
    assert len(batches) == pl.ppm_num_batches(11, 4, 2) == 6
    for t, p in zip(tokd, pairs):
        prompt, pos, neg = _row(t)
        assert (tok.decode(prompt), tok.decode(pos), tok.decode(neg)) == (p.prompt, p.pos, p.neg)
        assert np.all(t["ids"][len(prompt) + len(pos) + len(neg):] == tok.pad_id)
        assert t["weight"] == pytest.approx(p.weight)
    weights = np.concatenate([b["weight"] for b in batches])
    assert weights.sum() == pytest.approx(2 * sum(p.weight for p in pairs))
    assert np.all(weights[22:] == 0) and np.all(batches[-1]["prefix_len"] >= 1)  # 24 slots, 22 real pairs
    assert np.all(batches[-1]["pos_len"] >= 1) and np.all(batches[-1]["neg_len"] >= 1)
    parts = [_batches(pl.ppm_dataset(tokd, rows=4, epochs=2, seed=0, shard=pl.Shard(i, 2))) for i in range(2)]
    for w, a, b in zip(batches, *parts):
        assert all(np.array_equal(w[k], np.concatenate([a[k], b[k]])) for k in pl.PPM_FIELDS)


def test_ppm_batches_cut_to_their_longest_row_bucket(tok):
    pairs = _pairs(5) + [PPMPair(build_prompt("long " * 40), "x = 1\n<end_of_step>", "x = 2\n<end_of_step>")]
    tokd = pl.tokenize_ppm(tok, pairs, seq_len=256)
    full = _batches(pl.ppm_dataset(tokd, rows=2, epochs=1, seed=3))
    cut = _batches(pl.ppm_dataset(tokd, rows=2, epochs=1, seed=3, min_width=16))
    widths = []
    for f, c in zip(full, cut, strict=True):
        w = c["ids"].shape[1]
        widths.append(w)
        longest = (f["prefix_len"] + f["pos_len"] + f["neg_len"]).max()
        assert w == max(16, 1 << int(longest - 1).bit_length())
        assert np.array_equal(f["ids"][:, :w], c["ids"]) and np.all(f["ids"][:, w:] == tok.pad_id)
    assert len(set(widths)) == 2 and max(widths) <= 256  # the long pair's batch is wider than the others
    parts = [_batches(pl.ppm_dataset(tokd, rows=2, epochs=1, seed=3, min_width=16, shard=pl.Shard(i, 2)))
             for i in range(2)]
    assert [b["ids"].shape[1] for b in parts[0]] == [b["ids"].shape[1] for b in parts[1]] == widths


def test_ppm_long_rows_keep_the_end_of_the_prompt_and_both_steps(tok):
    pair = _pairs(1)[0]
    pos, neg = tok.encode(pair.pos), tok.encode(pair.neg)
    seq_len = len(pos) + len(neg) + 3
    prompt, got_pos, got_neg = _row(pl.tokenize_ppm(tok, [pair], seq_len=seq_len)[0])
    assert prompt == tok.encode(pair.prompt)[-3:] and (got_pos, got_neg) == (pos, neg)
    assert pl.tokenize_ppm(tok, [pair], seq_len=len(pos) + len(neg)) == []  # no room for a prompt token


def test_grouped_order_covers_every_pass_in_batches_of_like_lengths():
    lengths = np.random.default_rng(0).integers(20, 400, size=203)
    order = pl.grouped_order(lengths, rows=8, epochs=2, seed=4, group=4)
    assert sorted(order.tolist()) == sorted(list(range(203)) * 2)  # each item once per pass
    assert np.array_equal(order, pl.grouped_order(lengths, rows=8, epochs=2, seed=4, group=4))
    batches = [order[i:i + 8] for i in range(0, len(order), 8)]
    assert len(batches) == pl.ppm_num_batches(203, 8, 2) and all(len(b) == 8 for b in batches[:-1])
    # a run of 4 batches is sorted by length, so a batch spans a quarter of its run's lengths; a random
    # batch of 8 spans most of [20, 400)
    spread = np.median([np.ptp(lengths[b]) for b in batches])
    plain = np.median([np.ptp(lengths[b]) for b in np.random.default_rng(1).permutation(203)[:200].reshape(-1, 8)])
    assert spread < plain / 2


def test_grouped_ppm_batches_resume_exactly_and_hold_every_pair(tok):
    pairs = _pairs(11) + [PPMPair(build_prompt("long " * (5 * i)), "x = 1\n<end_of_step>", "x = 2\n<end_of_step>")
                          for i in range(1, 10)]
    tokd = pl.tokenize_ppm(tok, pairs, seq_len=256)
    make = lambda: pl.ppm_dataset(tokd, rows=4, epochs=2, seed=5, min_width=16, group=2)  # noqa: E731
    full = _batches(make())
    assert len(full) == pl.ppm_num_batches(20, 4, 2)
    real = lambda t: tuple(t["ids"][:t["prefix_len"] + t["pos_len"] + t["neg_len"]])  # noqa: E731
    got = collections.Counter(real({k: b[k][i] for k in b}) for b in full for i in np.flatnonzero(b["weight"]))
    assert got == collections.Counter({real(t): 2 for t in tokd})  # every pair once per pass
    it = iter(make())
    for _ in range(3):
        next(it)
    resumed = iter(make())
    resumed.set_state(it.get_state())
    rest = _batches(resumed)
    assert len(rest) == len(full) - 3 and all(np.array_equal(a[k], b[k]) for a, b in zip(full[3:], rest) for k in a)


def test_split_holdout_is_seeded_and_disjoint():
    items = list(range(50))
    train, held = pl.split_holdout(items, 0.1, seed=2)
    assert len(held) == 5 and sorted(train + held) == items
    assert pl.split_holdout(items, 0.1, seed=2) == (train, held)
    assert pl.split_holdout(items, 0.0, seed=2) == (items, [])
    with pytest.raises(ValueError, match="leaves no training data"):
        pl.split_holdout([1], 0.5, seed=0)
