import json

import soundfile as sf
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def test_model_info_paper_json():
    result = runner.invoke(app, ["model", "info", "--preset", "paper", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert abs(report["total"] - 7.1e9) < 0.05 * 7.1e9
    assert report["active_min"] < report["active_max"]


def test_model_info_text_and_bad_preset():
    ok = runner.invoke(app, ["model", "info", "--preset", "tiny"])
    assert ok.exit_code == 0 and "total parameters" in ok.output
    bad = runner.invoke(app, ["model", "info", "--preset", "nope"])
    assert bad.exit_code == 2 and "unknown preset" in bad.output


def test_config_file_round_trip(tmp_path):
    out = runner.invoke(app, ["model", "config", "--preset", "tiny"])
    (tmp_path / "c.yaml").write_text(out.output)
    info = runner.invoke(app, ["model", "info", "--config", str(tmp_path / "c.yaml"), "--json"])
    assert info.exit_code == 0 and json.loads(info.output)["preset"] == "tiny"
    (tmp_path / "bad.yaml").write_text(out.output.replace("top_p:", "top_pp:"))
    bad = runner.invoke(app, ["model", "info", "--config", str(tmp_path / "bad.yaml")])
    assert bad.exit_code == 2 and "top_pp" in bad.output


def test_init_then_generate_writes_wav_with_provenance(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("hello world\na calm piano melody\n你好世界\n" * 5, encoding="utf-8")
    assert runner.invoke(app, ["model", "init", str(tmp_path / "ck"), "--text-file", str(text)]).exit_code == 0
    wav = tmp_path / "out.wav"
    result = runner.invoke(app, ["model", "generate", "--checkpoint", str(tmp_path / "ck"), "--task", "t2m",
                                 "--text", "piano", "--out", str(wav), "--max-seconds", "0.4", "--guidance", "1.5"])
    assert result.exit_code == 0, result.output
    data, sr = sf.read(wav)
    assert sr == 16000 and len(data) == 20 * 320
    meta = json.loads(wav.with_suffix(".json").read_text())
    # the tiny preset decodes with the shipped demo codec, pinned by its checksum
    assert not meta["codec"]["is_random_init"] and meta["codec"]["label"].startswith("DAC demo")
    bad = runner.invoke(app, ["model", "generate", "--checkpoint", str(tmp_path / "ck"), "--task", "v2m",
                              "--out", str(wav)])
    assert bad.exit_code == 2 and "video" in bad.output


def test_train_list_variants():
    result = runner.invoke(app, ["train", "--list-variants"])
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.output.splitlines() if line.strip()]
    assert names[0] == "unimoe-top-p0.7" and {"unify-dense", "unify-moe-top2", "wo-init", "p0.5", "p0.9",
                                             "experts-8", "experts-16"} <= set(names)


def test_curate_corpus_root_and_options_build_the_config(tmp_path):
    from flows.cli import curate_config_from_cli

    assert curate_config_from_cli(None, None, None, []) is None  # the demo profile
    assert curate_config_from_cli(None, "demo", None, []) is None
    cfg = curate_config_from_cli(None, "librispeech", tmp_path, ["split=test", "max_duration=12.5", "text_variant=original"])
    assert cfg == {"corpus": "librispeech", "corpus_root": str(tmp_path.resolve()),
                   "adapter_options": {"split": "test", "max_duration": 12.5, "text_variant": "original"}}
    # a --config file's fields, overridden by the flags
    (tmp_path / "c.yaml").write_text("corpus: musiccaps\ncorpus_root: /elsewhere\nrows_per_shard: 8\n")
    cfg = curate_config_from_cli(tmp_path / "c.yaml", None, tmp_path, [])
    assert cfg == {"corpus": "musiccaps", "corpus_root": str(tmp_path.resolve()), "rows_per_shard": 8}


def test_curate_cli_refuses_bad_corpus_options_before_running(tmp_path):
    runner = CliRunner()
    cases = [
        (["--corpus", "nope", "--root", str(tmp_path)], "unknown corpus adapter 'nope'"),
        (["--corpus", "librispeech"], "needs --root"),
        (["--corpus", "librispeech", "--root", str(tmp_path / "missing")], "not a folder"),
        (["--corpus", "librispeech", "--root", str(tmp_path), "--option", "bogus=1"], "has no option(s) ['bogus']"),
        (["--corpus", "librispeech", "--root", str(tmp_path), "--option", "split"], "expected key=value"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["curate", "--workspace", str(tmp_path / "ws"), *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
    assert not (tmp_path / "ws" / "curate").exists()  # refused before the flow started
