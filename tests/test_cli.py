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
