"""Every constant of the synthetic-data generator, one frozen dataclass per modality.

Ranges are (low, high) pairs drawn once per image; per-cell variation is drawn inside the renderers from the
per-image values. Proportions follow the challenge's labelled training set (brightfield 300, fluorescence 300,
phase contrast 200, DIC 200 of 1000 images).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from training.synth.formats import StorageFormat

Range = tuple[float, float]
Weights = tuple[tuple[str, float], ...]
FormatWeights = tuple[tuple[StorageFormat, float], ...]

SHAPE_KINDS = ("round", "irregular", "ellipse", "rod", "bent", "lobed")
LAYOUT_KINDS = ("sparse", "clustered", "packed", "monolayer")

_GRAY_FORMATS: FormatWeights = (
    (StorageFormat(".png", "uint8", "gray"), 3.0),
    (StorageFormat(".png", "uint16", "gray"), 1.0),
    (StorageFormat(".tif", "uint16", "gray"), 2.0),
    (StorageFormat(".tiff", "uint8", "gray"), 1.0),
    (StorageFormat(".bmp", "uint8", "gray"), 1.0),
    (StorageFormat(".png", "uint8", "rgb"), 1.5),
    (StorageFormat(".jpg", "uint8", "gray"), 0.5),
    (StorageFormat(".tif", "uint8", "chw"), 0.5),
)


@dataclass(frozen=True)
class ModalityParams:
    """What every modality draws per image: cells, layout, optics, noise and storage."""

    name: str = ""
    weight: float = 1.0  # share of generated images
    diameter: Range = (12.0, 60.0)  # typical cell diameter in px, drawn log-uniformly per image
    diameter_spread: float = 0.25  # relative spread (log-normal sigma) of diameters within an image
    shapes: Weights = (("round", 1.0),)
    layouts: Weights = (("sparse", 1.0),)
    coverage: Range = (0.15, 0.45)  # fraction of the image the labelled cells aim to cover
    touch_overlap: Range = (0.0, 0.15)  # allowed fraction of a new cell hidden behind earlier ones
    blur: Range = (0.5, 1.5)  # Gaussian PSF sigma in px
    photons: Range = (200.0, 2000.0)  # photons at full scale: Poisson noise
    read_noise: Range = (0.002, 0.01)  # Gaussian noise, fraction of full scale
    vignetting: Range = (0.0, 0.25)  # relative darkening at the corners
    gradient: Range = (0.0, 0.2)  # relative linear illumination change across the image
    uint8_gain: Range = (1.0, 1.0)  # fraction of the 8-bit range that 1.0 maps to
    formats: FormatWeights = _GRAY_FORMATS


@dataclass(frozen=True)
class FluorescenceParams(ModalityParams):
    """Dark background, nuclei (blue) and/or cytoplasm (green), red channel empty."""

    name: str = "fluorescence"
    weight: float = 300.0
    diameter: Range = (10.0, 70.0)
    shapes: Weights = (("round", 4.0), ("irregular", 2.0), ("ellipse", 2.0), ("lobed", 0.5), ("bent", 0.3))
    layouts: Weights = (("sparse", 1.0), ("clustered", 2.0), ("packed", 2.0), ("monolayer", 0.7))
    coverage: Range = (0.1, 0.55)
    touch_overlap: Range = (0.02, 0.2)
    blur: Range = (0.6, 2.2)
    photons: Range = (60.0, 1500.0)
    read_noise: Range = (0.003, 0.02)
    vignetting: Range = (0.0, 0.35)
    gradient: Range = (0.0, 0.3)
    uint8_gain: Range = (0.35, 1.0)
    # Styles: nuclei in one channel, whole cells in one channel, or cytoplasm (green) + nucleus (blue).
    styles: Weights = (("nuclei", 3.0), ("cytoplasm", 1.0), ("two_channel", 1.5))
    brightness_sigma: Range = (0.2, 0.5)  # log-normal spread of cell brightness
    min_brightness: float = 0.25  # dimmest labelled cell relative to the median cell
    texture: Range = (0.05, 0.35)  # relative amplitude of intracellular texture
    edge_ramp: Range = (0.8, 4.0)  # px over which a cell's brightness rises from its boundary
    background: Range = (0.0, 0.06)  # background level relative to a median cell
    haze: Range = (0.0, 0.15)  # out-of-focus glow, fraction of the blurred cell image
    bright_fraction: Range = (0.0, 0.05)  # share of very bright small (mitotic) cells
    debris: Range = (0.0, 4e-5)  # unlabelled specks per px^2
    formats: FormatWeights = (
        (StorageFormat(".png", "uint8", "rgb"), 3.0),
        (StorageFormat(".tif", "uint16", "rgb"), 3.0),
        (StorageFormat(".tiff", "uint8", "rgb"), 1.0),
        (StorageFormat(".tif", "uint16", "chw"), 1.0),
        (StorageFormat(".png", "uint16", "rgb"), 0.7),
        (StorageFormat(".bmp", "uint8", "rgb"), 0.7),
        # One-channel images stored as plain grayscale (no empty red channel to detect them by).
        (StorageFormat(".tif", "uint16", "gray"), 0.6),
        (StorageFormat(".png", "uint8", "gray"), 0.4),
    )


@dataclass(frozen=True)
class BrightfieldParams(ModalityParams):
    """Stained (labelled) cells on a light background among unstained look-alikes (unlabelled)."""

    name: str = "brightfield"
    weight: float = 300.0
    diameter: Range = (14.0, 80.0)
    shapes: Weights = (("round", 3.0), ("irregular", 2.0), ("ellipse", 1.5), ("lobed", 1.0), ("bent", 0.3))
    layouts: Weights = (("sparse", 2.0), ("clustered", 2.0), ("packed", 1.5))
    coverage: Range = (0.08, 0.4)
    touch_overlap: Range = (0.0, 0.15)
    blur: Range = (0.5, 1.6)
    photons: Range = (800.0, 8000.0)
    read_noise: Range = (0.002, 0.008)
    vignetting: Range = (0.0, 0.3)
    gradient: Range = (0.0, 0.15)
    # Styles: blood smear (pale red cells unlabelled), tissue (eosin stroma, pale nuclei unlabelled),
    # stained culture (unstained cells unlabelled).
    styles: Weights = (("smear", 1.0), ("tissue", 1.2), ("culture", 1.0))
    smear_diameter: Range = (22.0, 60.0)  # white cells of blood smears
    stained_od: Range = (0.5, 1.2)  # optical density of a labelled cell's stain at its darkest
    unstained_od: Range = (0.03, 0.1)  # optical density of an unstained look-alike
    lookalike_ratio: Range = (0.3, 3.0)  # unlabelled look-alikes per labelled cell
    texture: Range = (0.1, 0.4)
    edge_ramp: Range = (0.8, 3.0)
    background_od: Range = (0.0, 0.08)  # tint of the empty slide
    stroma_od: Range = (0.06, 0.28)  # eosin-stained tissue between nuclei (tissue style)
    formats: FormatWeights = (
        (StorageFormat(".png", "uint8", "rgb"), 4.0),
        (StorageFormat(".jpg", "uint8", "rgb"), 1.0),
        (StorageFormat(".bmp", "uint8", "rgb"), 1.0),
        (StorageFormat(".tif", "uint8", "rgb"), 2.0),
        (StorageFormat(".tiff", "uint16", "rgb"), 0.5),
        (StorageFormat(".tif", "uint8", "chw"), 0.5),
    )


@dataclass(frozen=True)
class PhaseParams(ModalityParams):
    """Grey cells with bright halos: adherent cells, dense monolayers and rod-shaped bacteria."""

    name: str = "phase"
    weight: float = 200.0
    diameter: Range = (16.0, 100.0)
    shapes: Weights = (("irregular", 3.0), ("round", 1.5), ("ellipse", 2.0), ("lobed", 1.0), ("bent", 0.5))
    layouts: Weights = (("sparse", 1.0), ("clustered", 1.5), ("packed", 1.5), ("monolayer", 1.5))
    coverage: Range = (0.15, 0.7)
    touch_overlap: Range = (0.0, 0.2)
    blur: Range = (0.5, 1.5)
    photons: Range = (300.0, 3000.0)
    read_noise: Range = (0.003, 0.012)
    styles: Weights = (("adherent", 3.0), ("bacteria", 1.2))
    bacteria_length: Range = (10.0, 36.0)  # rod length in px
    bacteria_aspect: Range = (2.2, 5.0)  # rod length / width
    background: Range = (0.35, 0.6)  # grey level of the empty field
    phase_depth: Range = (0.25, 0.6)  # darkening of a cell interior (positive phase contrast)
    halo_sigma: Range = (2.0, 7.0)  # px: width of the halo and of the shade-off
    texture: Range = (0.1, 0.4)
    edge_ramp: Range = (0.6, 2.5)
    bright_fraction: Range = (0.0, 0.08)  # rounded (mitotic) cells that appear bright
    debris: Range = (0.0, 3e-5)
    uint8_gain: Range = (0.7, 1.0)


@dataclass(frozen=True)
class DicParams(ModalityParams):
    """Relief shading: the directional derivative of each cell's thickness on a grey background."""

    name: str = "dic"
    weight: float = 200.0
    diameter: Range = (20.0, 100.0)
    shapes: Weights = (("irregular", 3.0), ("round", 2.0), ("ellipse", 1.5), ("lobed", 1.0), ("bent", 0.3))
    layouts: Weights = (("sparse", 1.5), ("clustered", 1.5), ("packed", 1.0), ("monolayer", 1.0))
    coverage: Range = (0.12, 0.6)
    touch_overlap: Range = (0.0, 0.15)
    blur: Range = (0.6, 1.6)
    photons: Range = (300.0, 3000.0)
    read_noise: Range = (0.003, 0.012)
    background: Range = (0.35, 0.6)
    relief: Range = (0.15, 0.45)  # amplitude of the shading at a cell's steepest slope
    offset_contrast: Range = (0.0, 0.15)  # share of plain thickness contrast (bias retardation)
    shear: Range = (0.8, 2.0)  # px: half shear distance of the derivative
    texture: Range = (0.05, 0.3)
    edge_ramp: Range = (1.0, 4.0)
    uint8_gain: Range = (0.7, 1.0)


@dataclass(frozen=True)
class SynthConfig:
    """One data set: image sizes and which modalities to draw."""

    min_size: int = 256
    max_size: int = 768
    square_fraction: float = 0.5  # share of square images; the rest draw height and width independently
    modalities: tuple[ModalityParams, ...] = field(
        default_factory=lambda: (BrightfieldParams(), FluorescenceParams(), PhaseParams(), DicParams())
    )

    def select(self, names: list[str] | tuple[str, ...]) -> "SynthConfig":
        """Copy keeping only the named modalities (order and weights kept)."""
        unknown = set(names) - set(MODALITY_NAMES)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}; choose from {list(MODALITY_NAMES)}")
        kept = tuple(m for m in self.modalities if m.name in names)
        return SynthConfig(self.min_size, self.max_size, self.square_fraction, kept)


MODALITY_NAMES = ("brightfield", "fluorescence", "phase", "dic")
