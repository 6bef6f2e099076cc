"""Builders: the ways to get many subnets out of few weights.

Each builder is an `elastic.model.ElasticModel` registered with `register_builder`, so
`elastic.load` can rebuild it from a manifest. `StitchedNet` (SN-Net) lives in
`stitched.py`, with its stitching layer (`stitch_layer.py`) and plan (`stitch_plan.py`).
Importing this package imports no builder; `elastic.model.builder_class` loads the one a
manifest names.
"""
