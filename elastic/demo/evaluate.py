"""Top-1 accuracy of every subnet of an elastic model on a labelled test set.

SN-Net (Pan et al., CVPR 2023) reports each stitched subnet's ImageNet accuracy next to its
FLOPs; here every subnet is evaluated on in-memory images (batched, eval mode, no_grad) and
the result stored with `ElasticModel.set_accuracies`, so it lands in the saved manifest.

For a `StitchedNet` the subnets share computation: every stitched path starting in anchor
`a` after block `i` runs exactly anchor `a`'s stem and blocks [0 : i+1]. `evaluate_subnets`
therefore runs each anchor once per batch, keeps its activations after every block, and
runs only the stitch and the back part of each path — the same arithmetic as
`model(x, subnet)`, in roughly half the time.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from tqdm.auto import tqdm

from elastic.model import ElasticModel

log = logging.getLogger(__name__)


@torch.no_grad()
def accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, subnet: int | None = None, batch_size: int = 1000
) -> float:
    """Top-1 accuracy of a classifier (or of one subnet of an elastic model), in [0, 1].

    Shape:
        images: (N, C, H, W), labels: (N,)
    """
    was_training = model.training
    model.eval()
    try:
        correct = 0
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size]
            logits = model(x) if subnet is None else model(x, subnet)
            correct += int((logits.argmax(-1) == labels[start : start + batch_size]).sum())
        return correct / images.shape[0]
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_subnets(
    model: ElasticModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 1000,
    progress: bool = False,
    store: bool = True,
) -> dict[int, float]:
    """Top-1 accuracy of every subnet; stored on the model with `set_accuracies` if `store`.

    Args:
        model: any `ElasticModel`; a `StitchedNet` shares each anchor's front computation
            between its paths.
        images, labels: the evaluation set, on the model's device.
        batch_size: images per forward.
        progress: tqdm bar over batches.
        store: record the accuracies on the model (and so in its manifest on save).

    Returns:
        {subnet id: accuracy in [0, 1]}.

    Shape:
        images: (N, C, H, W), labels: (N,)
    """
    from elastic.builders.stitched import StitchedNet

    was_training = model.training
    model.eval()
    ids = [s.id for s in model.subnets()]
    correct = dict.fromkeys(ids, 0)
    try:
        batches = range(0, images.shape[0], batch_size)
        for start in tqdm(batches, desc="evaluate subnets", unit="batch", disable=not progress, leave=False):
            x = images[start : start + batch_size]
            y = labels[start : start + batch_size]
            if isinstance(model, StitchedNet):
                logits = _stitched_logits(model, x)
            else:
                logits = {sid: model(x, sid) for sid in ids}
            for sid, out in logits.items():
                correct[sid] += int((out.argmax(-1) == y).sum())
    finally:
        model.train(was_training)
    result = {sid: correct[sid] / images.shape[0] for sid in ids}
    if store:
        model.set_accuracies(result)
    log.info(
        "evaluated %d subnets on %d images: accuracy %.4f..%.4f",
        len(ids),
        images.shape[0],
        min(result.values()),
        max(result.values()),
    )
    return result


def _stitched_logits(model, x: torch.Tensor) -> dict[int, torch.Tensor]:
    """Logits of every subnet of a StitchedNet, sharing each anchor's front part."""
    model.check_input(x)
    family = model.family
    acts = []  # acts[a][i]: anchor a's output after block i
    logits = {}
    for a, anchor in enumerate(family):
        h, outs = anchor.stem(x), []
        for blk in anchor.blocks:
            h = blk(h)
            outs.append(h)
        acts.append(outs)
        logits[a] = anchor.head(h)
    for sid, path in enumerate(model.paths):
        if path is None:
            continue
        h = model.stitches[path.layers[0]](acts[path.front][path.front_block])
        logits[sid] = model.forward_path(h, path, start=1)
    return logits
