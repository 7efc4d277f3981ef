"""Synthetic multi-modality microscopy with exact instance labels.

Four modalities in the challenge's proportions (brightfield, fluorescence, phase contrast, DIC), every input
format the app reads, and a challenge-layout writer. Stages, one module each:

- ``params``: the generator's constants, one dataclass per modality;
- ``shapes``: single-cell masks (round, irregular, elongated, rods, bent, lobed);
- ``layout``: placement into a label map with occlusion resolved, so labels are exact;
- ``fields``: smooth random fields and per-cell distance profiles shared by the renderers;
- ``modalities``: one scene builder and renderer per modality (clean, linear intensities);
- ``noise``: the microscope: blur, uneven illumination, Poisson and Gaussian noise;
- ``formats``: storage formats (extension, bit depth, channel layout) and quantisation;
- ``generate``: one sample from (seed, split, index), and whole data sets written to disk.
"""

from training.synth.generate import Sample, generate_dataset, make_sample
from training.synth.params import MODALITY_NAMES, SynthConfig

__all__ = ["MODALITY_NAMES", "Sample", "SynthConfig", "generate_dataset", "make_sample"]
