"""Read and write DVR-layout checkpoints (encoder + decoder), with one-line UserErrors.

An official DVR checkpoint (``model.pt`` / ``model_best.pt`` of Niemeyer et al.'s code, and the
ISS stage-1 checkpoints that reuse its wrapper) is a dict::

    {"model": state_dict, "optimizer": ..., "it": int, "epoch_it": int, "loss_val_best": float}

Files are always read with ``torch.load(path, map_location="cpu", weights_only=True)``; numpy
scalars (DVR stores ``loss_val_best`` as a ``numpy.float64``) are allow-listed, under both the
numpy 1 and numpy 2 module names, and returned as Python numbers.

Key map, DVR name -> iss3d name (applied by :func:`map_dvr_key`, see ``DVR_KEY_RULES``):

==========================================================  ====================================
DVR / im2mesh key                                           iss3d module and key
==========================================================  ====================================
``module.<key>`` (DataParallel wrapper)                     ``<key>`` (prefix stripped, repeated)
``encoder.features.<torchvision resnet18 name>``            ``ResNet18Encoder.features.<same>``
  (conv1, bn1, layer1..layer4; no ``fc``: DVR replaced it)
``encoder.fc.weight`` (c_dim, 512), ``encoder.fc.bias``     ``ResNet18Encoder.fc.*``
``decoder.fc_p.weight`` (h, 3), ``.bias`` (h,)              ``Decoder.fc_p.*``
``decoder.fc_c.<n>.weight`` (h, c_dim), ``.bias``           ``Decoder.fc_c.<n>.*``
``decoder.blocks.<n>.fc_0.*``, ``.fc_1.*`` (h, h)           ``Decoder.blocks.<n>.fc_0/fc_1.*``
``decoder.blocks.<n>.shortcut.weight`` (size_out, size_in)  same (only when block sizes differ)
``decoder.fc_out.weight`` (4, h), ``.bias`` (4,)            ``Decoder.fc_out.*`` (row 0 occupancy,
                                                              rows 1:4 RGB logits)
==========================================================  ====================================

Our modules use DVR's attribute names, so after stripping ``module.`` the map is the identity
on ``encoder.*`` and ``decoder.*``; anything else (e.g. ISS's ``clip_model.*``, ``generator.*``)
is an unexpected key unless its prefix is passed in ``ignore_prefixes``. BatchNorm
``num_batches_tracked`` buffers may be absent (checkpoints from before PyTorch 0.4.1); the
module's own values are kept then.

ISS stage-1 checkpoints (Liu et al.'s ``stage1/`` code, same wrapper) are read by
:func:`load_iss_checkpoint`; key map, ISS name -> part and iss3d name (``ISS_KEY_RULES``,
applied after stripping ``module.``; the first matching rule decides, no match: unexpected):

==========================================================  ====================================
ISS key                                                     part: iss3d module and key
==========================================================  ====================================
``generator.linear_<n>.weight`` (out, in), ``.bias``        mapper: ``Mapper.linear_<n>.*``
  (n = 1..12; the official ``generator`` module's names)      (identity)
``generator.<i>.weight``, ``.bias``, i even (an             mapper: ``Mapper.linear_<i/2 + 1>.*``
  ``nn.Sequential`` of Linear / LeakyReLU: Linear at          (an odd i is unexpected: LeakyReLU
  0, 2, 4, ...)                                               has no parameters)
``decoder.<key>`` (DVR names, h = 512)                      decoder: ``Decoder.<key>`` (as DVR)
``encoder.<key>`` (DVR's ResNet-18 names)                   encoder: ``ResNet18Encoder.<key>``
``clip_model.<key>`` (OpenAI CLIP ViT-B/32, mostly fp16)    clip: returned as stored, not loaded
==========================================================  ====================================

The architectures are read off the shapes (mapper widths from ``linear_<n>.weight``; decoder
hidden size, c_dim and block count from ``fc_p``, ``fc_c`` and ``blocks``), so
:meth:`ISSCheckpoint.build_mapper` / :meth:`ISSCheckpoint.build_decoder` need no config.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from iss3d.core.atomic import atomic_output
from iss3d.core.errors import UserError
from iss3d.core.paths import input_file
from iss3d.models.decoder import Decoder, DecoderConfig
from iss3d.models.mapper import Mapper, MapperConfig

__all__ = [
    "DVR_KEY_RULES",
    "ISS_KEY_RULES",
    "ISSCheckpoint",
    "load_dvr_checkpoint",
    "load_iss_checkpoint",
    "load_state_into",
    "map_dvr_key",
    "map_iss_key",
    "safe_load",
    "save_dvr_checkpoint",
]

#: (pattern, replacement) rules applied in order by :func:`map_dvr_key`; the first rule is
#: applied repeatedly, then the first matching rule of the rest decides. No match: unexpected.
DVR_KEY_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^module\."), ""),
    (re.compile(r"^encoder\.(.+)$"), r"encoder.\1"),
    (re.compile(r"^decoder\.(.+)$"), r"decoder.\1"),
]

_OPTIONAL_SUFFIXES = ("num_batches_tracked",)


def _strip_module(key: str) -> str:
    strip, replacement = DVR_KEY_RULES[0]
    while strip.match(key):
        key = strip.sub(replacement, key, count=1)
    return key


def map_dvr_key(key: str) -> str | None:
    """The iss3d name (``encoder.*`` / ``decoder.*``) of a DVR state-dict key; None if unknown."""
    key = _strip_module(key)
    for pattern, repl in DVR_KEY_RULES[1:]:
        if pattern.match(key):
            return pattern.sub(repl, key, count=1)
    return None


def _numpy_safe_globals() -> list[Any]:
    """Globals a pickled numpy scalar needs, under numpy 2 and legacy numpy 1 names."""
    sample = np.float64(0.0)
    scalar = sample.__reduce__()[0]
    found: list[Any] = [scalar, np.dtype]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        found.append((scalar, f"{module}.scalar"))
    for code in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "?"):
        found.append(type(np.dtype(code)))
    return found


def _one_line(err: BaseException) -> str:
    text = str(err)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = lines[0] if lines else type(err).__name__
    if len(line) > 120 and ". " in line:
        line = line.split(". ", 1)[0]
    return line if len(line) <= 160 else line[:157] + "..."


def safe_load(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with one-line UserErrors.

    Args:
        path: a file written by ``torch.save`` (zip or legacy format).
        what: how the error names the file's role, e.g. ``"checkpoint"``.

    Returns:
        The loaded object; tensors on the CPU.

    Raises:
        UserError: missing file, a folder, or a file torch cannot read (truncated, corrupt, or
            holding objects beyond tensors, containers and numpy scalars).
    """
    p = input_file(path, f"a {what} file")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()), warnings.catch_warnings():
            # torch warns (a second stderr line) about pickles it is about to refuse anyway
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(p, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as err:
        raise UserError(
            f"{p}: cannot read as a PyTorch {what} (truncated, corrupt or not a weights-only "
            f"file: {_one_line(err)})"
        ) from None


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def load_state_into(
    module: nn.Module,
    state: Mapping[str, Any],
    path: str | os.PathLike,
    prefix: str = "",
) -> None:
    """Check ``state`` against ``module.state_dict()`` key by key, then load it.

    Args:
        module: the module to fill.
        state: parameter/buffer name (relative to ``module``) -> tensor.
        path: the file the state came from (named in errors).
        prefix: prepended to key names in error messages (e.g. ``"decoder."``).

    Raises:
        UserError: the first missing key, the first unexpected key, the first non-tensor value,
            the first shape mismatch, e.g. ``ckpt.pt: shape mismatch for
            decoder.fc_p.weight: checkpoint (512, 3) vs model (128, 3)``, or the first tensor
            with NaN or infinite values.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(_OPTIONAL_SUFFIXES)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{path}: missing key {prefix + missing[0]!r} in checkpoint{more}")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise UserError(
            f"{path}: unexpected key {prefix + unexpected[0]!r} in checkpoint "
            f"(the model has no such parameter){more}"
        )
    full: dict[str, torch.Tensor] = {}
    for key, target in expected.items():
        value = state.get(key, target)
        if not isinstance(value, torch.Tensor):
            raise UserError(
                f"{path}: {prefix + key} is a {type(value).__name__} in the checkpoint, "
                "expected a tensor"
            )
        if value.shape != target.shape:
            raise UserError(
                f"{path}: shape mismatch for {prefix + key}: checkpoint {_shape(value)} "
                f"vs model {_shape(target)}"
            )
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise UserError(
                f"{path}: {prefix + key} holds NaN or infinite values (a diverged training run?)"
            )
        full[key] = value
    module.load_state_dict(full, strict=True)


def load_prefixed(
    module: nn.Module, state: Mapping[str, Any], prefix: str, path: str | os.PathLike
) -> None:
    """Load the ``prefix``-ed part of a composite state dict (e.g. a Lightning module's
    ``decoder.*`` keys) into ``module``, with :func:`load_state_into`'s checks and errors."""
    part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    load_state_into(module, part, path, prefix=prefix)


#: What :func:`slim_checkpoint` keeps of a Lightning checkpoint.
SLIM_KEYS = ("state_dict", "architecture", "hyper_parameters", "global_step", "epoch")


def slim_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike, half: bool = False
) -> dict[str, int]:
    """Write the weights and hyperparameters of a Lightning checkpoint, without optimizer state.

    The result loads wherever the full checkpoint does for inference (``load_svr``,
    ``load_stage1``) but cannot resume training. Written to a temporary name, then renamed.

    Args:
        src: a ``.ckpt`` written by an ``iss3d fit`` command.
        dst: the output file.
        half: store floating-point tensors as float16 (loaders convert back to the model's
            dtype); halves the size, for shipping small models.

    Returns:
        ``{"bytes_in": ..., "bytes_out": ..., "tensors": ...}``.

    Raises:
        UserError: unreadable file, or not a Lightning checkpoint (no state_dict /
            hyper_parameters).
    """
    ckpt = safe_load(src, "checkpoint")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise UserError(
            f"{src}: not an iss3d training checkpoint (no state_dict / hyper_parameters)"
        )
    out = {k: ckpt[k] for k in SLIM_KEYS if k in ckpt}
    if half:
        out["state_dict"] = {
            k: v.half() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()
        }
    with atomic_output(dst) as tmp:
        torch.save(out, tmp)
    return {
        "bytes_in": Path(src).stat().st_size,
        "bytes_out": Path(dst).stat().st_size,
        "tensors": len(out["state_dict"]),
    }


def _plain_meta(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def load_dvr_checkpoint(
    path: str | os.PathLike,
    encoder: nn.Module | None,
    decoder: nn.Module,
    *,
    ignore_prefixes: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Load an official DVR checkpoint (or a bare DVR state dict) into our modules in place.

    Args:
        path: ``{'model': state_dict, 'optimizer', 'it', 'epoch_it', 'loss_val_best'}`` or a
            bare state dict, keys as in the module docstring's key map.
        encoder: e.g. a ``ResNet18Encoder(c_dim=256)``; None loads the decoder only and skips
            the checkpoint's ``encoder.*`` keys.
        decoder: a ``Decoder(c_dim, hidden, n_blocks)`` of the checkpoint's architecture.
        ignore_prefixes: top-level key prefixes to skip (after ``module.`` stripping), e.g.
            ``("clip_model.", "generator.")`` for an ISS stage-1 checkpoint.

    Returns:
        Everything in the file except ``'model'`` (``it``, ``epoch_it``, ``loss_val_best``,
        ``optimizer``, ...), numpy scalars turned into Python numbers; ``{}`` for a bare dict.

    Raises:
        UserError: one line naming ``path``: missing/unreadable file, not a dict, no
            ``'model'`` entry, first missing / unexpected key, first shape mismatch.
    """
    ignore = tuple(ignore_prefixes)
    obj = safe_load(path, "checkpoint")
    if not isinstance(obj, Mapping):
        raise UserError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    if "model" in obj:
        state = obj["model"]
        meta = {k: _plain_meta(v) for k, v in obj.items() if k != "model"}
        if not isinstance(state, Mapping):
            raise UserError(f"{path}: 'model' entry is a {type(state).__name__}, expected a dict")
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, meta = obj, {}
    else:
        raise UserError(f"{path}: no 'model' entry (keys: {', '.join(map(str, list(obj)[:6]))})")
    parts: dict[str, dict[str, Any]] = {"encoder.": {}, "decoder.": {}}
    for raw_key, value in state.items():
        if not isinstance(raw_key, str):
            raise UserError(f"{path}: non-string key {raw_key!r} in the model state dict")
        key = map_dvr_key(raw_key)
        stripped = key if key is not None else _strip_module(raw_key)
        if stripped.startswith(ignore):
            continue
        if key is None:
            raise UserError(
                f"{path}: unexpected key {raw_key!r} in checkpoint (expected encoder.* and "
                "decoder.* keys only)"
            )
        prefix = "encoder." if key.startswith("encoder.") else "decoder."
        parts[prefix][key[len(prefix) :]] = value
    if encoder is not None:
        load_state_into(encoder, parts["encoder."], path, prefix="encoder.")
    load_state_into(decoder, parts["decoder."], path, prefix="decoder.")
    return meta


def save_dvr_checkpoint(
    path: str | os.PathLike,
    encoder: nn.Module | None,
    decoder: nn.Module,
    **meta: Any,
) -> Path:
    """Write ``{'model': {encoder.*, decoder.*}, **meta}`` in DVR's layout (atomically).

    Args:
        path: output file; its folder must exist.
        encoder: saved under ``encoder.*`` unless None.
        decoder: saved under ``decoder.*``.
        **meta: extra entries, e.g. ``it=0, epoch_it=0, loss_val_best=float("inf")``.

    Returns:
        ``Path(path)``.
    """
    state: dict[str, torch.Tensor] = {}
    if encoder is not None:
        state.update({f"encoder.{k}": v.detach().cpu() for k, v in encoder.state_dict().items()})
    state.update({f"decoder.{k}": v.detach().cpu() for k, v in decoder.state_dict().items()})
    out = Path(path)
    with atomic_output(out) as tmp:
        torch.save({"model": state, **meta}, tmp)
    return out


# -- ISS stage-1 checkpoints ------------------------------------------------------------------


def _sequential_to_linear(m: re.Match[str]) -> str:
    index = int(m.group(1))
    return f"linear_{index // 2 + 1}.{m.group(2)}"


#: (pattern, part, replacement) rules of :func:`map_iss_key`, tried in order after ``module.``
#: stripping; the replacement is a ``re`` template or a function of the match.
ISS_KEY_RULES: list[tuple[re.Pattern[str], str, Any]] = [
    (re.compile(r"^generator\.linear_([1-9][0-9]*)\.(weight|bias)$"), "mapper", r"linear_\1.\2"),
    (re.compile(r"^generator\.([0-9]*[02468])\.(weight|bias)$"), "mapper", _sequential_to_linear),
    (re.compile(r"^decoder\.(.+)$"), "decoder", r"\1"),
    (re.compile(r"^encoder\.(.+)$"), "encoder", r"\1"),
    (re.compile(r"^clip_model\.(.+)$"), "clip", r"\1"),
]

_ISS_PARTS = ("mapper", "decoder", "encoder", "clip")
_ISS_PREFIX = {"mapper": "generator.", "decoder": "decoder.", "encoder": "encoder.", "clip": ""}


def map_iss_key(key: str) -> tuple[str, str] | None:
    """``(part, iss3d key)`` of an ISS stage-1 state-dict key, part one of ``mapper``,
    ``decoder``, ``encoder``, ``clip``; None for a key the map does not know."""
    key = _strip_module(key)
    for pattern, part, repl in ISS_KEY_RULES:
        if pattern.match(key):
            return part, pattern.sub(repl, key, count=1)
    return None


@dataclass
class ISSCheckpoint:
    """The parts of an ISS stage-1 checkpoint, under iss3d names (see the module docstring).

    Attributes:
        mapper, decoder, encoder, clip: state dicts (tensors as stored; ``clip`` keeps the
            OpenAI CLIP names and dtypes, mostly fp16; ``encoder`` may be empty).
        mapper_config: the mapper's widths, read off ``mapper``'s shapes.
        decoder_config: the decoder's c_dim, hidden size and block count, read off ``decoder``.
        meta: everything in the file besides ``'model'`` (``it``, ``epoch_it``, ...).
        source: the ISS key each ``(part, iss3d key)`` came from (for error messages).
        path: the file.
    """

    mapper: dict[str, torch.Tensor]
    decoder: dict[str, torch.Tensor]
    encoder: dict[str, torch.Tensor]
    clip: dict[str, torch.Tensor]
    mapper_config: MapperConfig
    decoder_config: DecoderConfig
    meta: dict[str, Any] = field(default_factory=dict)
    source: dict[tuple[str, str], str] = field(default_factory=dict)
    path: str = ""

    def build_mapper(self) -> Mapper:
        """A :class:`iss3d.models.mapper.Mapper` of the checkpoint's widths, with its weights."""
        mapper = self.mapper_config.build()
        _load_part(mapper, self, "mapper")
        return mapper

    def build_decoder(self) -> Decoder:
        """A :class:`iss3d.models.decoder.Decoder` of the checkpoint's architecture, with its
        weights."""
        decoder = self.decoder_config.build()
        _load_part(decoder, self, "decoder")
        return decoder


def _load_part(module: nn.Module, ckpt: ISSCheckpoint, part: str) -> None:
    """Check shapes naming the ISS key, then :func:`load_state_into` (missing / unexpected)."""
    state: dict[str, Any] = getattr(ckpt, part)
    expected = module.state_dict()
    for key, value in state.items():
        target = expected.get(key)
        if target is None or not isinstance(value, torch.Tensor):
            continue
        if value.shape != target.shape:
            raw = ckpt.source.get((part, key), _ISS_PREFIX[part] + key)
            ours = "" if raw == _ISS_PREFIX[part] + key else f" ({part} {key})"
            raise UserError(
                f"{ckpt.path}: shape mismatch for {raw}{ours}: checkpoint {_shape(value)} vs "
                f"model {_shape(target)}"
            )
    load_state_into(module, state, ckpt.path, prefix=_ISS_PREFIX[part])


def _model_state(obj: Any, path: str | os.PathLike) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """The state dict and the other entries of a ``{'model': state, ...}`` file (or bare dict)."""
    if not isinstance(obj, Mapping):
        raise UserError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    if "model" in obj:
        state = obj["model"]
        if not isinstance(state, Mapping):
            raise UserError(f"{path}: 'model' entry is a {type(state).__name__}, expected a dict")
        return state, {k: _plain_meta(v) for k, v in obj.items() if k != "model"}
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}
    raise UserError(f"{path}: no 'model' entry (keys: {', '.join(map(str, list(obj)[:6]))})")


def _tensor_shape(state: Mapping[str, Any], key: str, path, raw: str) -> tuple[int, ...]:
    value = state.get(key)
    if not isinstance(value, torch.Tensor):
        raise UserError(f"{path}: {raw} is missing or not a tensor")
    return tuple(value.shape)


def _iss_mapper_config(
    state: Mapping[str, Any], source: Mapping[tuple[str, str], str], path
) -> MapperConfig:
    """Mapper widths from ``linear_<n>.weight`` shapes (consecutive n from 1, chained sizes)."""
    numbers = sorted({int(k.split(".")[0].removeprefix("linear_")) for k in state})
    if numbers != list(range(1, len(numbers) + 1)):
        missing = next(n for n in range(1, numbers[-1] + 1) if n not in numbers)
        raise UserError(f"{path}: missing mapper layer generator.linear_{missing} (generator.*)")
    in_dim, widths, fan_in = None, [], None
    for n in numbers:
        key = f"linear_{n}.weight"
        raw = source.get(("mapper", key), f"generator.{key}")
        shape = _tensor_shape(state, key, path, raw)
        if len(shape) != 2:
            raise UserError(f"{path}: {raw} has shape {shape}, expected (out, in)")
        if fan_in is not None and shape[1] != fan_in:
            raise UserError(
                f"{path}: shape mismatch for {raw}: {shape} takes {shape[1]} inputs but the "
                f"previous layer gives {fan_in}"
            )
        in_dim = shape[1] if in_dim is None else in_dim
        widths.append(shape[0])
        fan_in = shape[0]
    return MapperConfig.from_widths(int(in_dim), widths)


def _iss_decoder_config(state: Mapping[str, Any], path) -> DecoderConfig:
    """Decoder c_dim / hidden / n_blocks from DVR-named shapes."""
    fc_p = _tensor_shape(state, "fc_p.weight", path, "decoder.fc_p.weight")
    if len(fc_p) != 2 or fc_p[1] != 3:
        raise UserError(
            f"{path}: decoder.fc_p.weight has shape {fc_p}, expected (hidden, 3) (DVR's "
            "decoder takes plain xyz points)"
        )
    hidden = fc_p[0]
    n_blocks = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    c_dim = 0
    if "fc_c.0.weight" in state:
        c_dim = _tensor_shape(state, "fc_c.0.weight", path, "decoder.fc_c.0.weight")[1]
    out = _tensor_shape(state, "fc_out.weight", path, "decoder.fc_out.weight")
    if out[0] != 4:
        raise UserError(
            f"{path}: decoder.fc_out.weight has shape {out}, expected (4, {hidden}) "
            "(occupancy + RGB)"
        )
    return DecoderConfig(c_dim=c_dim, hidden=hidden, n_blocks=n_blocks)


def load_iss_checkpoint(
    path: str | os.PathLike,
    mapper: nn.Module | None = None,
    decoder: nn.Module | None = None,
    encoder: nn.Module | None = None,
) -> ISSCheckpoint:
    """Read an official ISS stage-1 checkpoint; optionally load it into given modules.

    Args:
        path: ``{'model': state_dict, 'optimizer', 'it', ...}`` (or a bare state dict) with
            ``generator.*``, ``decoder.*``, optional ``encoder.*`` and ``clip_model.*`` keys
            (key map in the module docstring). Read with ``weights_only=True``.
        mapper: a :class:`iss3d.models.mapper.Mapper` to fill in place (or None).
        decoder: a :class:`iss3d.models.decoder.Decoder` to fill in place (or None).
        encoder: an encoder to fill in place (or None; the checkpoint must then have
            ``encoder.*`` keys).

    Returns:
        An :class:`ISSCheckpoint`: the parts' state dicts, the architectures read off their
        shapes (``build_mapper()`` / ``build_decoder()`` make fresh modules), and the meta.

    Raises:
        UserError: one line naming ``path``: missing / unreadable file, no ``'model'`` entry,
            an unknown key (named), no ``generator.*`` or ``decoder.*`` keys, a mapper whose
            layers do not chain, the first shape mismatch with a given module (naming the ISS
            key), the first missing / unexpected key.
    """
    obj = safe_load(path, "ISS checkpoint")
    state, meta = _model_state(obj, path)
    parts: dict[str, dict[str, Any]] = {p: {} for p in _ISS_PARTS}
    source: dict[tuple[str, str], str] = {}
    for raw_key, value in state.items():
        if not isinstance(raw_key, str):
            raise UserError(f"{path}: non-string key {raw_key!r} in the model state dict")
        mapped = map_iss_key(raw_key)
        if mapped is None:
            raise UserError(
                f"{path}: unexpected key {raw_key!r} in ISS checkpoint (expected generator.*, "
                "decoder.*, encoder.* and clip_model.* keys)"
            )
        part, key = mapped
        if key in parts[part]:
            raise UserError(
                f"{path}: {raw_key!r} and {source[(part, key)]!r} are the same parameter "
                f"({part} {key})"
            )
        parts[part][key] = value
        source[(part, key)] = raw_key
    if not parts["mapper"]:
        raise UserError(f"{path}: no generator.* keys (the mapper): not an ISS stage-1 checkpoint")
    if not parts["decoder"]:
        raise UserError(f"{path}: no decoder.* keys: not an ISS stage-1 checkpoint")
    ckpt = ISSCheckpoint(
        mapper=parts["mapper"],
        decoder=parts["decoder"],
        encoder=parts["encoder"],
        clip=parts["clip"],
        mapper_config=_iss_mapper_config(parts["mapper"], source, path),
        decoder_config=_iss_decoder_config(parts["decoder"], path),
        meta=meta,
        source=source,
        path=str(path),
    )
    if mapper is not None:
        _load_part(mapper, ckpt, "mapper")
    if decoder is not None:
        _load_part(decoder, ckpt, "decoder")
    if encoder is not None:
        if not ckpt.encoder:
            raise UserError(f"{path}: no encoder.* keys to load into the encoder")
        _load_part(encoder, ckpt, "encoder")
    return ckpt
