"""Tokenisation of the curated manifest into token shards (DAC codes and text ids) that training reads
with random access.

``plan_shards`` (:mod:`.plan`) -> ``tokenize_shard`` (:mod:`.write`, one call per shard; a flow runs one
task per shard; rows are read and encoded by :mod:`.encode`) -> ``write_index``.
``tokenize_manifest`` runs the three in sequence. The on-disk format, its writer primitives and the
reader live with the training code that consumes them, in :mod:`unimoe.training.shards`; the text
tokenizer is fitted by :func:`unimoe.tokenizer.train_or_load_tokenizer`.

A row whose audio cannot be read or encoded (or whose text cannot be tokenized) is not written; it is
returned in ``ShardResult.failed`` as ``(id, reason, detail)`` with a reason code from
:data:`REASONS`, recorded in the shard JSON and the index, and :func:`apply_failures` turns it into a
``quarantined`` manifest row.
"""

from data.tokenize.encode import REASONS, RowError, encode_rows
from data.tokenize.plan import ShardPlan, codec_fingerprint, plan_shards, shard_key
from data.tokenize.write import apply_failures, tokenize_manifest, tokenize_shard
from unimoe.training.shards import FORMAT, ShardResult, TokenizeError, tokenizer_info, write_index

__all__ = [
    "FORMAT", "REASONS", "RowError", "ShardPlan", "ShardResult", "TokenizeError", "apply_failures",
    "codec_fingerprint", "encode_rows", "plan_shards", "shard_key", "tokenize_manifest", "tokenize_shard",
    "tokenizer_info", "write_index",
]
