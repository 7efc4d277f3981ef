"""Slides of any size: a tiled TIFF above `cfg.slide_threshold_pixels` is streamed from the file tile by tile,
never read whole, on threads of this process or on a Dask cluster (docs/APP.md, "Slides of any size").

One module per stage:

- ``source``: lazy reading of tiled and pyramidal TIFF / BigTIFF / OME-TIFF through tifffile's zarr view;
- ``tissue``: glass versus tissue on the overview, and which tiles to segment;
- ``tiles``: one tile, read → normalise → predict → post-process → the cells it owns (the Dask task);
- ``schedule``: the tiles as a Dask graph (threads, a local cluster, or a running scheduler);
- ``record``: the progress record and the tiles' results beside the output, for resuming a killed run;
- ``store``: global ids and the label image written band by band as a tiled BigTIFF;
- ``extras``: GeoJSON and measurements, streamed from the written labels;
- ``run``: one slide end to end, called by `app.pipeline.process_image`.
"""
