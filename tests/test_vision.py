"""Vision input path: ffmpeg decoding, Qwen2-VL patchify layout, Qwen2.5-VL tower + merger."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch

from unimoe.config import VisionConfig, tiny_preset
from unimoe.vision import (
    CLIP_MEAN,
    CLIP_STD,
    VisionEncoder,
    frames_to_patches,
    num_vision_tokens,
    read_video_frames,
    target_size,
)

OUT = 64  # decoder width of the tiny preset


@pytest.fixture(scope="module")
def vcfg() -> VisionConfig:
    return tiny_preset().vision


@pytest.fixture(scope="module")
def encoder(vcfg) -> VisionEncoder:
    torch.manual_seed(0)
    return VisionEncoder(vcfg, OUT).eval()


def _frames(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)


# ---- preprocessing ------------------------------------------------------------------------------


def test_num_vision_tokens():
    assert num_vision_tokens(torch.tensor([[2, 8, 10]]), 2) == 40
    assert num_vision_tokens([[1, 4, 4], [3, 2, 6]], 2) == 4 + 9
    assert num_vision_tokens((1, 6, 6), 3) == 4


def test_patchify_shape_and_grid(vcfg):
    pv, grid = frames_to_patches(_frames(5, 100, 130), vcfg)
    # 100 -> 112, 130 -> 140 (nearest multiples of 14*2); T 5 -> 6 -> grid_t 3
    assert grid.dtype == torch.long and grid.tolist() == [[3, 8, 10]]
    assert pv.dtype == torch.float32
    assert pv.shape == (3 * 8 * 10, 3 * 2 * 14 * 14)
    assert num_vision_tokens(grid, vcfg.spatial_merge_size) == 3 * 4 * 5


def test_target_size_and_max_pixels(vcfg):
    assert target_size(100, 130, 28) == (112, 140)
    assert target_size(10, 10, 28) == (28, 28)  # never below one merge block
    h, w = target_size(448, 896, 28, max_pixels=224 * 224)
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 224 * 224 and abs(w / h - 2) < 0.25
    try:  # agrees with transformers' Qwen2-VL smart_resize
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize
    except Exception:  # pragma: no cover
        smart_resize = None
    if smart_resize is not None:
        for hh, ww in [(100, 130), (448, 896), (720, 1280), (57, 300)]:
            ref = smart_resize(hh, ww, 28, min_pixels=28 * 28, max_pixels=224 * 224)
            assert target_size(hh, ww, 28, max_pixels=224 * 224) == ref
    pv, grid = frames_to_patches(_frames(2, 448, 896), vcfg, max_pixels=224 * 224)
    assert grid.tolist() == [[1, h // 14, w // 14]] and pv.shape[0] == h * w // 196


def test_normalisation_and_float_input(vcfg):
    frame = np.zeros((2, 56, 56, 3), dtype=np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 0, 128, 255
    pv, _ = frames_to_patches(frame, vcfg)
    per_channel = pv.view(pv.shape[0], 3, -1)
    for c, v in enumerate((0, 128, 255)):
        expected = (v / 255 - CLIP_MEAN[c]) / CLIP_STD[c]
        torch.testing.assert_close(per_channel[:, c], torch.full_like(per_channel[:, c], expected))
    # float frames in [0, 1] give the same patches as uint8 / 255
    fr = _frames(3, 56, 84)
    torch.testing.assert_close(frames_to_patches(fr.astype(np.float32) / 255, vcfg)[0], frames_to_patches(fr, vcfg)[0])


def test_patchify_layout_matches_qwen_reference(vcfg):
    """Every row is the (C, temporal, patch_h, patch_w) block of merge cell (t, bh, bw, mh, mw)."""
    p, m, tp = vcfg.patch_size, vcfg.spatial_merge_size, vcfg.temporal_patch_size
    fr = _frames(4, 56, 84)  # already multiples of 28: no resize
    pv, grid = frames_to_patches(fr, vcfg)
    gt, gh, gw = grid[0].tolist()
    x = torch.from_numpy(fr).float().div(255).permute(0, 3, 1, 2)
    x = (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    row = 0
    for t in range(gt):
        for bh in range(gh // m):
            for bw in range(gw // m):
                for mh in range(m):
                    for mw in range(m):
                        hh, ww = (bh * m + mh) * p, (bw * m + mw) * p
                        block = x[t * tp:(t + 1) * tp, :, hh:hh + p, ww:ww + p].permute(1, 0, 2, 3)
                        torch.testing.assert_close(pv[row], block.reshape(-1))
                        row += 1
    assert row == pv.shape[0]

    # Cross-check against transformers' own Qwen2-VL video patchify when it is importable.
    try:
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    except Exception:  # pragma: no cover - optional dependency chain (torchvision)
        return
    ref, rt, rh, rw = Qwen2VLVideoProcessor.patchify(None, x.unsqueeze(0), patch_size=p, merge_size=m,
                                                     temporal_patch_size=tp)
    assert [rt, rh, rw] == [gt, gh, gw]
    torch.testing.assert_close(ref[0], pv)


def test_temporal_padding_repeats_last_frame(vcfg):
    fr = _frames(3, 56, 56)
    pv3, g3 = frames_to_patches(fr, vcfg)
    pv4, g4 = frames_to_patches(np.concatenate([fr, fr[-1:]]), vcfg)
    assert g3.tolist() == g4.tolist() == [[2, 4, 4]]
    torch.testing.assert_close(pv3, pv4)
    pv1, g1 = frames_to_patches(fr[:1], vcfg)  # a single frame / image: duplicated in time
    assert g1.tolist() == [[1, 4, 4]]
    halves = pv1.view(pv1.shape[0], 3, 2, -1)
    torch.testing.assert_close(halves[:, :, 0], halves[:, :, 1])
    # no padding when T is already a multiple of temporal_patch_size
    assert frames_to_patches(_frames(4, 56, 56), vcfg)[1].tolist() == [[2, 4, 4]]


def test_patchify_rejects_bad_input(vcfg):
    with pytest.raises(ValueError):
        frames_to_patches(np.zeros((2, 56, 56, 4), np.uint8), vcfg)
    with pytest.raises(ValueError):
        frames_to_patches(np.zeros((0, 56, 56, 3), np.uint8), vcfg)
    with pytest.raises(TypeError):
        frames_to_patches(np.zeros((2, 56, 56, 3), np.int32), vcfg)


# ---- the tower ----------------------------------------------------------------------------------


def test_tower_runs_on_cpu_with_decoder_width(encoder, vcfg):
    pv, grid = frames_to_patches(_frames(5, 112, 84), vcfg)
    with torch.no_grad():
        out = encoder(pv, grid)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (num_vision_tokens(grid, vcfg.spatial_merge_size), OUT)
    assert torch.isfinite(out).all()
    assert encoder.hf_config._attn_implementation == "sdpa"


def test_tower_deterministic_and_input_dependent(encoder, vcfg):
    pv_a, grid = frames_to_patches(_frames(4, 56, 56, seed=1), vcfg)
    pv_b, _ = frames_to_patches(_frames(4, 56, 56, seed=2), vcfg)
    with torch.no_grad():
        a1, a2, b = encoder(pv_a, grid), encoder(pv_a, grid), encoder(pv_b, grid)
    torch.testing.assert_close(a1, a2, rtol=0, atol=0)
    assert (a1 - b).abs().max() > 1e-3
    # same seed -> same weights -> same embeddings
    torch.manual_seed(0)
    again = VisionEncoder(vcfg, OUT).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(pv_a, grid), a1)


def test_eager_matches_sdpa(encoder, vcfg):
    eager = VisionEncoder(vcfg, OUT, attn_implementation="eager").eval()
    eager.load_state_dict(encoder.state_dict())
    pv, grid = frames_to_patches(_frames(2, 112, 112), vcfg)  # 2x2 windows + one full-attention block
    with torch.no_grad():
        torch.testing.assert_close(eager(pv, grid), encoder(pv, grid), rtol=1e-4, atol=1e-5)


def test_batch_of_two_videos_concatenates(encoder, vcfg):
    pv_a, ga = frames_to_patches(_frames(2, 56, 84, seed=3), vcfg)
    pv_b, gb = frames_to_patches(_frames(4, 56, 56, seed=4), vcfg)
    with torch.no_grad():
        both = encoder(torch.cat([pv_a, pv_b]), torch.cat([ga, gb]))
        a, b = encoder(pv_a, ga), encoder(pv_b, gb)
    torch.testing.assert_close(both, torch.cat([a, b]), rtol=1e-4, atol=1e-5)


def test_merged_token_order_is_raster_over_merge_blocks(vcfg):
    """With no transformer blocks, merged token i depends only on merge block i (raster order
    over t, h // merge, w // merge): the patchify layout agrees with the merger and window order."""
    cfg = vcfg.replace(depth=0, fullatt_block_indexes=[])
    torch.manual_seed(0)
    enc = VisionEncoder(cfg, OUT).eval()
    fr = _frames(4, 112, 168)
    pv, grid = frames_to_patches(fr, cfg)
    _, gh, gw = grid[0].tolist()
    bw_n = gw // 2
    fr2 = fr.copy()
    t, bh, bw = 1, 2, 3  # frames 2-3, pixel rows 56..83, cols 84..111
    fr2[2 * t, bh * 28:(bh + 1) * 28, bw * 28:(bw + 1) * 28] ^= 0xFF
    pv2, _ = frames_to_patches(fr2, cfg)
    with torch.no_grad():
        diff = (enc(pv, grid) - enc(pv2, grid)).abs().amax(-1)
    changed = torch.nonzero(diff > 1e-6).flatten().tolist()
    assert changed == [t * (gh // 2) * bw_n + bh * bw_n + bw]


def test_gradients_reach_tower(vcfg):
    torch.manual_seed(0)
    enc = VisionEncoder(vcfg, OUT)
    pv, grid = frames_to_patches(_frames(2, 56, 56), vcfg)
    enc(pv, grid).square().mean().backward()
    assert enc.tower.patch_embed.proj.weight.grad is not None
    assert enc.tower.merger.mlp[2].weight.grad.abs().sum() > 0


def test_forward_rejects_mismatched_grid(encoder, vcfg):
    pv, _ = frames_to_patches(_frames(2, 56, 56), vcfg)
    with pytest.raises(ValueError):
        encoder(pv, torch.tensor([[1, 4, 6]]))


def test_paper_tower_param_count_on_meta():
    """Qwen2.5-VL-3B vision tower incl. merger (to width 2048) is ~669M parameters."""
    with torch.device("meta"):
        enc = VisionEncoder(VisionConfig(), 2048)
    n = sum(p.numel() for p in enc.parameters())
    assert all(p.is_meta for p in enc.parameters())
    assert abs(n - 669e6) / 669e6 < 0.02, n


# ---- video decoding -----------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg binary not on PATH")
def test_read_video_frames_with_ffmpeg(tmp_path, vcfg):
    video = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=size=96x64:rate=4", "-t", "2", "-pix_fmt", "yuv420p", str(video)], check=True)
    frames = read_video_frames(video, fps=2.0, max_frames=16, size=112)
    assert frames.dtype == np.uint8 and frames.shape == (4, 112, 112, 3)  # 2 s at 2 fps
    # 96x64 letterboxed to 112x112: black bars on top and bottom, picture in the middle
    assert frames[:, :10].max() < 20 and frames[:, 40:70].mean() > 30
    assert read_video_frames(video, fps=4.0, max_frames=3, size=56).shape == (3, 56, 56, 3)
    pv, grid = frames_to_patches(frames, vcfg)
    assert grid.tolist() == [[2, 8, 8]]

    with pytest.raises(FileNotFoundError):
        read_video_frames(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(RuntimeError, match="ffmpeg"):
        read_video_frames(junk)
