"""The benchmark runner's public steps and settings (``flows.benchmark``, the CLI and the tests import
them from here): prepare -> generate -> toplines -> score -> record, implemented in ``evaluation.bench``
(see its docstring for what each step does and caches)."""

from evaluation.bench.cache import (bench_dir, benchmark_root, file_hash, find_checkpoint, generation_code_hash,
                                    new_run_id, read_index, results_root, safe_name)
from evaluation.bench.config import (DECODING_DEFAULTS, DEFAULT_SCORERS, MUSIC, OFFICIAL_GUIDANCE, PAPER_DEFAULTS,
                                     SPEECH, SPEECH_PROMPTS, BenchConfig, benchmark_defaults, is_model_scorer,
                                     score_plan, scorer_role, scorer_tasks, scores_row)
from evaluation.bench.generate import (checkpoint_codec, clip_path, generate, manifest_hash, predefined_voice_prompts,
                                       prepare, resynthesise, toplines)
from evaluation.bench.record import ScorersFailed, failure_message, record, reference_set_hash
from evaluation.bench.score import ITEM_COLUMNS, all_failed, score, scorer_protocol
from evaluation.report import failure_lines, render_run_report

__all__ = ["DECODING_DEFAULTS", "DEFAULT_SCORERS", "ITEM_COLUMNS", "MUSIC", "OFFICIAL_GUIDANCE", "PAPER_DEFAULTS",
           "SPEECH", "SPEECH_PROMPTS", "BenchConfig", "ScorersFailed", "all_failed", "bench_dir", "benchmark_defaults",
           "benchmark_root", "checkpoint_codec", "clip_path", "failure_lines", "failure_message", "file_hash",
           "find_checkpoint", "generate", "generation_code_hash", "is_model_scorer", "manifest_hash", "new_run_id",
           "predefined_voice_prompts", "prepare", "read_index", "record", "reference_set_hash", "render_run_report",
           "resynthesise", "results_root", "safe_name", "score", "score_plan", "scorer_protocol", "scorer_role",
           "scorer_tasks", "scores_row", "toplines"]
