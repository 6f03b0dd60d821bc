"""PPM scorer: bucketed, padded batches give each text the score the PPM gives it alone."""
import jax
import numpy as np

from rstar_jax.data import toyworld
from rstar_jax.mcts.scorer import PPMScorer, bucket
from rstar_jax.models import Qwen2Config, functional, init_model
from rstar_jax.tokenizer import train_demo_tokenizer


def test_bucket():
    assert [bucket(n, 4) for n in (0, 3, 4, 5, 9)] == [4, 4, 4, 8, 16]


def test_scores_match_unpadded_single_calls():
    problems = toyworld.generate_problems(3, seed=0, levels=(1, 2))
    texts = list(toyworld.tokenizer_corpus(problems, np.random.default_rng(0)))
    tok = train_demo_tokenizer(texts, 300)
    cfg = Qwen2Config(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
    ppm = init_model(cfg, seed=1, ppm=True, head_init_std=0.5)
    scorer = PPMScorer(ppm, tok, batch_size=2, min_len=16)
    texts = [t[: 40 + 37 * i] for i, t in enumerate(texts)]  # different lengths, 3 rows -> a full and a padded batch
    got = scorer.score(texts)
    fn, state = functional(ppm, "scores")
    alone = jax.jit(fn)
    want = [float(alone(state, np.asarray([tok.encode(t)], np.int32))[0]) for t in texts]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert len(set(np.round(got, 5))) == len(texts)  # the head really reads each row's own last token
    assert scorer.tokens_scored == sum(len(tok.encode(t)) for t in texts)
