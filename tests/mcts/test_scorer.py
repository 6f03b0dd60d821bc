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


def test_cached_prefixes_give_whole_text_scores_and_run_only_new_tokens():
    problems = toyworld.generate_problems(4, seed=0, levels=(3, 4))
    corpus = list(toyworld.tokenizer_corpus(problems, np.random.default_rng(0)))
    tok = train_demo_tokenizer(corpus, 300)
    n_tokens = lambda texts: sum(len(tok.encode(t)) for t in texts)
    cfg = Qwen2Config(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024)
    ppm = init_model(cfg, seed=1, ppm=True, head_init_std=0.5)
    whole = PPMScorer(ppm, tok, batch_size=4, min_len=16)
    cached = PPMScorer(ppm, tok, batch_size=4, min_len=16, cache_mb=16)
    # Three levels of a search. Roots are never scored, so level 1 runs whole; in level 2 two parents
    # are not named, so its batches mix whole rows with rows after a cached prefix.
    roots = [t[:60] for t in corpus]
    level1 = [r + " x = 1" for r in roots] + [r + " x = 2" for r in roots]
    level2 = [t + "\nx = x + 3" for t in level1]
    level3 = [t + "\nx = x * 2\nprint(x)" for t in level2[:5]]
    calls = ((level1, roots + roots), (level2, [None, None] + level1[2:]), (level3, level2[:5]))
    for texts, parents in calls:
        before = cached.tokens_scored
        np.testing.assert_allclose(cached.score(texts, parents), whole.score(texts), rtol=1e-4, atol=1e-5)
        ran = cached.tokens_scored - before
    assert ran == n_tokens(level3) - n_tokens(level2[:5])  # level 3: only the tokens after its parents
    assert len(cached.cache) == len(level1) + len(level2) + len(level3)
    # A cached prefix whose tokens do not start the text's tokens (a word cut inside a merged token) is not used.
    cut = lambda w, i: tok.encode(level1[0] + w)[: len(tok.encode(level1[0] + w[:i]))] != tok.encode(level1[0] + w[:i])
    prefix, text = next((level1[0] + w[:i], level1[0] + w) for w in " ".join(corpus).split()
                        for i in range(1, len(w)) if cut(w, i))
    cached.score([prefix], [level1[0]])
    assert cached.cache.get(prefix) is not None
    before = cached.tokens_scored
    np.testing.assert_allclose(cached.score([text], [prefix]), whole.score([text]), rtol=1e-4, atol=1e-5)
    assert cached.tokens_scored - before == n_tokens([text])
    # Without prefixes every text runs whole.
    before = cached.tokens_scored
    cached.score(level1[:2])
    assert cached.tokens_scored - before == n_tokens(level1[:2])


def test_logprob_head_scores_each_step_after_its_prefix_cached_or_not():
    """A log-prob PPM scores the tokens after each text's prefix: a cached prefix (its last token run
    again for the step's first logits) gives the whole text's score, and both are the policy's
    2 p(step | prefix) - 1."""
    problems = toyworld.generate_problems(2, seed=0, levels=(2,))
    corpus = list(toyworld.tokenizer_corpus(problems, np.random.default_rng(0)))
    tok = train_demo_tokenizer(corpus, 300)
    cfg = Qwen2Config(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                      initializer_range=0.2)  # step probabilities vary from text to text
    ppm = init_model(cfg, seed=1, ppm=True, ppm_head="logprob")
    policy = init_model(cfg, seed=1)  # the same weights
    whole = PPMScorer(ppm, tok, batch_size=4, min_len=16)
    cached = PPMScorer(ppm, tok, batch_size=4, min_len=16, cache_mb=16)
    levels = [[t[:50] for t in corpus]]
    for step in ("1", "<end_of_step>", " x"):  # one-token steps: a random model's longer ones score -1 (p < 3e-8)
        levels.append([t + step for t in levels[-1]])
    logits = jax.jit(policy)
    for parents, texts in zip(levels, levels[1:]):
        if parents is levels[0]:
            cached.score(parents, [None] * len(parents))  # the roots' keys/values
        got = cached.score(texts, parents)
        np.testing.assert_allclose(got, whole.score(texts, parents), atol=1e-5)
        want = []
        for parent, text in zip(parents, texts):
            ids, start = tok.encode(text), len(tok.encode(parent))
            logp = jax.nn.log_softmax(np.asarray(logits(np.asarray([ids], np.int32))[0], np.float64), axis=-1)
            want.append(2 * np.exp(sum(logp[t - 1, ids[t]] for t in range(start, len(ids)))) - 1)
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert np.all(np.asarray(got) > -1.0)  # not saturated: the comparison means something
