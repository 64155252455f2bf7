"""Correspondence analysis (paper Section 5.3, Table 1): does occluding the same object part in
different images change a layer's features in the same way?

For images x_1 … x_n and the same part occluded in each (x̃_i), the feature change at layer l is
ε_i = x_i^l − x̃_i^l (flattened layer outputs). The paper's score is

    Δ_l = Σ_{i≠j} H(sign ε_i, sign ε_j)

with H the Hamming distance. Here H is normalised by the feature dimension D (the fraction of the
D positions where the two sign vectors differ, sign ∈ {−1, 0, +1}) and the sum by the number of
ordered pairs n(n−1), so Δ_l ∈ [0, 1] is the mean pairwise disagreement and does not depend on n or
D:  Δ_l = 1/(n(n−1)) · Σ_{i≠j} (1/D) · #{d : sign ε_i[d] ≠ sign ε_j[d]}.
Lower Δ means a more consistent change, i.e. the layer implicitly establishes a correspondence
between the parts. The control occludes random boxes of the same size (see :func:`correspondence`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deconvnet_attr.analysis.features import flat_layer_outputs
from deconvnet_attr.tables import RecordTable
from deconvnet_attr.taps import LayerSpec, display_name, resolve_layers

__all__ = [
    "FASHION_MNIST_PARTS",
    "CorrespondenceResult",
    "CorrespondenceTable",
    "Part",
    "correspondence",
    "correspondence_markdown",
    "correspondence_table",
    "hamming_delta",
    "occlude",
    "part_images",
]


def hamming_delta(signs: Tensor) -> Tensor:
    """The normalised Δ of sign vectors ``signs`` (..., n, D), values in {−1, 0, +1}.

    Returns (...): the mean over the n(n−1) ordered pairs i ≠ j of the fraction of the D positions
    where ``signs[..., i, :]`` and ``signs[..., j, :]`` differ. Needs n >= 2.
    """
    if signs.dim() < 2 or signs.shape[-2] < 2 or signs.shape[-1] == 0:
        raise ValueError(f"signs must be (..., n, D) with n >= 2, D >= 1; got {tuple(signs.shape)}")
    n, d = signs.shape[-2:]
    agree = torch.stack(
        [(signs == v).float() @ (signs == v).float().transpose(-1, -2) for v in (-1, 0, 1)]
    ).sum(0)
    disagreement = 1.0 - agree / d  # (..., n, n), zero diagonal
    return disagreement.sum((-1, -2)) / (n * (n - 1))


def occlude(images: Tensor, boxes: Tensor, fill: Sequence[float]) -> Tensor:
    """Copy of ``images`` (N, C, H, W) with ``boxes[i]`` of image i painted with ``fill`` (C,).

    ``boxes`` (N, 4) are integer pixel boxes ``(x0, y0, x1, y1)``, half-open: columns x0 … x1−1 and
    rows y0 … y1−1 (torchvision's XYXY convention).
    """
    out = images.clone()
    colour = torch.as_tensor(fill, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        out[i, :, y0:y1, x0:x1] = colour
    return out


@dataclass(frozen=True)
class CorrespondenceResult:
    """Δ per layer for one set of n images: the part and the two random controls.

    ``part`` (L,): Δ for the given boxes. ``random`` (R, L): Δ when each image gets its own random
    box of the same size (the paper's control). ``shared`` (R, L): Δ when one random box position is
    used for all n images (same location, different content — isolates the effect of spatial
    alignment on aligned data sets such as Fashion-MNIST). ``boxes`` (n, 4), ``random_boxes``
    (R, n, 4) and ``shared_boxes`` (R, n, 4) are the pixel boxes used, XYXY half-open.
    """

    layers: tuple[str, ...]
    part: Tensor
    random: Tensor
    shared: Tensor
    boxes: Tensor
    random_boxes: Tensor
    shared_boxes: Tensor


def correspondence(
    model: nn.Module,
    images: Tensor,
    boxes: Sequence[int] | Sequence[Sequence[int]] | Tensor,
    layers: Sequence[LayerSpec],
    baseline: float | Sequence[float] = 0.0,
    n_random: int = 10,
    min_changed: float = 0.5,
    rtol: float = 1e-6,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
) -> CorrespondenceResult:
    """Δ_l of occluding the same part (``boxes``) in ``images`` vs random boxes of the same size.

    Args:
        model: the network (eval mode); left unchanged (hooks removed, flags and buffers restored).
        images: (n, C, H, W), n >= 2 images showing the part.
        boxes: the part in each image, integer pixel boxes ``(x0, y0, x1, y1)`` (half-open, XYXY):
            one box (4,) for all images or one per image (n, 4), all of one size (width, height),
            non-empty and inside the image.
        layers: modules of ``model`` (or dotted names), e.g. the paper's layers 5 and 7.
        baseline: occluder colour, a float or one value per channel (Fashion-MNIST: 0, the
            background).
        n_random: random draws for each control.
        min_changed: a random box is drawn only among positions where at least this fraction of its
            pixels differs from ``baseline`` (so the occluder actually covers content: on a black
            background, an all-background box gives ε = 0 and a trivially perfect Δ).
        rtol: |ε_i[d]| <= ``rtol`` · max_d |x_i^l[d]| counts as sign 0 (float noise).
        generator: random source for the boxes (seeded ``torch.Generator``) for reproducibility.
        batch_size: images per forward pass.

    Returns:
        :class:`CorrespondenceResult`; compare ``part`` with ``random.mean(0) ± random.std(0)``.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[0] < 2:
        raise ValueError(
            f"images must be (n, C, H, W) with n >= 2, got "
            f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}"
        )
    n, channels, height, width = images.shape
    part_boxes = _check_boxes(boxes, n, height, width)
    fill = _fill(baseline, channels)
    if n_random < 1:
        raise ValueError(f"n_random must be >= 1, got {n_random}")
    if not 0.0 <= min_changed <= 1.0:
        raise ValueError(f"min_changed must be in [0, 1], got {min_changed}")
    names = [display_name(model, name) for name, _ in resolve_layers(model, layers)]

    sizes = part_boxes[:, 2:] - part_boxes[:, :2]  # (n, 2) width, height
    if not bool((sizes == sizes[0]).all()):
        raise ValueError(f"boxes must all have one size (width, height), got {sizes.tolist()}")
    colour = torch.as_tensor(fill, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    changed = (images != colour).any(1).cpu()
    random_boxes = torch.stack(
        [
            _random_boxes(changed[i : i + 1], sizes[i], n_random, min_changed, generator)[:, 0]
            for i in range(n)
        ],
        dim=1,
    )  # (R, n, 4)
    shared_boxes = _random_boxes(changed, sizes[0], n_random, min_changed, generator)

    batch = torch.cat(
        [images, occlude(images, part_boxes, fill)]
        + [occlude(images, b, fill) for b in random_boxes]
        + [occlude(images, b, fill) for b in shared_boxes]
    )
    feats, _ = flat_layer_outputs(model, batch, layers, batch_size)
    part, rand, shared = [], [], []
    for name in names:
        f = feats[name].view(2 + 2 * n_random, n, -1)
        eps = f[0] - f[1:]  # (1 + 2R, n, D)
        tol = rtol * f[0].abs().amax(1, keepdim=True)
        delta = hamming_delta(torch.sign(eps) * (eps.abs() > tol))
        part.append(delta[0])
        rand.append(delta[1 : 1 + n_random])
        shared.append(delta[1 + n_random :])
    return CorrespondenceResult(
        tuple(names),
        torch.stack(part),
        torch.stack(rand, 1),
        torch.stack(shared, 1),
        part_boxes,
        random_boxes,
        shared_boxes,
    )


@dataclass(frozen=True)
class Part:
    """An object part of one class: ``box`` is ``(x0, y0, x1, y1)`` in normalised image coordinates
    (fractions of width and height, 0 … 1), converted to pixels by rounding ``x·W``, ``y·H``."""

    name: str
    label: int
    box: tuple[float, float, float, float]

    def pixels(self, height: int, width: int) -> tuple[int, int, int, int]:
        """The pixel box (x0, y0, x1, y1), half-open, for an image of ``height`` × ``width``."""
        x0, y0, x1, y1 = self.box
        return round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height)


def _px(name: str, label: int, x0: int, y0: int, x1: int, y1: int) -> Part:
    """A part given in pixels of a 28 × 28 Fashion-MNIST image."""
    return Part(name, label, (x0 / 28, y0 / 28, x1 / 28, y1 / 28))


FASHION_MNIST_PARTS: tuple[Part, ...] = (
    _px("collar (shirt)", 6, 11, 0, 17, 6),
    _px("left sleeve (T-shirt)", 0, 2, 3, 8, 9),
    _px("waistband (trouser)", 1, 11, 0, 17, 6),
    _px("toe (sneaker)", 7, 1, 14, 7, 20),
    _px("heel (ankle boot)", 9, 21, 17, 27, 23),
    _px("bottom-left corner (bag)", 8, 2, 18, 8, 24),
)
"""The Fashion-MNIST protocol's parts: 6 × 6 pixel boxes (x0, y0, x1, y1 on the 28 × 28 grid) on
regions that sit at the same place in the centred, aligned images of one class. Shoes point left in
Fashion-MNIST: toe left, heel right. Bag handles are too thin for a 6 × 6 box (under half of it
covers the handle in most bags), so the bag's part is a body corner."""


@dataclass(frozen=True)
class CorrespondenceTable(RecordTable):
    """Δ for several parts, each over ``n_sets`` random sets of ``n_images`` images of its class.

    ``part`` (P, S, L): Δ per part, image set and layer. ``random`` and ``shared`` (P, S·R, L): the
    controls (see :class:`CorrespondenceResult`) for the same image sets. Summaries are mean ± std
    over the second axis.
    """

    layers: tuple[str, ...]
    parts: tuple[Part, ...]
    part: Tensor
    random: Tensor
    shared: Tensor
    n_images: int

    def _records(self) -> list[list[str]]:
        header = ["part"] + [
            f"{layer} {kind}"
            for layer in self.layers
            for kind in ("part", "random", "shared random")
        ]
        body = []
        for p, part in enumerate(self.parts):
            cells = [part.name]
            for col in range(len(self.layers)):
                for data in (self.part, self.random, self.shared):
                    values = data[p, :, col]
                    cells.append(f"{values.mean():.3f} ± {values.std(correction=0):.3f}")
            body.append(cells)
        return [header, *body]


def part_images(
    images: Tensor,
    labels: Tensor,
    part: Part,
    baseline: float | Sequence[float] = 0.0,
    min_changed: float = 0.5,
) -> Tensor:
    """Indices (int64, ascending) of the images (N, C, H, W) that show ``part``: its class in
    ``labels`` (N,) and at least ``min_changed`` of its box's pixels differing from ``baseline``.
    These are the images :func:`correspondence_table` draws its sets from."""
    height, width = images.shape[-2:]
    x0, y0, x1, y1 = _check_boxes(part.pixels(height, width), 1, height, width)[0].tolist()
    colour = torch.as_tensor(
        _fill(baseline, images.shape[1]), dtype=images.dtype, device=images.device
    ).view(1, -1, 1, 1)
    crops = images[:, :, y0:y1, x0:x1]
    visible = (crops != colour).any(1).float().mean((1, 2)).cpu() >= min_changed - 1e-9
    return ((labels.cpu() == part.label) & visible).nonzero().flatten()


def correspondence_table(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    layers: Sequence[LayerSpec],
    parts: Sequence[Part] = FASHION_MNIST_PARTS,
    n_images: int = 5,
    n_sets: int = 5,
    n_random: int = 10,
    baseline: float | Sequence[float] = 0.0,
    min_changed: float = 0.5,
    seed: int = 0,
    batch_size: int = 256,
) -> CorrespondenceTable:
    """The paper's Table 1 on a labelled data set: :func:`correspondence` per part and image set.

    For each part, ``n_sets`` sets of ``n_images`` distinct images are drawn from those images of
    ``images`` (N, C, H, W) / ``labels`` (N,) that show the part: the part's class, with at least
    ``min_changed`` of the box's pixels differing from ``baseline`` (the part is there to occlude —
    the same rule as for the random boxes; :func:`part_images`). Draws use
    ``torch.Generator().manual_seed(seed)``; in each set the part's box is occluded in every image
    and ``n_random`` random boxes of the same size serve as controls. Deterministic for a given
    seed.
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got {getattr(images, 'shape', images)!r}")
    if not isinstance(labels, Tensor) or labels.shape != images.shape[:1]:
        raise ValueError(
            f"labels must be a tensor of shape ({images.shape[0]},), got "
            f"{getattr(labels, 'shape', labels)!r}"
        )
    if not parts:
        raise ValueError("parts must name at least one part")
    if n_sets < 1:
        raise ValueError(f"n_sets must be >= 1, got {n_sets}")
    gen = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    height, width = images.shape[-2:]
    names = [display_name(model, name) for name, _ in resolve_layers(model, layers)]
    part_d, rand_d, shared_d = [], [], []
    for part in parts:
        pool = part_images(images, labels, part, baseline, min_changed)
        if len(pool) < n_images:
            raise ValueError(
                f"part {part.name!r} needs {n_images} images of class {part.label} showing the "
                f"part (>= {min_changed} of box {part.pixels(height, width)} differs from the "
                f"baseline), found {len(pool)}"
            )
        results = [
            correspondence(
                model,
                images[pool[torch.randperm(len(pool), generator=gen)[:n_images]]],
                part.pixels(height, width),
                layers,
                baseline,
                n_random,
                min_changed,
                generator=gen,
                batch_size=batch_size,
            )
            for _ in range(n_sets)
        ]
        part_d.append(torch.stack([r.part for r in results]))
        rand_d.append(torch.cat([r.random for r in results]))
        shared_d.append(torch.cat([r.shared for r in results]))
    return CorrespondenceTable(
        tuple(names),
        tuple(parts),
        torch.stack(part_d),
        torch.stack(rand_d),
        torch.stack(shared_d),
        n_images,
    )


def correspondence_markdown(table: CorrespondenceTable) -> str:
    """The table as Markdown, mean ± std per layer: part, random box, shared random box."""
    return table.to_markdown() + "\n"


def _check_boxes(boxes: object, n: int, height: int, width: int) -> Tensor:
    """``boxes`` as an (n, 4) int64 tensor; ``ValueError`` naming the box when one is invalid."""
    t = torch.as_tensor(boxes)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"boxes must be integer pixel coordinates (x0, y0, x1, y1), got {t.dtype}")
    t = t.long()
    if t.shape == (4,):
        t = t.expand(n, 4)
    if t.shape != (n, 4):
        raise ValueError(f"boxes must have shape (4,) or ({n}, 4), got {tuple(t.shape)}")
    for i, (x0, y0, x1, y1) in enumerate(t.tolist()):
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise ValueError(
                f"box {i} (x0, y0, x1, y1) = {(x0, y0, x1, y1)} is empty or outside the "
                f"{height}x{width} image"
            )
    return t.clone()


def _fill(baseline: float | Sequence[float], channels: int) -> list[float]:
    """``baseline`` as one float per channel."""
    if isinstance(baseline, (int, float)):
        values = [float(baseline)]
    else:
        values = [float(b) for b in baseline]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(f"baseline has {len(values)} values for {channels} channels: {baseline!r}")
    return values


def _random_boxes(
    changed: Tensor, size: Tensor, count: int, min_changed: float, generator: torch.Generator | None
) -> Tensor:
    """``count`` random boxes of ``size`` (width, height) shared by the images of ``changed``
    (m, H, W) (True where occluding changes the pixel), drawn uniformly among positions where at
    least ``min_changed`` of the box's pixels change in every image. Returns (count, m, 4)."""
    w, h = int(size[0]), int(size[1])
    frac = F.avg_pool2d(changed.float().unsqueeze(1), (h, w), stride=1)[:, 0]  # (m, H-h+1, W-w+1)
    valid = (frac >= min_changed - 1e-9).all(0)
    if not bool(valid.any()):
        raise ValueError(
            f"no {h}x{w} box position covers >= {min_changed} changed pixels in every image; "
            f"lower min_changed"
        )
    picks = torch.multinomial(valid.flatten().float(), count, replacement=True, generator=generator)
    y0, x0 = picks // valid.shape[1], picks % valid.shape[1]
    one = torch.stack([x0, y0, x0 + w, y0 + h], 1)  # (count, 4)
    return one.unsqueeze(1).expand(count, changed.shape[0], 4).clone()
