"""The small unCLIP decoder: a diffusers pipeline that draws an image from a CLIP image embedding.

It is built the way Stable unCLIP is: the image embedding is normalised, noise-augmented to a
``noise_level`` and concatenated with that level's timestep embedding, then fed to the UNet as its
class embedding (``class_embed_type="projection"``, FiLM on every ResNet block). The same
embedding also reaches cross-attention through ``encoder_hid_dim_type="image_proj"``
(projected to 32 tokens) at 8 and 4 px, which lets the UNet place content spatially. Classifier-free guidance
uses an all-zero condition, as Stable unCLIP does.

``SmallUnCLIPPipeline`` is a ``DiffusionPipeline`` of diffusers components only, so
``save_pretrained``/``from_pretrained`` round-trip with no custom code. What the UNet predicts
(epsilon or v) is the scheduler's ``prediction_type``, saved with the pipeline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
from diffusers.utils import logging as diffusers_logging
from PIL import Image

from ..errors import P, ProtosynthError
from ..util.files import write_text_atomic
from ..util.imageops import resized

COORD_CHANNELS = 2  # (x, y) position channels a coordinate-aware UNet takes after the pixel patches


def build_unet(
    embed_dim: int, image_size: int = 32, quick: bool = False, patch: int = 2, coords: bool = False
) -> UNet2DConditionModel:
    """The decoder UNet on 2x2 pixel patches (space-to-depth, as a DiT patchifies), which cuts
    the CPU cost of a training step about fourfold at 32 px; cross-attention on the embedding at
    the two coarser levels.

    ``coords`` adds two input channels holding each patch's (x, y) position (CoordConv). A UNet's
    convolutions are translation-equivariant and its attention has no position encoding, so
    without them the only cue to *where* an embedding asks for an object is the zero padding at
    the border; with them, the FiLM-conditioned features can switch on at a location."""
    channels = (16, 32, 32) if quick else (32, 64, 64)
    return UNet2DConditionModel(
        sample_size=image_size // patch,
        in_channels=3 * patch * patch + (COORD_CHANNELS if coords else 0),
        out_channels=3 * patch * patch,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=channels,
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=channels[-1],
        attention_head_dim=4,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=2 * embed_dim,
        encoder_hid_dim=embed_dim,
        encoder_hid_dim_type="image_proj",
        resnet_time_scale_shift="scale_shift",
    )


def build_pipeline(
    embed_dim: int,
    image_size: int = 32,
    quick: bool = False,
    prediction_type: str = "v_prediction",
    coords: bool = False,
) -> "SmallUnCLIPPipeline":
    """A randomly initialised pipeline (the starting point of training, and of tests).

    ``v_prediction`` (the default) weights the high-noise steps, where layout and colour are decided,
    far more than epsilon prediction does (whose x0 error weight there tends to zero); sampling
    then uses "trailing" timesteps so it starts from the pure-noise end of the schedule."""
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
    # epsilon cannot predict x0 from pure noise (alpha_bar ~ 0 at t = 999), so it keeps "leading" steps
    spacing = "trailing" if prediction_type == "v_prediction" else "leading"
    sched = dict(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type=prediction_type,
        clip_sample=True,
        timestep_spacing=spacing,
    )
    pipe = SmallUnCLIPPipeline(
        unet=build_unet(embed_dim, image_size, quick, coords=coords),
        scheduler=DDIMScheduler(**sched, set_alpha_to_one=False),
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=embed_dim),
        image_noising_scheduler=DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2"),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


class SmallUnCLIPPipeline(DiffusionPipeline):
    """Image-embedding-conditioned pixel-space diffusion (unCLIP decoder) for small images."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        scheduler: DDIMScheduler,
        image_normalizer: StableUnCLIPImageNormalizer,
        image_noising_scheduler: DDPMScheduler,
    ):
        super().__init__()
        self.register_modules(
            unet=unet,
            scheduler=scheduler,
            image_normalizer=image_normalizer,
            image_noising_scheduler=image_noising_scheduler,
        )

    @property
    def embedding_dim(self) -> int:
        """The CLIP image-embedding dimension this decoder is conditioned on."""
        return int(self.unet.config.encoder_hid_dim)

    @property
    def coord_channels(self) -> int:
        """0, or 2 when the UNet also takes (x, y) position channels (its input is 3 * patch**2 + 2)."""
        return int(self.unet.config.in_channels) % 3

    @property
    def patch(self) -> int:
        """Side of the pixel patches the UNet sees (its output channels are 3 * patch**2)."""
        return int(round((self.unet.config.out_channels / 3) ** 0.5))

    @property
    def image_size(self) -> int:
        return int(self.unet.config.sample_size) * self.patch

    def condition(
        self, image_embeds: torch.Tensor, noise_levels: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(class_labels, image_embeds) for the UNet: Stable unCLIP's noise augmentation."""
        normed = self.image_normalizer.scale(image_embeds)
        noised = self.image_noising_scheduler.add_noise(normed, noise, noise_levels)
        noised = self.image_normalizer.unscale(noised)
        level_emb = get_timestep_embedding(
            noise_levels, noised.shape[-1], flip_sin_to_cos=True, downscale_freq_shift=0
        ).to(noised.dtype)
        return torch.cat([noised, level_emb], dim=1), noised

    def predict(self, sample: torch.Tensor, t, class_labels: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """The model output (epsilon or v, per ``scheduler.config.prediction_type``) in pixel space;
        the UNet itself works on patches."""
        x = torch.nn.functional.pixel_unshuffle(sample, self.patch)
        if self.coord_channels:
            side = x.shape[-1]
            axis = torch.linspace(-1.0, 1.0, side, device=x.device, dtype=x.dtype)
            yy, xx = torch.meshgrid(axis, axis, indexing="ij")
            x = torch.cat([x, torch.stack([xx, yy]).expand(len(x), -1, -1, -1)], dim=1)
        out = self.unet(
            x, t, encoder_hidden_states=None, class_labels=class_labels, added_cond_kwargs={"image_embeds": embeds}
        ).sample
        return torch.nn.functional.pixel_shuffle(out, self.patch)

    @torch.no_grad()
    def __call__(
        self,
        image_embeds: torch.Tensor,
        num_inference_steps: int = 50,
        guidance_scale: float = 3.0,
        noise_level: int = 0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        image: torch.Tensor | None = None,
        strength: float = 1.0,
        output_type: str = "pil",
        guidance_model: Callable[[torch.Tensor], torch.Tensor] | None = None,
        guidance_model_scale: float = 0.0,
    ) -> list[Image.Image] | np.ndarray | torch.Tensor:
        """Render one image per embedding row.

        ``generator``: one per image for per-image seeds (results then do not depend on batching).
        ``image``: optional init images in [-1, 1] (img2img): denoising starts at ``strength``.
        ``guidance_model``: a differentiable map from images in [-1, 1] to unit embeddings (a CLIP
        image tower). At every step the predicted clean image x0 is moved ``guidance_model_scale``
        (RMS, in pixel units) up the gradient of its cosine to the target embedding before the DDIM
        update, as in CLIP-guided diffusion (GLIDE), with the gradient taken at x0 only, not
        through the UNet, which keeps a step cheap.
        """
        device, dtype = self.unet.device, self.unet.dtype
        embeds = torch.as_tensor(image_embeds, dtype=dtype).to(device)
        if embeds.ndim != 2 or embeds.shape[1] != self.embedding_dim:
            raise ProtosynthError(
                f"decoder expects image embeddings of dimension {self.embedding_dim}, got shape {tuple(embeds.shape)}"
            )
        n = len(embeds)
        gens = generator if isinstance(generator, list) else [generator] * n
        if len(gens) != n:
            raise ValueError(f"{len(gens)} generators for {n} embeddings")
        shape = (3, self.image_size, self.image_size)

        def randn(shape_):
            return torch.stack([torch.randn(shape_, generator=g) for g in gens]).to(device, dtype)

        levels = torch.full((n,), int(noise_level), dtype=torch.long, device=device)
        class_labels, cond = self.condition(embeds, levels, randn((self.embedding_dim,)))
        use_cfg = guidance_scale > 1.0
        if use_cfg:
            class_labels = torch.cat([torch.zeros_like(class_labels), class_labels])
            cond = torch.cat([torch.zeros_like(cond), cond])
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        latents = randn(shape)
        if image is not None:
            if not 0.0 < strength <= 1.0:
                raise ProtosynthError(f"{P.strength} must be in (0, 1], got {strength}")
            init_steps = min(max(1, int(round(num_inference_steps * strength))), num_inference_steps)
            timesteps = timesteps[num_inference_steps - init_steps :]
            init = torch.as_tensor(image, dtype=dtype).to(device)
            latents = self.scheduler.add_noise(init, latents, timesteps[:1].repeat(n))
        target = torch.nn.functional.normalize(embeds.float(), dim=-1)
        for t in self.progress_bar(timesteps):
            model_in = torch.cat([latents] * 2) if use_cfg else latents
            out = self.predict(model_in, t, class_labels, cond)
            if use_cfg:  # guidance is linear, so it applies to epsilon and v alike
                uncond, cond_out = out.chunk(2)
                out = uncond + guidance_scale * (cond_out - uncond)
            if guidance_model is not None and guidance_model_scale > 0:
                out = self._guide(out, t, latents, guidance_model, guidance_model_scale, target)
            latents = self.scheduler.step(out, t, latents, eta=0.0).prev_sample
        images = (latents.clamp(-1, 1) + 1) / 2
        if output_type == "pt":
            return images.cpu()
        arr = (images.permute(0, 2, 3, 1).float().cpu().numpy() * 255).round().astype(np.uint8)
        if output_type == "np":
            return arr
        return [Image.fromarray(a) for a in arr]

    def _guide(
        self, out: torch.Tensor, t, latents: torch.Tensor, model: Callable, scale: float, target: torch.Tensor
    ) -> torch.Tensor:
        """The model output with its x0 nudged toward higher cosine with ``target``."""
        ab = self.scheduler.alphas_cumprod[int(t)].to(latents.device, latents.dtype)
        sa, sb = ab.sqrt(), (1 - ab).sqrt()
        v_pred = self.scheduler.config.prediction_type == "v_prediction"
        x0 = sa * latents - sb * out if v_pred else (latents - sb * out) / sa
        x0 = x0.clamp(-1, 1).detach().requires_grad_(True)
        with torch.enable_grad():
            cos = (model(x0) * target.to(x0.device)).sum()
            (grad,) = torch.autograd.grad(cos, x0)
        rms = grad.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-12).view(-1, 1, 1, 1)
        x0 = (x0 + scale * grad / rms).detach().clamp(-1, 1)
        eps = (latents - sa * x0) / sb
        return sa * eps - sb * x0 if v_pred else eps


SHIPPED_DECODER = Path(__file__).resolve().parent.parent / "weights" / "world" / "decoder"
CONDITIONING_FILE = "conditioning.json"  # which CLIP space a trained decoder expects
# Render settings measured for this decoder (``models train`` / ``models calibrate`` write it): a
# well-trained decoder wants classifier-free guidance near 1, an undertrained one needs about 3, so
# one default per decoder kind cannot serve both.
RENDER_DEFAULTS_FILE = "render_defaults.json"


def to_unit_range(images: list[Image.Image], size: int) -> torch.Tensor:
    """PIL images resized to ``size`` (bicubic) as a (N, 3, size, size) tensor in [-1, 1]: the
    decoder's pixel convention."""
    arr = np.stack([resized(im, size) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def write_conditioning(folder: Path, clip_space: str, embedding_dim: int, clip: str | None = None) -> None:
    """Declare which CLIP a decoder folder expects: its space, dimension and (optionally) the
    ``--clip`` spec to pair with by default."""
    declared = {"clip_space": clip_space, "embedding_dim": embedding_dim}
    if clip is not None:
        declared["clip"] = clip
    write_text_atomic(Path(folder) / CONDITIONING_FILE, json.dumps(declared, indent=2))


def write_render_defaults(folder: Path, settings: dict, measured: dict) -> None:
    """Record the render ``settings`` a decoder folder should default to, with the measurements
    that chose them (loaded back by ``read_render_defaults``)."""
    write_text_atomic(
        Path(folder) / RENDER_DEFAULTS_FILE, json.dumps({"settings": settings, "measured": measured}, indent=2)
    )


def read_json_object(path: Path, spec: str) -> dict:
    """A decoder folder's JSON file, which must hold an object; errors name ``spec`` and the file."""
    try:
        obj = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtosynthError(f"{P.decoder} {spec}: {path} is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ProtosynthError(f"{P.decoder} {spec}: {path} must hold a JSON object")
    return obj


def read_render_defaults(folder: Path, spec: str) -> dict:
    """The ``settings`` of a folder's ``render_defaults.json`` ({} without one)."""
    path = Path(folder) / RENDER_DEFAULTS_FILE
    if not path.is_file():
        return {}
    settings = read_json_object(path, spec).get("settings")
    if not isinstance(settings, dict):
        raise ProtosynthError(f"{P.decoder} {spec}: {path} has no 'settings' object")
    return settings


def decoder_folder(spec: str) -> Path | None:
    """The folder of a small-decoder spec: ``default`` (shipped), ``small:DIR`` (``DIR/decoder`` of a
    ``models train`` output, or DIR itself), or a folder; None for any other spec."""
    if spec == "default":
        return SHIPPED_DECODER
    if spec.startswith("small:"):
        root = Path(spec[len("small:") :])
        return root / "decoder" if (root / "decoder" / "model_index.json").is_file() else root
    return Path(spec) if Path(spec).is_dir() else None


def load_small_pipeline(folder: Path, spec: str, device: str | torch.device = "cpu") -> SmallUnCLIPPipeline:
    """The bare ``SmallUnCLIPPipeline`` saved in ``folder``; errors name ``spec``, what the user typed.
    Load decoders with ``models.unclip.open_decoder``, which reads the folder's conditioning and
    render defaults too and returns a ``Decoder``."""
    if not (folder / "model_index.json").is_file():
        raise ProtosynthError(f"{P.decoder} {spec}: no model_index.json in {folder}")
    diffusers_logging.disable_progress_bar()
    try:
        pipe = SmallUnCLIPPipeline.from_pretrained(str(folder)).to(device)
    except Exception as exc:  # a corrupt or foreign pipeline folder, or a bad --device
        raise ProtosynthError(f"{P.decoder} {spec}: cannot load the pipeline in {folder} ({exc})") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe
