"""random_dihedral: every symmetry of the square occurs, images and masks move together, seeded;
random_hflip: each sample as it was or mirrored, about half of each."""

import pytest
import torch

from pyanom.augment import DIHEDRAL, random_dihedral, random_hflip


def symmetries(x: torch.Tensor) -> list[torch.Tensor]:
    """The eight images of x [C, S, S] under the square's symmetries, built independently."""
    out = []
    for k in range(4):
        r = torch.rot90(x, k, dims=(-2, -1))
        out += [r, r.flip(-1)]
    return out


def test_each_sample_gets_one_of_the_eight_symmetries_and_all_occur():
    image = torch.arange(16.0).reshape(1, 4, 4)  # no symmetry of its own: the eight images differ
    batch = image.expand(400, 1, 4, 4)
    (out,) = random_dihedral(torch.Generator().manual_seed(0), batch)
    candidates = torch.stack(symmetries(image))
    assert len(torch.unique(candidates.flatten(1), dim=0)) == DIHEDRAL
    matches = (out[:, None] == candidates[None]).flatten(2).all(2)  # [400, 8]
    assert torch.equal(matches.sum(1), torch.ones(400, dtype=torch.long))
    counts = matches.sum(0)
    assert bool((counts > 20).all()), counts  # 50 expected each


def test_images_and_masks_move_together():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(32, 3, 8, 8)
    masks = (images[:, :1] > 0.5).to(torch.uint8)
    out_images, out_masks = random_dihedral(g, images, masks)
    assert out_masks.dtype == torch.uint8
    assert torch.equal(out_masks, (out_images[:, :1] > 0.5).to(torch.uint8))
    assert not torch.equal(out_images, images)


def test_seeded_and_leaves_the_input_alone():
    images = torch.rand(16, 3, 8, 8)
    kept = images.clone()
    a = random_dihedral(torch.Generator().manual_seed(3), images)[0]
    b = random_dihedral(torch.Generator().manual_seed(3), images)[0]
    assert torch.equal(a, b) and torch.equal(images, kept)


@pytest.mark.parametrize("shapes", [[(2, 3, 8, 6)], [(2, 3, 8, 8), (3, 1, 8, 8)], [(3, 8, 8)]])
def test_bad_shapes_are_named(shapes):
    with pytest.raises(ValueError, match="square"):
        random_dihedral(torch.Generator(), *[torch.zeros(s) for s in shapes])


def test_hflip_mirrors_about_half_of_the_samples():
    batch = torch.rand(400, 3, 5, 7)
    out = random_hflip(torch.Generator().manual_seed(0), batch)
    kept = (out == batch).flatten(1).all(1)
    mirrored = (out == batch.flip(-1)).flatten(1).all(1)
    assert bool((kept ^ mirrored).all()) and 150 < int(mirrored.sum()) < 250
