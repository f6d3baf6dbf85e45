"""benchmarks/corpus_cost.py: FLOP counting (incl. the LSTM formula FlopCounterMode lacks), FLOPs that grow
with clip length, and a projection whose numbers follow from the measured costs and the corpus size."""

import json
import math

import numpy as np
import pytest
import torch

from benchmarks.corpus_cost import PAPER_HOURS, STEPS, count_flops, dnsmos_windows, main


def test_lstm_flops_are_counted_padded_and_packed():
    """2 FLOPs per weight of w_ih and w_hh, per step, per direction (UTMOS's BLSTM would count 0 otherwise)."""
    lstm = torch.nn.LSTM(24, 16, batch_first=True, bidirectional=True).eval()
    per_step = 2 * 2 * 4 * 16 * (24 + 16)  # 2 FLOPs x 2 directions x 4 gates x hidden x (input + hidden)
    x = np.zeros((2, 10, 24), np.float32)
    assert count_flops(lambda w: lstm(torch.from_numpy(w)), x) == per_step * 2 * 10
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), torch.tensor([10, 4]), batch_first=True)
    assert count_flops(lambda w: lstm(packed), x) == per_step * (10 + 4)


def test_codec_flops_grow_linearly_with_clip_length():
    run = STEPS["dac_demo"].build()
    run(np.zeros(8_000, np.float32))  # the codec plans its padding on first use: not part of a clip's cost
    one_s = count_flops(run, np.zeros(16_000, np.float32))
    two_s = count_flops(run, np.zeros(2 * 16_000, np.float32))
    assert one_s > 1e9 and two_s / one_s == pytest.approx(2.0, rel=0.02)


def test_dnsmos_windows_follow_the_reference_tiling():
    # shorter than 9.01 s: doubled until it is not (4 s -> 16 s), then 1 s hops; from the 8th hop on,
    # int((i + 9.01) * 16000) rounds one sample short and the reference skips the window
    assert [dnsmos_windows(s) for s in (4.0, 9.5, 10.0, 20.0)] == [7, 1, 1, 7]


def test_a_measuring_run_writes_the_costs_it_prints(tmp_path, capsys):
    out_file = tmp_path / "costs.json"
    out = main(["--clip-seconds", "0.5", "--repeats", "1", "--steps", "dac_demo,signal_checks",
                "--out", str(out_file)])
    assert '"projection"' in capsys.readouterr().out
    assert json.loads(out_file.read_text()) == out
    assert set(out["measured"]) == {"dac_demo", "signal_checks"}
    codec = out["measured"]["dac_demo"]
    assert codec["clip_seconds"] == 0.5 and codec["flops_per_clip"] > 0 and codec["cpu_seconds_per_clip"] > 0
    assert out["measured"]["signal_checks"]["flops_per_clip"] is None  # numpy: time only
    # scorers not measured in this run contribute nothing rather than a guess
    assert out["projection"]["gpu_hours"] == {"dac_paper": None}


def test_projection_follows_from_the_measured_costs(tmp_path, capsys):
    clip_s = 5.0
    costs = {"utmos22_strong": (2e12, 3.0), "audiobox_aesthetics": (1e12, 2.0), "clap_audio": (5e11, 1.0),
             "dac_paper": (4e12, 6.0), "dnsmos": (None, 0.5), "signal_checks": (None, 0.001)}
    measured = {name: {"clip_seconds": clip_s, "flops_per_clip": f, "cpu_seconds_per_clip": c}
                for name, (f, c) in costs.items()}
    path = tmp_path / "costs.json"
    path.write_text(json.dumps({"measured": measured, "threads": 1, "torch": "x"}))
    p = main(["--measured", str(path), "--gpus", "4", "--cpu-cores", "64", "--gpu-peak-tflops", "100",
              "--gpu-efficiency", "0.5"])["projection"]
    capsys.readouterr()

    clips = {k: math.ceil(h * 3600 / clip_s) for k, h in PAPER_HOURS.items()}
    music = clips["music"] + clips["v2m"]
    assert p["clip_seconds"] == clip_s and p["clips"] == clips and p["total_clips"] == sum(clips.values())
    assert p["filter_shards"] == math.ceil(sum(clips.values()) / 64)
    assert p["token_shards"] == math.ceil(sum(clips.values()) / 256)
    # the paper preset's codec: 50 frames/s x 12 codebooks x int16
    assert p["token_storage"]["bytes"] == int(290_000 * 3600 * 50 * 12 * 2)

    def gpu_h(name, n):
        return costs[name][0] * n / (0.5 * 100e12) / 3600

    def core_h(name, n):
        return costs[name][1] * n / 3600

    # speech is judged by UTMOS, music and V2M by aesthetics and CLAP, every row is tokenised
    expected = {"utmos22_strong": gpu_h("utmos22_strong", clips["speech"]),
                "audiobox_aesthetics": gpu_h("audiobox_aesthetics", music),
                "clap_audio": gpu_h("clap_audio", music), "dac_paper": gpu_h("dac_paper", sum(clips.values()))}
    assert p["gpu_hours"] == pytest.approx(expected, abs=0.05)
    assert p["substitutes_cpu_core_hours"] == pytest.approx(
        {"dnsmos": core_h("dnsmos", clips["speech"]), "signal_checks": core_h("signal_checks", music)}, abs=0.05)
    cluster = p["cluster"]
    assert cluster["wall_hours_scorers_and_codec_on_gpus"]["tokenise (paper DAC on the GPUs)"] == \
        pytest.approx(expected["dac_paper"] / 4, abs=0.05)
    assert cluster["wall_hours_all_on_cpu"]["tokenise (paper DAC on CPU cores)"] == \
        pytest.approx(core_h("dac_paper", sum(clips.values())) / 64, abs=0.05)
