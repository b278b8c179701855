"""Deployment artifacts: an optimized generator saved so that loading needs torch only.

An artifact is a directory::

    artifact.json            format, crop size, audio window, feature count, fallback reasons
    encode_reference.<ext>   references (B, 15, H, W) -> per-avatar feature tensors
    generate.<ext>           (source, audio, *features) -> faces (B, 3, H, W)

Formats, tried in this order (the seed's "JIT with trace fallback", behind ``torch.export``):

1. ``torch.export`` (``.pt2`` via ``torch.export.save``), batch dimension dynamic. Works for
   float models; FX-quantized int8 modules are not exportable (no fake kernels for quantized
   tensors).
2. TorchScript by ``torch.jit.script`` (``.ts``). Fails on the AdaAT warp's keyword-dict
   construction and the attention branches' Python-number accumulators.
3. TorchScript by ``torch.jit.trace`` (``.ts``): works for every variant, int8 included; shapes
   other than the batch are baked in (an artifact serves one mouth size, which a model stage
   is anyway).

:func:`load_artifact` returns the same :class:`InferenceEngine` the in-process path uses and
imports nothing from ``dinet_platform.models``.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from dinet_platform.files import replace_dir
from dinet_platform.optimize.fft_conv import FFTConv2d, use_direct_convolutions
from dinet_platform.runtime.engine import InferenceEngine

ArtifactFormat = Literal["export", "script", "trace"]
FORMATS: tuple[ArtifactFormat, ...] = ("export", "script", "trace")
META_FILE = "artifact.json"
ARTIFACT_VERSION = 1
MAX_BATCH = 1024
_SUFFIX = {"export": ".pt2", "script": ".ts", "trace": ".ts"}


@dataclass
class ArtifactInfo:
    """What :func:`save_artifact` wrote (also the content of ``artifact.json``)."""

    format: ArtifactFormat
    crop_shape: tuple[int, int]
    audio_shape: tuple[int, int]
    num_features: int
    files: dict[str, str]
    fallback_reasons: dict[str, str] = field(default_factory=dict)
    version: int = ARTIFACT_VERSION

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)


class _EncodeProgram(nn.Module):
    """``backend.encode_reference`` as a module's ``forward`` (what export/script/trace take)."""

    def __init__(self, backend: nn.Module):
        super().__init__()
        self.backend = backend

    def forward(self, references: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.backend.encode_reference(references)


class _GenerateProgram(nn.Module):
    """``backend.generate`` as a module's ``forward``, with the two feature tensors every DINet
    backend has spelled out (export needs a fixed signature)."""

    def __init__(self, backend: nn.Module):
        super().__init__()
        self.backend = backend

    def forward(
        self,
        source: torch.Tensor,
        audio: torch.Tensor,
        feature_0: torch.Tensor,
        feature_1: torch.Tensor,
    ) -> torch.Tensor:
        return self.backend.generate(source, audio, feature_0, feature_1)


def _uncompiled(module: nn.Module) -> nn.Module:
    """The module with any ``torch.compile`` wrappers (on it or its children) removed."""
    module = getattr(module, "_orig_mod", module)
    for name, child in list(module.named_children()):
        setattr(module, name, _uncompiled(child))
    return module


def _deployable(backend: nn.Module) -> nn.Module:
    """``backend`` without ``torch.compile`` wrappers and with FFT convs back to direct ones
    (copied first if it has FFT convs: the caller's engine keeps them)."""
    backend = _uncompiled(backend).eval()
    if any(isinstance(m, FFTConv2d) for m in backend.modules()):
        backend = copy.deepcopy(backend)
        use_direct_convolutions(backend)
    return backend


def _only_what_runs(backend: nn.Module, call: Callable[[nn.Module], object]) -> nn.Module:
    """A shallow copy of ``backend`` whose top-level children that ``call(backend)`` never
    runs are replaced by ``nn.Identity``: each program file then holds only its own weights
    (``encode_reference`` the reference side, ``generate`` the rest) instead of all of them."""
    owner = {m: name for name, child in backend.named_children() for m in child.modules()}
    used: set[str] = set()
    hooks = [m.register_forward_pre_hook(lambda m, _: used.add(owner[m])) for m in owner]
    try:
        with torch.no_grad():
            call(backend)
    finally:
        for hook in hooks:
            hook.remove()
    pruned = copy.copy(backend)
    pruned._modules = {name: child if name in used else nn.Identity()
                       for name, child in backend._modules.items()}
    return pruned


def _export(program: nn.Module, args: tuple[torch.Tensor, ...], target: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    dynamic = tuple({0: batch} for _ in args)  # one batch size shared by all inputs
    exported = torch.export.export(program, args, dynamic_shapes=dynamic, strict=False)
    exported.example_inputs = None  # else saved with the program: frames nobody needs
    torch.export.save(exported, target)


def _script(program: nn.Module, args: tuple[torch.Tensor, ...], target: Path) -> None:
    torch.jit.save(torch.jit.script(program), str(target))


def _trace(program: nn.Module, args: tuple[torch.Tensor, ...], target: Path) -> None:
    with torch.no_grad():
        traced = torch.jit.trace(program, args, check_trace=False)
    torch.jit.save(traced, str(target))


_WRITERS = {"export": _export, "script": _script, "trace": _trace}


def save_artifact(
    backend: nn.Module | InferenceEngine,
    path: str | Path,
    example: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    formats: Sequence[ArtifactFormat] = FORMATS,
) -> ArtifactInfo:
    """Save ``backend`` (an optimized generator, or an engine's backend) as an artifact
    directory at ``path``, trying ``formats`` in order. ``example`` is ``(source, audio,
    references)`` at the served crop size (batch >= 2 so the batch stays dynamic).

    The directory is written next to ``path`` and moved into place at the end, so a failed
    save never leaves a half-written artifact or destroys the previous one."""
    if isinstance(backend, InferenceEngine):
        backend = backend.backend  # type: ignore[assignment]
    if not isinstance(backend, nn.Module):
        raise TypeError(f"expected an nn.Module backend, got {type(backend).__name__}")
    source, audio, references = (t.detach().cpu().float() for t in example)
    if source.shape[0] < 2:
        raise ValueError("export example needs batch >= 2 (batch 1 would be baked in)")
    backend = _deployable(backend)
    with torch.no_grad():
        features = tuple(t.contiguous() for t in backend.encode_reference(references))
    if len(features) != 2:
        raise ValueError(f"expected 2 reference feature tensors, the backend gave {len(features)}")
    encode = _only_what_runs(backend, lambda b: b.encode_reference(references))
    generate = _only_what_runs(backend, lambda b: b.generate(source, audio, *features))
    programs: dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]] = {
        "encode_reference": (_EncodeProgram(encode), (references,)),
        "generate": (_GenerateProgram(generate), (source, audio, *features)),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    reasons: dict[str, str] = {}
    try:
        for fmt in formats:
            files = {name: name + _SUFFIX[fmt] for name in programs}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    for name, (program, args) in programs.items():
                        _WRITERS[fmt](program, args, staging / files[name])
                break
            except Exception as error:  # each format's failure is recorded, then the next tried
                reasons[fmt] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
                for leftover in staging.iterdir():
                    leftover.unlink()
        else:
            raise RuntimeError(f"no artifact format worked: {reasons}")
        info = ArtifactInfo(
            format=fmt,
            crop_shape=(int(source.shape[-2]), int(source.shape[-1])),
            audio_shape=(int(audio.shape[-2]), int(audio.shape[-1])),
            num_features=len(features),
            files=files,
            fallback_reasons=reasons,
        )
        (staging / META_FILE).write_text(info.to_json())
        replace_dir(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return info


class LoadedBackend:
    """The two programs of an artifact behind the engine's backend interface."""

    def __init__(self, encode: object, generate: object, info: ArtifactInfo):
        self._encode = encode
        self._generate = generate
        self.info = info

    def encode_reference(self, references: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self._encode(references)  # type: ignore[operator]
        return tuple(out) if isinstance(out, list | tuple) else (out,)

    def generate(
        self, source: torch.Tensor, audio: torch.Tensor, *features: torch.Tensor
    ) -> torch.Tensor:
        # exported/traced programs take contiguous inputs of one batch size
        features = tuple(f.contiguous() for f in features)
        return self._generate(source, audio, *features)  # type: ignore[operator]


def read_artifact_info(path: str | Path) -> ArtifactInfo:
    meta = Path(path) / META_FILE
    if not meta.is_file():
        raise FileNotFoundError(f"not an inference artifact (no {META_FILE}): {path}")
    data = json.loads(meta.read_text())
    if data.get("version") != ARTIFACT_VERSION:
        raise ValueError(f"unsupported artifact version {data.get('version')} in {meta}")
    data["crop_shape"] = tuple(data["crop_shape"])
    data["audio_shape"] = tuple(data["audio_shape"])
    return ArtifactInfo(**data)


def load_artifact(
    path: str | Path, *, cache_reference: bool = True, device: torch.device | str = "cpu"
) -> InferenceEngine:
    """An :class:`InferenceEngine` over a saved artifact; needs torch only. int8 artifacts
    run on CPU."""
    path = Path(path)
    info = read_artifact_info(path)
    programs = {}
    for name, file in info.files.items():
        if info.format == "export":
            programs[name] = torch.export.load(path / file).module().to(device)
        else:
            programs[name] = torch.jit.load(str(path / file), map_location=device)
    backend = LoadedBackend(programs["encode_reference"], programs["generate"], info)
    return InferenceEngine(
        backend,
        cache_reference=cache_reference,
        device=device,
        description=f"artifact:{info.format}",
    )
