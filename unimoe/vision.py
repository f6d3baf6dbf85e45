"""Video/vision input path: frames -> Qwen2.5-VL patches -> vision tower + merger.

* ``read_video_frames`` decodes a video file with the ``ffmpeg`` binary (fps sampling, scale + pad
  to a square, rgb24 raw pipe).
* ``frames_to_patches`` is our own re-implementation of the Qwen2-VL video processor's patchify
  layout (resize to multiples of ``patch_size * spatial_merge_size``, rescale, CLIP normalisation,
  temporal padding by repeating the last frame, merge-block ordering). No hub processor is used.
* ``VisionEncoder`` wraps ``transformers``' ``Qwen2_5_VisionTransformerPretrainedModel`` (ViT with
  window attention + the patch merger, which is the projector to the decoder width). Its output is
  the merged embeddings that Qwen2.5-VL places at the video-token positions of the decoder
  sequence: ``num_vision_tokens(grid_thw)`` rows of width ``out_hidden_size``.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from unimoe.config import VisionConfig

# OpenAI CLIP statistics, used by the Qwen2-VL / Qwen2.5-VL image and video processors.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ---- vision tower -------------------------------------------------------------------------------


def _hf_vision_config(vision_cfg: VisionConfig, out_hidden_size: int, attn_implementation: str):
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig

    cfg = Qwen2_5_VLVisionConfig(
        depth=vision_cfg.depth,
        hidden_size=vision_cfg.hidden_size,
        hidden_act="silu",
        intermediate_size=vision_cfg.intermediate_size,
        num_heads=vision_cfg.num_heads,
        in_channels=vision_cfg.in_channels,
        patch_size=vision_cfg.patch_size,
        spatial_merge_size=vision_cfg.spatial_merge_size,
        temporal_patch_size=vision_cfg.temporal_patch_size,
        window_size=vision_cfg.window_size,
        out_hidden_size=out_hidden_size,
        fullatt_block_indexes=list(vision_cfg.fullatt_block_indexes),
    )
    cfg._attn_implementation = attn_implementation
    return cfg


class VisionEncoder(nn.Module):
    """Qwen2.5-VL vision tower + patch merger, projecting to the decoder width.

    ``forward(pixel_values, grid_thw)`` takes the flat patches of one or more videos/images
    (concatenated in ``grid_thw`` order, as produced by ``frames_to_patches``) and returns
    ``[sum_i num_vision_tokens(grid_thw[i]), out_hidden_size]``.
    """

    def __init__(self, vision_cfg: VisionConfig, out_hidden_size: int, *, attn_implementation: str = "sdpa"):
        super().__init__()
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
            Qwen2_5_VisionTransformerPretrainedModel,
        )

        if attn_implementation not in ("sdpa", "eager"):
            raise ValueError(f"attn_implementation must be 'sdpa' or 'eager' (CPU-safe), got {attn_implementation!r}")
        vision_cfg.validate()
        self.vision_cfg = vision_cfg
        self.out_hidden_size = out_hidden_size
        self.hf_config = _hf_vision_config(vision_cfg, out_hidden_size, attn_implementation)
        self.tower = Qwen2_5_VisionTransformerPretrainedModel(self.hf_config)

    @property
    def spatial_merge_size(self) -> int:
        return self.vision_cfg.spatial_merge_size

    @property
    def patch_dim(self) -> int:
        c = self.vision_cfg
        return c.in_channels * c.temporal_patch_size * c.patch_size * c.patch_size

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        grid_thw = torch.as_tensor(grid_thw, dtype=torch.long, device=pixel_values.device)
        if grid_thw.dim() == 1:
            grid_thw = grid_thw.unsqueeze(0)
        expected = int(grid_thw.prod(-1).sum())
        if pixel_values.dim() != 2 or pixel_values.shape != (expected, self.patch_dim):
            raise ValueError(
                f"pixel_values must be [{expected}, {self.patch_dim}] for grid_thw={grid_thw.tolist()}, "
                f"got {list(pixel_values.shape)}"
            )
        m = self.spatial_merge_size
        if bool(((grid_thw[:, 1:] % m) != 0).any()):
            raise ValueError(f"grid h and w must be multiples of spatial_merge_size={m}, got {grid_thw.tolist()}")
        dtype = self.tower.patch_embed.proj.weight.dtype
        out = self.tower(pixel_values.to(dtype), grid_thw=grid_thw)
        # transformers 5.x returns BaseModelOutputWithPooling: last_hidden_state is the un-merged ViT
        # output (in window order), pooler_output the merged tokens restored to raster order.
        if hasattr(out, "pooler_output"):
            return out.pooler_output
        if isinstance(out, tuple):  # return_dict=False style: (last_hidden_state, pooler_output)
            return out[1]
        return out  # older transformers returned the merged tensor directly


def num_vision_tokens(grid_thw: torch.Tensor | list | tuple, spatial_merge_size: int) -> int:
    """Number of merged tokens (video placeholder positions in the decoder sequence)."""
    g = torch.as_tensor(grid_thw, dtype=torch.long).reshape(-1, 3)
    return int((g.prod(-1) // (spatial_merge_size**2)).sum())


# ---- preprocessing ------------------------------------------------------------------------------


def target_size(height: int, width: int, factor: int, *, max_pixels: int | None = None,
                min_pixels: int | None = None) -> tuple[int, int]:
    """Qwen2-VL ``smart_resize``: round H, W to multiples of ``factor`` keeping the aspect ratio,
    then rescale so that ``min_pixels <= H*W <= max_pixels`` (min defaults to one merge block)."""
    min_pixels = factor * factor if min_pixels is None else min_pixels
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if max_pixels is not None and h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def frames_to_patches(frames: np.ndarray | torch.Tensor, vision_cfg: VisionConfig, *,
                      max_pixels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames ``[T, H, W, 3]`` (uint8, or float in [0, 1]) -> ``(pixel_values, grid_thw)``.

    ``pixel_values`` is ``[grid_t * grid_h * grid_w, C * temporal_patch * patch * patch]`` float32 in
    the Qwen2-VL video-processor layout: rows ordered (t, h // merge, w // merge, merge_h, merge_w),
    each row flattened as (C, temporal, patch_h, patch_w) to match the tower's Conv3d patch
    embedding. ``grid_thw`` is ``[[grid_t, grid_h, grid_w]]`` (long).
    """
    x = torch.as_tensor(np.asarray(frames)) if isinstance(frames, np.ndarray) else torch.as_tensor(frames)
    if x.dim() == 3:  # a single image [H, W, C]
        x = x.unsqueeze(0)
    c = vision_cfg.in_channels
    if x.dim() != 4 or x.shape[-1] != c:
        raise ValueError(f"frames must be [T, H, W, {c}], got {list(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("frames is empty (T = 0)")
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif x.is_floating_point():
        x = x.float()
    else:
        raise TypeError(f"frames must be uint8 or float in [0, 1], got {x.dtype}")

    p, m, tp = vision_cfg.patch_size, vision_cfg.spatial_merge_size, vision_cfg.temporal_patch_size
    x = x.permute(0, 3, 1, 2).contiguous()  # [T, C, H, W]
    t, _, height, width = x.shape
    rh, rw = target_size(height, width, p * m, max_pixels=max_pixels)
    if (rh, rw) != (height, width):
        x = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False, antialias=True)
        x = x.clamp_(0.0, 1.0)
    # CLIP statistics for RGB; a non-RGB tower (in_channels != 3) gets mean = std = 0.5.
    mean = torch.tensor(CLIP_MEAN if c == 3 else [0.5] * c).view(1, c, 1, 1)
    std = torch.tensor(CLIP_STD if c == 3 else [0.5] * c).view(1, c, 1, 1)
    x = (x - mean) / std

    pad = -t % tp  # repeat the last frame up to a multiple of the temporal patch size
    if pad:
        x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)], dim=0)
        t += pad
    gt, gh, gw = t // tp, rh // p, rw // p
    x = x.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p)
    # -> (gt, gh/m, gw/m, m_h, m_w, C, tp, p_h, p_w)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    pixel_values = x.reshape(gt * gh * gw, c * tp * p * p).contiguous()
    grid_thw = torch.tensor([[gt, gh, gw]], dtype=torch.long)
    return pixel_values, grid_thw


# ---- video decoding -------------------------------------------------------------------------------


def read_video_frames(path: str | Path, *, fps: float = 2.0, max_frames: int = 16, size: int = 112) -> np.ndarray:
    """Decode ``path`` with ffmpeg at ``fps`` frames/s, letterboxed to ``size x size`` (aspect ratio
    kept, black padding), at most ``max_frames`` frames. Returns uint8 ``[T, size, size, 3]``."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise RuntimeError("read_video_frames needs the `ffmpeg` binary on PATH (Debian: apt-get install ffmpeg)")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    if fps <= 0 or max_frames < 1 or size < 1:
        raise ValueError(f"need fps > 0, max_frames >= 1, size >= 1 (got {fps}, {max_frames}, {size})")
    vf = (f"fps={fps},format=rgb24,"
          f"scale={size}:{size}:force_original_aspect_ratio=decrease,"
          f"pad={size}:{size}:(ow-iw)/2:(oh-ih)/2:color=black,setsar=1")
    cmd = [exe, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(path), "-an", "-vf", vf,
           "-frames:v", str(max_frames), "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    err = proc.stderr.decode(errors="replace").strip()
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg could not read {path} (exit {proc.returncode}): {err[-500:]}")
    frame_bytes = size * size * 3
    n = len(proc.stdout) // frame_bytes
    if n == 0:
        raise RuntimeError(f"ffmpeg decoded no video frames from {path}" + (f": {err[-500:]}" if err else ""))
    data = np.frombuffer(proc.stdout[: n * frame_bytes], dtype=np.uint8)
    return data.reshape(n, size, size, 3).copy()
