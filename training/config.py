"""Every tunable constant of training, named once, and the preset TOML files that set them.

A `TrainConfig` is a tree of frozen dataclasses, one per stage (data, targets, augmentation, losses, Mean
Teacher, optimiser, schedule, validation, runtime). Presets in ``training/presets/<name>.toml`` override the
defaults section by section; unknown keys are refused so a typo never trains silently with a default. A preset
may name another as its ``base`` (a bundled name, or a ``.toml`` file beside it) and set only what differs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import tomllib

from app.config import InferenceConfig
from training.model import ModelConfig

PRESET_DIR = Path(__file__).resolve().parent / "presets"
# Bounds of the per-image base scale of `augment.diameter` (an image whose objects are 8 px across is not
# enlarged beyond 4x, one with 200 px cells not shrunk below 0.25x).
DIAMETER_SCALE_RANGE = (0.25, 4.0)


@dataclass(frozen=True)
class DataConfig:
    """Which images train, which validate, and where preprocessed arrays are cached."""

    # Labelled data folders in the challenge layout, each optionally with unlabeled/; `--data` adds to them.
    sources: tuple[str, ...] = ()
    # Sampling weight of each source in `sources` order (a source's images share its weight equally);
    # () draws every labelled image equally often, whatever its source.
    weights: tuple[float, ...] = ()
    # Folders of unlabelled images (any depth) for the Mean Teacher stream, each drawn with weight 1.
    unlabelled_dirs: tuple[str, ...] = ()
    # Labelled training images also feed the unlabelled stream (their labels unused there).
    labelled_as_unlabelled: bool = False
    # Validation images: a folder in the challenge layout (images/ + labels/), relative to the data folder;
    # "" holds out `val_fraction` of the labelled images instead, chosen by `seed`.
    val_dir: str = ""
    val_fraction: float = 0.1
    # Keep labels for only this fraction of the (non-validation) labelled images, chosen by `seed`; the rest
    # join the unlabelled pool as images. 1.0 keeps every label.
    labelled_fraction: float = 1.0
    # Seed of the validation split and the labelled fraction (not of augmentation; see RuntimeConfig.seed).
    seed: int = 0
    # Where normalised images and targets are cached as .npy files; "" means RUN_DIR/cache.
    cache_dir: str = ""
    # Images above this many pixels are skipped with a message (the app's own limit by default).
    max_pixels: int = InferenceConfig().max_pixels
    # Each labelled image is drawn this many times per epoch (lengthens epochs on tiny datasets).
    repeats: int = 1
    # DataLoader worker processes per rank; 0 loads in the training process.
    num_workers: int = 0


@dataclass(frozen=True)
class TargetConfig:
    """Per-instance target maps (paper section 2.2.1); see docs/TRAINING.md for the exact recipe."""

    # Cell heatmap: pixels farther than r_i * cell_core from the instance boundary are set to 1.
    cell_core: float = 0.2
    # Gaussian kernel sizes as fractions of r_i (the instance's largest inner distance).
    cell_kernel: float = 0.2
    boundary_kernel: float = 0.1
    # Width, in pixels, of the disk that dilates the inner boundary for class 2 (CHALLENGE.md: 1-pixel disk).
    boundary_dilation: int = 1
    # The same for the boundary heatmap. The paper sets "only the boundary pixels" to 1 there; 0 keeps the
    # 1-px inner boundary, which leaves small cells a seed above T_seed after map = cell - boundary (on the
    # held-out synthetic set, perfect target maps post-process to F1 0.873 with 0 and 0.823 with 1).
    heatmap_boundary_dilation: int = 0


@dataclass(frozen=True)
class AugmentConfig:
    """Random views of labelled (strong) and unlabelled (weak and strong) crops."""

    crop: int = 512
    # Scale drawn log-uniformly from [scale_min, scale_max]. With `diameter` > 0 it multiplies a per-image base
    # scale that brings the image's median labelled object diameter to `diameter` px (clipped to
    # DIAMETER_SCALE_RANGE), the size at which the app's adaptive mode shows objects to the model, for a share
    # `diameter_p` of the crops (the others keep native sizes, so small objects stay familiar: the diameter
    # estimate's finer looks see them small); 0 jitters every crop around its image's native size (MT2).
    scale_min: float = 0.5
    scale_max: float = 2.0
    diameter: float = 0.0
    diameter_p: float = 1.0
    flips: bool = True
    rot90: bool = True
    # Colour jitter: brightness and contrast factors drawn from [1 - x, 1 + x]; no hue or saturation.
    brightness: float = 0.3
    contrast: float = 0.3
    # Gamma drawn log-uniformly from [1 / (1 + x), 1 + x]; 0 disables.
    gamma: float = 0.0
    # Gaussian blur with probability blur_p, sigma uniform in [0, blur_sigma] px.
    blur_p: float = 0.0
    blur_sigma: float = 1.5
    # Gaussian noise with probability noise_p, standard deviation uniform in [0, noise_std] (image in [0, 1]).
    noise_p: float = 0.0
    noise_std: float = 0.06
    # With probability quantize_p the crop is re-quantised to between quantize_levels and 256 grey levels
    # (a dim 8-bit or a coarsely digitised 16-bit image after normalisation).
    quantize_p: float = 0.0
    quantize_levels: int = 24
    # With probability channel_p the signal of a single-signal image (grey, or one non-empty channel) moves to a
    # random non-empty set of channels: fluorescence arrives in any channel. Colour images are left alone.
    channel_p: float = 0.0
    # Stain variation of colour (stained) crops, after Tellez et al. 2019: with probability stain_p the image goes
    # to haematoxylin-eosin-DAB optical densities (skimage's rgb2hed), each channel is scaled by a factor from
    # [1 - stain_scale, 1 + stain_scale] and shifted by [-stain_shift, stain_shift], then back to RGB. Grey and
    # single-signal crops are never touched.
    stain_p: float = 0.0
    stain_scale: float = 0.05
    stain_shift: float = 0.05
    # CutMix: probability that a crop gets a box pasted from another crop of the same batch.
    cutmix_p: float = 0.5


@dataclass(frozen=True)
class LossConfig:
    """L = CE + Dice (cls) + sum over cell, boundary of (1 - SSIM) + mse_weight * MSE, + consistency."""

    mse_weight: float = 10.0
    ssim_window: int = 11
    dice_smooth: float = 1.0
    # Weight of the consistency term on unlabelled crops (the paper adds it unweighted).
    consistency_weight: float = 1.0


@dataclass(frozen=True)
class TeacherConfig:
    """Mean Teacher: supervised warm-up, then an EMA teacher gives consistency targets."""

    # False trains supervised-only (the teacher never starts; unlabelled images are not read).
    semi_supervised: bool = True
    # Epochs of supervised warm-up; the teacher is copied from the student when they end.
    warmup_epochs: int = 100
    ema_decay: float = 0.995
    # Floating buffers (BatchNorm running mean and variance) are averaged like the parameters, so the teacher's
    # normalisation matches its averaged weights; False copies them from the student at every step.
    ema_buffers: bool = True


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a lower encoder learning rate, cosine-annealed after every step."""

    lr: float = 1e-3
    encoder_lr: float = 1e-4
    weight_decay: float = 1e-2
    # The learning rate rises linearly from lr / warmup_steps to lr over the first warmup_steps steps, then
    # follows one cosine to min_lr_ratio * lr at the run's last planned step.
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    # Gradient norm clip; 0 disables.
    grad_clip: float = 0.0


@dataclass(frozen=True)
class ScheduleConfig:
    """Budget: epochs of the labelled set, optionally capped by a number of optimiser steps."""

    epochs: int = 500
    # Stop after this many optimiser steps (0: no cap). The cosine schedule spans the capped length.
    max_steps: int = 0
    # Crops per optimiser step on each rank.
    batch_size: int = 24
    unlabelled_batch_size: int = 24


@dataclass(frozen=True)
class ValidationConfig:
    """Validation F1 through the app's own sliding windows, post-processing and metric."""

    every_epochs: int = 10
    scales: tuple[float, ...] = (1.0,)
    # Sliding window and stride in pixels; 0 uses the training crop (window) and half of it (stride).
    window: int = 0
    stride: int = 0
    batch_size: int = 4
    # Validate at most this many images (0: all).
    max_images: int = 0


@dataclass(frozen=True)
class RuntimeConfig:
    """Device, threads, precision, logging and the augmentation seed."""

    device: str = "auto"  # "auto" (CUDA when available), "cuda" or "cpu"
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    amp: bool = True  # float16 mixed precision, used on CUDA only
    # bfloat16 autocast of the forward passes on the CPU (losses stay float32; pays on CPUs with AVX512-BF16).
    cpu_bf16: bool = False
    # Activations in channels-last (NHWC) memory order: faster convolutions on CPUs with oneDNN.
    channels_last: bool = False
    # A checkpoint (last.pt) at least every this many minutes, in the middle of an epoch if need be; the end of
    # every epoch writes one too.
    checkpoint_minutes: float = 10.0
    seed: int = 0  # augmentation, sampling and initialisation
    progress: bool = True  # tqdm bar with the loss terms
    tensorboard: bool = True  # also log to TensorBoard when it is installed


@dataclass(frozen=True)
class TrainConfig:
    """The whole training configuration; stored as a plain dict in every checkpoint."""

    preset: str = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    targets: TargetConfig = field(default_factory=TargetConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        problems = check(self)
        if problems:
            raise ConfigError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return _build(cls, data, "config")


class ConfigError(ValueError):
    """A preset or override names an unknown key or has a value of the wrong type or range."""


def check(cfg: "TrainConfig") -> list[str]:
    """Values that would fail later, found now: sizes the network cannot take, empty ranges."""
    problems = []
    multiple = 2 ** cfg.model.encoder_depth
    for name, value in (("augment.crop", cfg.augment.crop), ("validation.window", cfg.validation.window)):
        if value % multiple:
            problems.append(f"{name} = {value} is not a multiple of {multiple}")
    if cfg.augment.crop <= 0:
        problems.append("augment.crop must be positive")
    if not 0 < cfg.augment.scale_min <= cfg.augment.scale_max:
        problems.append("augment needs 0 < scale_min <= scale_max")
    if cfg.augment.diameter < 0:
        problems.append("augment.diameter must be >= 0 (0: native sizes)")
    if not 0.0 <= cfg.data.val_fraction < 1.0:
        problems.append("data.val_fraction must be in [0, 1)")
    if not 0.0 < cfg.data.labelled_fraction <= 1.0:
        problems.append("data.labelled_fraction must be in (0, 1]")
    if cfg.schedule.batch_size < 1 or cfg.schedule.unlabelled_batch_size < 1 or cfg.data.repeats < 1:
        problems.append("schedule batch sizes and data.repeats must be at least 1")
    if not 0.0 <= cfg.teacher.ema_decay <= 1.0:
        problems.append("teacher.ema_decay must be in [0, 1]")
    if cfg.data.weights and (min(cfg.data.weights) < 0 or sum(cfg.data.weights) <= 0):
        problems.append("data.weights must be non-negative and not all zero")
    if cfg.data.weights and cfg.data.sources and len(cfg.data.weights) != len(cfg.data.sources):
        problems.append(f"data.weights has {len(cfg.data.weights)} value(s) for {len(cfg.data.sources)} data.sources")
    if cfg.optim.warmup_steps < 0 or cfg.runtime.checkpoint_minutes <= 0:
        problems.append("optim.warmup_steps must be >= 0 and runtime.checkpoint_minutes > 0")
    for name in ("blur_p", "noise_p", "quantize_p", "channel_p", "diameter_p", "stain_p"):
        if not 0.0 <= getattr(cfg.augment, name) <= 1.0:
            problems.append(f"augment.{name} must be in [0, 1]")
    if not 2 <= cfg.augment.quantize_levels <= 256:
        problems.append("augment.quantize_levels must be in [2, 256]")
    if not cfg.validation.scales:
        problems.append("validation.scales needs at least one scale")
    return problems


def _coerce(value: Any, hint: Any, where: str) -> Any:
    text = str(hint)
    if text.startswith("tuple"):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if "str" in text:
            if not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
            return tuple(value)
        item = float if "float" in text else int
        return tuple(item(v) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    raise ConfigError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints[name]
        if isinstance(hint, type) and is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{name}: expected a table")
            values[name] = _build(hint, value, f"{where}.{name}")
        else:
            values[name] = _coerce(value, hint, f"{where}.{name}")
    return cls(**values)


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _nest(overrides: dict[str, Any]) -> dict[str, Any]:
    """{"schedule.epochs": 3} or {"schedule": {"epochs": 3}} -> nested dict."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if isinstance(value, dict):
            node[parts[-1]] = _merge(node.get(parts[-1], {}), _nest(value))
        else:
            node[parts[-1]] = value
    return nested


def preset_path(path_or_name: str | Path) -> Path:
    """A TOML path as given, or the bundled preset of that name (``cpu``, ``ship``, ``paper``)."""
    path = Path(path_or_name)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"{path.name}: no such config file")
        return path
    bundled = PRESET_DIR / f"{path_or_name}.toml"
    if not bundled.is_file():
        names = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.toml")))
        raise ConfigError(f"{path_or_name}: not a config file or preset name (presets: {names})")
    return bundled


def _read_preset(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A preset file's table merged over its ``base`` preset's (a name or path), recursively."""
    if path.resolve() in seen:
        chain = " -> ".join(p.name for p in (*seen, path.resolve()))
        raise ConfigError(f"{path.name}: presets inherit in a circle ({chain})")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path.name}: not valid TOML ({error})") from None
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path.name}: base must be a preset name or a path, not {base!r}")
    # A file name is read beside this file; a bare word is a bundled preset.
    parent_path = preset_path(path.parent / base if base.endswith(".toml") else base)
    parent = _read_preset(parent_path, (*seen, path.resolve()))
    parent.pop("preset", None)
    return _merge(parent, data)


def load_config(path_or_preset_name: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the preset file (over its ``base`` preset, if it names one), then `overrides`."""
    path = preset_path(path_or_preset_name)
    data = _read_preset(path)
    data.setdefault("preset", path.stem)
    data = _merge(data, _nest(overrides or {}))
    try:
        return _build(TrainConfig, data, path.name)
    except TypeError as error:  # a required field missing cannot happen; wrong nesting can
        raise ConfigError(f"{path.name}: {error}") from None


def with_overrides(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """Copy of `cfg` with dotted-key overrides applied and type-checked."""
    return TrainConfig.from_dict(_merge(cfg.to_dict(), _nest(overrides)))


def parse_override(text: str) -> tuple[str, Any]:
    """``section.key=value`` from the command line; the value is read as TOML (a bare word is a string)."""
    if "=" not in text:
        raise ConfigError(f"{text}: overrides are written section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def config_fields(cls: type = TrainConfig, prefix: str = "") -> list[tuple[str, Any]]:
    """Every leaf field as (dotted name, default), for documentation and tests."""
    rows: list[tuple[str, Any]] = []
    hints = get_type_hints(cls)
    defaults = cls()
    for f in fields(cls):
        value = getattr(defaults, f.name)
        if is_dataclass(hints[f.name]):
            rows.extend(config_fields(hints[f.name], f"{prefix}{f.name}."))
        else:
            rows.append((f"{prefix}{f.name}", value))
    return rows


__all__ = [
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "LossConfig",
    "OptimConfig",
    "RuntimeConfig",
    "ScheduleConfig",
    "TargetConfig",
    "TeacherConfig",
    "TrainConfig",
    "ValidationConfig",
    "config_fields",
    "load_config",
    "parse_override",
    "preset_path",
    "with_overrides",
]
