"""A kit for training MT2 on a CUDA machine without network, in one command of a few minutes.

`python -m training.gpu_kit pack` (what `make gpu-kit` runs) writes one folder holding everything such a run
needs besides the repository: the training pool packed compactly (normalised uint8 images and uint16 labels,
the synthetic set as the recipe that regenerates it), the wheels of the packages a stock PyTorch machine lacks,
and a manifest. On the CUDA machine, `python -m training.gpu_kit run` trains for a given number of minutes with
the data and augmentation on the GPU and writes a checkpoint that `python -m training export` accepts;
`python -m training.gpu_kit check` times the app there. `scripts/gpu_run.sh` is the one command that does
both. Stages, one module each:

- ``layout``: the kit's file names, size limits and pinned wheels;
- ``store``: one image and its labels in and out of a source archive (lossless);
- ``synthetic``: a synthetic folder as its generator recipe, checked against the files and regenerated;
- ``pack``: the kit built from data folders;
- ``env``: the wheels installed and missing optional packages stood in for, before anything imports them;
- ``pool``: the kit read back, targets made, arrays moved to the device;
- ``gpu_augment``: batched random views on the device (the CPU recipe of `training.augment`);
- ``run``: the timed training loop, its learning curve and checkpoint;
- ``transport``: large result files split into parts that fit a size limit, and joined again;
- ``infer_check``: fp16 parity and per-image times of the app on the GPU.
"""
