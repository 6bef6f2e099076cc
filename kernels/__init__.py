"""Kernels for the stitching layers: Triton on CUDA, the torch reference elsewhere.

`stitch_linear` and `stitch_linear_layernorm` choose between the Triton custom ops
(`torch.ops.elastic.*`, see `ops.py`) and the references (`reference.py`) in one place,
`dispatch.py`; env ELASTIC_KERNELS=torch forces the references, ELASTIC_KERNELS=triton the
kernel. Under the default "auto" a plain linear stitch (no LoRA) runs F.linear (cuBLAS), which
was faster than the kernel on every SN-Net shape measured on an H200 (issue 16).
"""

from .dispatch import stitch_linear, stitch_linear_layernorm, use_triton
from .reference import stitch_linear_layernorm_ref, stitch_linear_ref

__all__ = [
    "stitch_linear",
    "stitch_linear_layernorm",
    "stitch_linear_layernorm_ref",
    "stitch_linear_ref",
    "use_triton",
]
