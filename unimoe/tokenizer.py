"""The text tokenizer, built on the ``tokenizers`` package only.

Two sources:
- a Qwen2.5 ``tokenizer.json`` from local disk (``TokenizerConfig.path``), to which any of our special
  markers (``unimoe.special_tokens.SPECIAL_TOKENS``) that it lacks are added as special tokens;
- a byte-level BPE trained on corpus text (offline demo): every byte sequence encodes without unknown
  tokens (Chinese included), the special markers take ids ``0 .. len(SPECIAL_TOKENS) - 1``, and the
  result is deterministic for the same input.

Nothing is fetched from a hub: ``transformers.AutoTokenizer.from_pretrained`` with a hub name is never
used (offline it can silently return an empty tokenizer).

``encode`` adds no special tokens of its own. By default a marker written in the text (for example
``"<|speech_start|>"``) becomes its single special id; pass ``allow_special=False`` for untrusted text,
so markers in it are tokenized as plain characters and cannot inject structure.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from unimoe.common.files import atomic_write_json, atomic_write_text
from unimoe.config import TokenizerConfig
from unimoe.special_tokens import EOT, PAD, SPECIAL_TOKENS

BYTE_ALPHABET_SIZE = 256
MIN_TRAINED_VOCAB = BYTE_ALPHABET_SIZE + len(SPECIAL_TOKENS)


class TextTokenizer:
    """Text <-> token ids, with the project's special markers as single, unsplittable ids."""

    def __init__(self, tokenizer: Tokenizer, *, source: str = "in-memory"):
        self._tok = tokenizer
        self.source = source
        missing = [t for t in SPECIAL_TOKENS if not self._is_special(t)]
        if missing:
            self._tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
        self._specials = {tok.content: i for i, tok in self._tok.get_added_tokens_decoder().items() if tok.special}
        for t in SPECIAL_TOKENS:
            ids = self._tok.encode(t, add_special_tokens=False).ids
            if t not in self._specials or ids != [self._specials[t]]:
                raise ValueError(f"{source}: special token {t!r} does not encode to one special id (got {ids})")
        self._vocab_size = max(self._tok.get_vocab(with_added_tokens=True).values()) + 1

    def _is_special(self, content: str) -> bool:
        return any(tok.content == content and tok.special for tok in self._tok.get_added_tokens_decoder().values())

    # ---- construction -----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> "TextTokenizer":
        """Load a ``tokenizer.json`` (e.g. Qwen2.5's) from local disk; missing markers are added."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"tokenizer file not found: {path.resolve()} (expected a tokenizer.json on local disk, e.g. "
                "the one shipped with the Qwen2.5-VL checkpoint; nothing is downloaded at run time)"
            )
        return cls(Tokenizer.from_file(str(path)), source=str(path))

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "TextTokenizer":
        """Train a byte-level BPE of at most ``vocab_size`` ids (256 byte symbols, the special markers
        and learned merges; fewer if the corpus has too few distinct pairs). Deterministic."""
        if vocab_size < MIN_TRAINED_VOCAB:
            raise ValueError(f"vocab_size {vocab_size} is too small: a byte-level BPE needs at least "
                             f"{MIN_TRAINED_VOCAB} ids (256 bytes + {len(SPECIAL_TOKENS)} special tokens)")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator((t for t in texts), trainer=trainer)
        return cls(tok, source=f"trained byte-level BPE (vocab_size<={vocab_size})")

    @classmethod
    def from_config(cls, tok_cfg: TokenizerConfig, *, corpus_texts: Iterable[str] | None = None,
                    cache_path: str | Path | None = None) -> "TextTokenizer":
        """``tok_cfg.path`` if set; else the tokenizer cached at ``cache_path`` if it was trained with the
        same settings (and on the same corpus, when one is given); else train on ``corpus_texts`` with
        ``tok_cfg.trained_vocab_size`` and cache it at ``cache_path``.

        The cache has a sidecar ``<cache_path>.meta.json`` recording the vocab size, the special
        tokens and the corpus hash; a cache that does not match is retrained (or, without a corpus,
        refused) rather than silently reused.
        """
        if tok_cfg.path:
            return cls.load(tok_cfg.path)
        texts = None if corpus_texts is None else list(corpus_texts)
        meta = None
        if texts is not None:
            meta = {"trained_vocab_size": tok_cfg.trained_vocab_size, "special_tokens": list(SPECIAL_TOKENS),
                    "corpus_sha256": _corpus_sha256(texts)}
        if cache_path is not None:
            cache_path = Path(cache_path)
            meta_path = _meta_path(cache_path)
            if cache_path.is_file():
                stale = _stale_reason(meta_path, tok_cfg, meta)
                if stale is None:
                    return cls.load(cache_path)
                if texts is None:
                    raise ValueError(f"cached tokenizer {cache_path} is stale ({stale}) and no corpus was given to retrain it")
        if texts is None:
            raise ValueError("tokenizer.path is not set and no cached tokenizer was found"
                             + (f" at {cache_path}" if cache_path is not None else "")
                             + "; pass corpus_texts to train one")
        tok = cls.train(texts, tok_cfg.trained_vocab_size)
        if cache_path is not None:
            tok.save(cache_path)
            atomic_write_json(_meta_path(cache_path), meta)
        return tok

    def save(self, path: str | Path) -> Path:
        """Write ``tokenizer.json`` atomically."""
        atomic_write_text(path, self._tok.to_str(pretty=False))
        return Path(path)

    # ---- use ----------------------------------------------------------------------------------------
    def encode(self, text: str, *, allow_special: bool = True) -> list[int]:
        """Token ids of ``text``; no BOS/EOS or other tokens are added. With ``allow_special=False`` a
        marker in the text is tokenized as ordinary characters."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        if allow_special:
            return self._tok.encode(text, add_special_tokens=False).ids
        self._tok.encode_special_tokens = True
        try:
            return self._tok.encode(text, add_special_tokens=False).ids
        finally:
            self._tok.encode_special_tokens = False

    def encode_batch(self, texts: Sequence[str], *, allow_special: bool = True) -> list[list[int]]:
        return [self.encode(t, allow_special=allow_special) for t in texts]

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        """Text for ``ids`` (special markers kept unless ``skip_special``). Unknown ids raise ValueError."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if i < 0 or self._tok.id_to_token(i) is None]
        if bad:
            raise ValueError(f"decode: ids not in the vocabulary: {bad[:10]}")
        return self._tok.decode(ids, skip_special_tokens=skip_special)

    def token_id(self, special: str) -> int:
        """The id of a special token (any of ``SPECIAL_TOKENS``, or one the loaded file declares)."""
        try:
            return self._specials[special]
        except KeyError:
            raise KeyError(f"{special!r} is not a special token of this tokenizer ({self.source}); "
                           f"known: {sorted(self._specials)[:20]}") from None

    @property
    def special_ids(self) -> dict[str, int]:
        """Ids of the project's markers (``SPECIAL_TOKENS``)."""
        return {t: self._specials[t] for t in SPECIAL_TOKENS}

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (largest id + 1): the smallest embedding that fits."""
        return self._vocab_size

    def __len__(self) -> int:
        return self._vocab_size

    @property
    def pad_id(self) -> int:
        return self.token_id(PAD)

    @property
    def eot_id(self) -> int:
        return self.token_id(EOT)

    @property
    def backend(self) -> Tokenizer:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tok

    def __repr__(self) -> str:
        return f"TextTokenizer({self.source}, vocab_size={self.vocab_size})"


def tokenizer_fingerprint(tokenizer: TextTokenizer | str) -> str:
    """SHA-256 of the tokenizer's serialised form (equal to the SHA-256 of the ``tokenizer.json`` it
    writes with ``save``). A string is returned as is."""
    if isinstance(tokenizer, str):
        return tokenizer
    return hashlib.sha256(tokenizer.backend.to_str(pretty=False).encode("utf-8")).hexdigest()


# ---- fitting on a corpus ------------------------------------------------------------------------------


def corpus_texts(rows: Iterable) -> list[str]:
    """The texts a tokenizer is trained on: those of the kept rows (``status == "kept"``, e.g. manifest
    records), sorted by id."""
    return [r.text for r in sorted((r for r in rows if r.status == "kept"), key=lambda r: r.id) if r.text]


def train_or_load_tokenizer(tok_cfg: TokenizerConfig, rows: Iterable,
                            cache_path: str | Path | None) -> TextTokenizer:
    """``tok_cfg.path`` if configured (a local Qwen tokenizer.json); otherwise the tokenizer trained on
    the kept rows' texts (:func:`corpus_texts`), reused from ``cache_path`` when it was trained on the
    same."""
    return TextTokenizer.from_config(tok_cfg, corpus_texts=corpus_texts(rows), cache_path=cache_path)


def _meta_path(cache_path: Path) -> Path:
    return cache_path.with_name(cache_path.name + ".meta.json")


def _corpus_sha256(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _stale_reason(meta_path: Path, tok_cfg: TokenizerConfig, wanted: dict | None) -> str | None:
    """Why the cached tokenizer cannot be reused, or None if it can."""
    if not meta_path.is_file():
        return f"no {meta_path.name} recording how it was trained"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        return f"unreadable {meta_path.name}: {e}"
    if meta.get("trained_vocab_size") != tok_cfg.trained_vocab_size:
        return f"trained with vocab size {meta.get('trained_vocab_size')}, config asks for {tok_cfg.trained_vocab_size}"
    if meta.get("special_tokens") != list(SPECIAL_TOKENS):
        return "trained with a different special-token list"
    if wanted is not None and meta.get("corpus_sha256") != wanted["corpus_sha256"]:
        return "trained on a different corpus"
    return None
