"""DAC weight files: building a DAC from its constructor kwargs, a seeded random-init one for tests and
the offline demo, and loading a weights file (a release ``.pth`` or an exported ``.safetensors``)
without ever unpickling code."""

from __future__ import annotations

import inspect
import threading
import warnings
from pathlib import Path

import torch
from torch import nn

from unimoe.config import CodecConfig


class CodecLoadError(ValueError):
    """A DAC weights file exists but cannot be (safely) loaded or does not fit the config."""


def _import_dac():
    with warnings.catch_warnings():
        # dac/audiotools import emits deprecation noise from torch.jit.script.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        import dac
    return dac


def _construct_dac(**kwargs) -> nn.Module:
    """``dac.DAC(**kwargs)`` without touching the global RNG and without weight_norm deprecation noise."""
    dac = _import_dac()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
        return dac.DAC(**kwargs)


_RANDOM_BUILD_LOCK = threading.Lock()


def build_random_dac(cfg: CodecConfig, num_codebooks: int, codebook_size: int = 1024) -> nn.Module:
    """A small randomly initialised DAC, deterministic for ``cfg.random_seed``.

    Biases (zero in DAC's own init) are drawn at random too, so padding effects are not hidden by an
    all-zero network and the codes are spread over the codebooks.
    """
    # The seed lives in torch's process-wide RNG: two threads building at once (parallel tokenisation
    # tasks in one process) would interleave their draws and get different "deterministic" weights.
    with _RANDOM_BUILD_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.random_seed)
        model = _construct_dac(**cfg.dac_kwargs(num_codebooks, codebook_size))
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)) and m.bias is not None:
                    m.bias.normal_(0.0, 0.01)
    return model.eval()


def load_dac_weights(path: str | Path) -> nn.Module:
    """Load a DAC weights file written by ``DAC.save`` (``{"state_dict", "metadata": {"kwargs"}}``).

    ``dac.DAC.load`` calls ``torch.load`` without ``weights_only=True`` (and first tries
    ``torch.package``, which unpickles code); the project never unpickles anything else, so the file is
    read here with ``weights_only=True`` and the model is built from its recorded constructor kwargs.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        ckpt = _read_safetensors_dac(path)
    else:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - every failure here means "not a safe plain checkpoint"
            raise CodecLoadError(
                f"{path}: cannot be loaded with torch.load(weights_only=True) ({type(e).__name__}: {str(e)[:300]}). "
                "Only plain DAC state-dict files (as written by DAC.save / the official releases) are accepted; "
                "torch.package archives and other pickles are refused."
            ) from None
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict)
            and isinstance(ckpt.get("metadata"), dict) and isinstance(ckpt["metadata"].get("kwargs"), dict)):
        raise CodecLoadError(f"{path}: not a DAC weights file (expected keys 'state_dict' and 'metadata.kwargs')")
    dac = _import_dac()
    accepted = set(inspect.signature(dac.DAC).parameters)
    kwargs = {k: v for k, v in ckpt["metadata"]["kwargs"].items() if k in accepted}
    with torch.random.fork_rng(devices=[]):
        model = _construct_dac(**kwargs)
    result = model.load_state_dict(ckpt["state_dict"], strict=False)
    if result.missing_keys:
        raise CodecLoadError(f"{path}: weights missing for {len(result.missing_keys)} tensors, e.g. {result.missing_keys[:3]}")
    if result.unexpected_keys:
        warnings.warn(f"{path}: ignoring {len(result.unexpected_keys)} unexpected tensors, e.g. {result.unexpected_keys[:3]}")
    model.metadata = ckpt["metadata"]
    return model.eval()


def _read_safetensors_dac(path: Path) -> dict:
    """A DAC weights file in safetensors (what ``unimoe codec train`` exports): the state dict, with
    the constructor kwargs as JSON under the metadata key ``kwargs`` — the same content as
    ``DAC.save``'s ``{"state_dict", "metadata": {"kwargs"}}``, without pickle."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
        kwargs = json.loads(meta["kwargs"])
    except Exception as e:  # noqa: BLE001
        raise CodecLoadError(f"{path}: not a DAC safetensors file ({type(e).__name__}: {str(e)[:300]}); "
                             "expected a state dict with the DAC constructor kwargs as JSON in metadata['kwargs']") from None
    extra = {k: v for k, v in meta.items() if k != "kwargs"}
    return {"state_dict": state, "metadata": {"kwargs": kwargs, **extra}}
