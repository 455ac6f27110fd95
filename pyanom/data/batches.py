"""Batches of images from a data set, for scoring."""

from __future__ import annotations

from typing import Iterator, Optional

import torch


def _stack_images(items: list[dict]) -> tuple[torch.Tensor, list[Optional[tuple[int, int]]]]:
    sizes = {tuple(item["image"].shape[-2:]) for item in items}
    if len(sizes) > 1:
        raise ValueError(f"images of different sizes {sorted(sizes)} in one batch (e.g. {items[0]['path']}): "
                         "set image_size, or score them one at a time (batch_size=1)")
    return torch.stack([item["image"] for item in items]), [item.get("source_hw") for item in items]


def iterate_sized(dataset, batch_size: int) -> Iterator[tuple[torch.Tensor, list[Optional[tuple[int, int]]]]]:
    """Batches (images [B, 3, H, W], each image's (height, width) as stored in its file, or None
    where the data set does not say) from an InspectionSet or ImageList, decoded in this process
    (a forked worker would deadlock in OpenMP once the parent has used it)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         num_workers=0, collate_fn=_stack_images)
    yield from loader


def iterate_images(dataset, batch_size: int) -> Iterator[torch.Tensor]:
    """Batches of images [B, 3, H, W] from an InspectionSet or ImageList (see iterate_sized)."""
    for images, _ in iterate_sized(dataset, batch_size):
        yield images
