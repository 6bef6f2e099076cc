"""The INFaaS-style baseline: the anchors as separate timm models, one picked per request.

INFaaS (ATC'21) serves a set of independently trained model variants and picks one per
request to meet its SLO; it has no stitched subnets in between. `AnchorVariants` gives the
runtime exactly that: each anchor deep-copied out of a `StitchedNet` into its own timm
model, with the anchor's measured accuracy, so the same scheduler can choose among them.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from elastic.builders.stitched import StitchedNet
from elastic.model import ElasticModel
from elastic.subnet import Subnet


class AnchorVariants(ElasticModel):
    """Separate timm models (no shared weights, no stitches) behind the `ElasticModel` contract."""

    builder = "AnchorVariants"

    def __init__(self, net: StitchedNet):
        super().__init__()
        anchors = [s for s in net.subnets() if s.kind == "anchor"]
        self.models = nn.ModuleList(copy.deepcopy(net.family[s.id].model) for s in anchors)
        self._table = [Subnet(i, "anchor", s.description, s.flops, s.params) for i, s in enumerate(anchors)]
        self._input_size = net.input_size()
        self.set_accuracies({i: s.accuracy for i, s in enumerate(anchors)})

    def _build_subnets(self) -> list[Subnet]:
        return list(self._table)

    def input_size(self) -> tuple[int, int, int]:
        return self._input_size

    def forward(self, x: torch.Tensor, subnet: int | Subnet = 0, *, check: bool = True) -> torch.Tensor:
        sid = self.subnet(subnet).id
        if check:
            self.check_input(x)
        return self.models[sid](x)

    def config(self) -> dict[str, Any]:
        raise NotImplementedError("a benchmark baseline; not saved")
