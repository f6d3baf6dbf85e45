"""The benchmark runner (``evaluation.runner`` re-exports its steps): generate a benchmark's items from a checkpoint (N seeds), score them, and
record the result tables. Library code: ``flows.benchmark`` wires these steps into a Prefect flow,
and each step works (and is tested) without Prefect. Modules: ``config`` (BenchConfig, decoding defaults,
which scorer judges which clips), ``cache`` (hashes, paths, indexes), ``generate`` (steps 1, 2, 2b),
``score`` (3), ``record`` (4; the run report is rendered by ``evaluation.report``).

Steps (each takes and returns paths or small records):

1. ``prepare``   load the benchmark set, write ``<ws>/bench/<run_id>/manifest.jsonl`` and ``run.json``
                 (checkpoint + its weights hash, variant, kind, config + its hash, git commit).
2. ``generate``  batched generation per (task, seed) into ``<ws>/bench/<run_id>/audio/<seed>/<item>.wav``.
                 Resumable: every clip is first looked up in a generation cache
                 (``<ws>/bench/cache/gen/``) keyed on (checkpoint weights SHA-256, generation settings,
                 the item's conditioning incl. prompt/video file hashes, seed, batch size, library code);
                 the model is loaded only when some clip is missing. Run folders get hard links (or copies).
                 Decoding (``BenchConfig``): the paper's benchmarks default to greedy decoding and seeds
                 0, 1, 2 (the paper reports the mean of 3 seeds); the demo set to sampling (T = 1, top-p 0.95)
                 with seed 0 (``DECODING_DEFAULTS``). Greedy decoding draws no random numbers, so its seeds
                 give the same clip: it is generated once and recorded under every seed. Length cap: speech
                 from the target text (``BenchConfig.clip_seconds``), music a fixed clip length.
                 Voice prompts (``speech_prompts``): under ``"paper"`` (the default of the paper's sets) WER /
                 CER and MOS are measured on clips generated from ONE predefined voice prompt per speech task
                 (``audio/<seed>/fixed-prompt/<item>.wav``) and speaker similarity on clips generated from
                 each item's own prompt, so a speech item is generated twice where both kinds of scorer run
                 (each clip cached on its own conditioning); ``"item"`` scores everything on the
                 item-prompted clip (one generation, the demo's default).
                 Returns a content-addressed outputs index (``<ws>/bench/cache/outputs/<sha>.jsonl``): the
                 same inputs give the same index path, so downstream scoring steps are cacheable across runs.
2b. ``toplines`` the scoring index: the generated clips (system ``model``) plus, per item with reference
                 audio, the GROUND TRUTH recording (``ground_truth``) and its CODEC RESYNTHESIS (encode +
                 decode with the checkpoint's own codec, ``codec_resynth``), so every scorer also measures
                 the ceiling and the codec's share of the gap. Resyntheses are cached once per (codec hash,
                 audio file hash) under ``<ws>/bench/cache/resynth/``, and their scores (keyed on the audio
                 hash like any clip's) once per (set, codec); topline rows carry the run's first seed (they
                 do not depend on it). ``BenchConfig.toplines = False`` leaves them out.
3. ``score``     one scorer over the tasks it applies to. Per-item scores and set-level embeddings are
                 cached under ``<ws>/bench/cache/{scores,embed}/`` keyed on (audio file hash, scorer name,
                 scorer version, and the conditioning the score depends on: text, language, reference
                 file hash). Reference-set embeddings (FAD/KL reference statistics) are cached the same way.
                 Model scorers (``token_nll``: held-out token NLL of the checkpoint on each item's ground
                 truth) score system ``model`` only, once per item (seed-independent), cached per
                 (checkpoint weights, item conditioning). A failed item (NaN, with the scorer's reason, or
                 an exception) is never cached, so it is retried on the next run.
                 A scorer whose weights or packages are missing is SKIPPED: the step returns
                 ``status="skipped"`` with the reason, which the run report lists (never silent).
                 A scorer that failed on EVERY item of a (task, system) is a FAILURE (``failed`` in the
                 step's record, with the first failing item's reason): the run report lists it as an
                 ERROR and the benchmark flow / ``unimoe bench`` fails unless failed scorers are allowed.
4. ``record``    aggregate (``evaluation.aggregate``) and append the ``items`` and ``aggregate`` tables
                 (``evaluation.results``; ``system`` per row, ``n_asked`` = items given to the scorer beside
                 ``n`` = items with a finite score, and what a comparison needs to be trusted: manifest and
                 reference-set hashes, decoding, voice prompt, scorer protocol, device, dtype, package
                 versions; ASR transcripts per item), once per run id, plus a markdown run report.
5. regression    ``evaluation.regression.compare_runs``.
"""

