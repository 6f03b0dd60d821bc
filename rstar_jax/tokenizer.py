"""Tokenizer: a `tokenizer.json` (the format Qwen2.5 ships) loaded with `tokenizers`, plus the step tokens.

The step markers of steps.py are added as ordinary (non-special) added tokens when a checkpoint's
tokenizer lacks them, so decoding keeps them in the text; the model's embedding must then grow to
`vocab_size` (see rstar_jax.models). The demo trains its own byte-level BPE with the same loader.
"""
from __future__ import annotations

import os
from collections.abc import Iterable

from etils import epath
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from rstar_jax.io import InputError, atomic_write_text
from rstar_jax.steps import STEP_TOKENS, build_prompt

# End-of-text candidates in the order we look for them (Qwen2.5 base models use <|endoftext|>).
_EOS_CANDIDATES = ("<|endoftext|>", "<|im_end|>", "</s>", "<eos>")
DEMO_EOS = "<|endoftext|>"


class StepTokenizer:
    """A `tokenizers.Tokenizer` with the step tokens, EOS/pad ids and the reference prompt."""

    def __init__(self, tokenizer: Tokenizer, *, add_step_tokens: bool = True):
        self.tok = tokenizer
        self.added_step_tokens = self.ensure_step_tokens() if add_step_tokens else 0
        eos = next((t for t in _EOS_CANDIDATES if tokenizer.token_to_id(t) is not None), None)
        if eos is None:
            raise InputError(f"tokenizer has none of the end-of-text tokens {_EOS_CANDIDATES}")
        self.eos_token = eos
        self.eos_id = tokenizer.token_to_id(eos)
        self.pad_id = self.eos_id  # Qwen2.5 pads with <|endoftext|>; padding is masked everywhere
        self._boundaries = self._boundary_markers()

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, add_step_tokens: bool = True) -> "StepTokenizer":
        """Loads `path` (a tokenizer.json, or a directory holding one)."""
        path = epath.Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.exists():
            raise InputError(f"{path}: tokenizer file not found")
        try:
            tok = Tokenizer.from_str(path.read_text())
        except Exception as e:  # tokenizers raises plain Exception subclasses with terse messages
            raise InputError(f"{path}: not a valid tokenizer.json ({e})") from None
        return cls(tok, add_step_tokens=add_step_tokens)

    def ensure_step_tokens(self) -> int:
        """Adds any missing step marker as one token; returns how many were added."""
        missing = [t for t in STEP_TOKENS if self.tok.token_to_id(t) is None]
        if missing:
            self.tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in missing])
        return len(missing)

    @property
    def vocab_size(self) -> int:
        """Number of ids the model must be able to embed (added tokens included)."""
        return self.tok.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int:
        """Id of a single-token string such as a step marker; errors if it is not one token."""
        tid = self.tok.token_to_id(token)
        if tid is None:
            raise KeyError(f"{token!r} is not a single token of this tokenizer")
        return tid

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with no special tokens added around it."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` for many texts at once (the Rust side runs them in parallel)."""
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def encode_extended(self, prefixes: list[tuple[str, list[int]]], suffixes: list[str]) -> list[list[int]]:
        """Token ids of each prefix text + suffix, given the prefix's own ids. Where those end with a step
        marker, nothing merges across it (added tokens split the text before BPE), so only marker + suffix
        is encoded: a search path is hundreds of tokens and its new step a few dozen. Otherwise the
        whole text is encoded."""
        out: list[list[int] | None] = [None] * len(suffixes)
        short = [i for i, (_, ids) in enumerate(prefixes) if ids and ids[-1] in self._boundaries]
        cut = set(short)
        long = [i for i in range(len(suffixes)) if i not in cut]
        texts = [self._boundaries[prefixes[i][1][-1]] + suffixes[i] for i in short]
        for i, tail in zip(short, self.encode_batch(texts)):
            out[i] = list(prefixes[i][1]) + tail[1:]
        for i, ids in zip(long, self.encode_batch([prefixes[i][0] + suffixes[i] for i in long])):
            out[i] = ids
        return out

    def _boundary_markers(self) -> dict[int, str]:
        """Step-marker ids after which an encoding can be cut: the marker encodes alone to its id and
        no other added token contains it (so no added-token match runs across its end)."""
        added = [t.content for t in self.tok.get_added_tokens_decoder().values()]
        out = {}
        for marker in STEP_TOKENS:
            tid = self.tok.token_to_id(marker)
            if tid is not None and self.encode(marker) == [tid] and not any(marker in a and a != marker for a in added):
                out[tid] = marker
        return out

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Text of `ids`; step markers are kept (they are not special tokens)."""
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def encode_prompt(self, question: str) -> list[int]:
        """Token ids of the reference prompt for `question`."""
        return self.encode(build_prompt(question))

    def save(self, directory: str | os.PathLike) -> epath.Path:
        """Writes `directory/tokenizer.json` atomically and returns its path."""
        path = epath.Path(directory) / "tokenizer.json"
        atomic_write_text(path, self.tok.to_str())
        return path


def train_demo_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> StepTokenizer:
    """Trains a small byte-level BPE (digits split one per token, as Qwen does) with the step tokens.

    Splitting digits keeps numbers copyable by a tiny model; byte-level BPE makes every string
    encodable and every decode exact.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[DEMO_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return StepTokenizer(tok)
