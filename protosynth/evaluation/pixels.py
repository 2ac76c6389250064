"""A corpus's images at a protocol's resolution, normalised one batch at a time.

Holding every training image as float32 at 224 px does not scale: Flickr30k's 29k train images
would take 17.5 GB, COCO's 113k 68 GB. So images are kept as uint8 at the target size (a fourth
of that), and only the rows of a batch become normalised floats. For the world the pixels are
already in memory; a file corpus (Flickr30k, COCO, a crawl) is decoded once into a memory-mapped
``.npy`` in the cache (keyed by corpus fingerprint and size, written to a temporary name and then
renamed), so later runs and other protocols at the same size skip the decoding and the operating
system pages rows in and out as batches need them.

Images are resized to ``size x size`` (bicubic, no crop), the convention of ``data.to_pixels``; JPEG
files are decoded at a reduced DCT scale no smaller than ``size`` first (as ``embed`` does).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from PIL import Image

from ..corpus import Corpus, cache_dir, check_cache_writable
from ..util.files import atomic_path, remove_stale_temps
from ..util.imageops import resized
from ..util.progress import StepBar

CACHE_VERSION = "1"  # bump when the decoding or resizing rule changes


def normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    """[0, 1] RGB (N, 3, H, W) -> a backbone's input convention."""
    return (x - torch.as_tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)) / torch.as_tensor(std, dtype=x.dtype).view(
        1, 3, 1, 1
    )


def denormalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    return x * torch.as_tensor(std, dtype=x.dtype).view(1, 3, 1, 1) + torch.as_tensor(mean, dtype=x.dtype).view(
        1, 3, 1, 1
    )


class PixelRows:
    """Read-only rows of uint8 images (N, S, S, 3) that index to normalised float tensors (k, 3, S, S)."""

    def __init__(self, pixels: np.ndarray, mean, std):
        self.pixels, self.mean, self.std = pixels, tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def shape(self) -> tuple[int, ...]:
        n, h, w, c = self.pixels.shape
        return (n, c, h, w)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        rows = np.array(self.pixels[index])  # a copy: memory-mapped rows are read-only, torch warns on those
        return normalise(torch.from_numpy(rows).permute(0, 3, 1, 2).float() / 255.0, self.mean, self.std)


def corpus_pixel_rows(corpus: Corpus, mean, std, size: int) -> PixelRows:
    """Every image of ``corpus`` at ``size`` px, normalised with ``mean``/``std`` when indexed."""
    if corpus.pixels is not None:  # the world: already uint8 in memory
        pixels = corpus.pixels
        if pixels.shape[1:3] != (size, size):
            pixels = np.stack([resized(Image.fromarray(p), size) for p in pixels])
        return PixelRows(pixels, mean, std)
    return PixelRows(pixel_cache(corpus, size), mean, std)


def pixel_cache(corpus: Corpus, size: int) -> np.ndarray:
    """The corpus decoded to (N, size, size, 3) uint8, memory-mapped from the cache; built on first use."""
    key = hashlib.sha256(f"{CACHE_VERSION}\0{corpus.fingerprint}\0{size}".encode()).hexdigest()[:24]
    path = cache_dir() / "pixels" / f"{key}.npy"
    shape = (corpus.n_images, size, size, 3)
    if path.is_file():
        arr = np.load(path, mmap_mode="r")
        if arr.shape == shape and arr.dtype == np.uint8:
            return arr
    check_cache_writable(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)  # a killed build leaves a temporary as large as the cache
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        with StepBar(f"decode {corpus.spec} at {size} px", corpus.n_images) as bar:
            for i in range(corpus.n_images):
                out[i] = resized(corpus.load_image(i, min_side=size), size)
                bar.advance()
        out.flush()
        del out
    return np.load(path, mmap_mode="r")
