"""Kernels for the stitching layers: Triton on CUDA, the torch reference elsewhere."""

from .reference import stitch_linear_ref

stitch_linear = stitch_linear_ref

__all__ = ["stitch_linear", "stitch_linear_ref"]
