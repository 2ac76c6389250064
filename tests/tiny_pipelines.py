"""Tiny random-initialised unCLIP decoders of the real classes, built from configs as diffusers
tests its own pipelines: ``StableUnCLIPImg2ImgPipeline`` (the Stable unCLIP family) and
``UnCLIPImageVariationPipeline`` (Karlo). Every component is the class the published checkpoint
uses, only with a few channels, so ``protosynth`` loads and drives them with the same code.
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableUnCLIPImg2ImgPipeline,
    UnCLIPScheduler,
    UNet2DConditionModel,
    UNet2DModel,
)
from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
from safetensors.torch import save_file
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

# A character-level CLIP BPE vocabulary: every letter and digit, alone and word-final ("</w>").
_SYMBOLS = list("abcdefghijklmnopqrstuvwxyz0123456789,.:;!?'-")


def write_clip_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """A small ``vocab.json`` + ``merges.txt`` that ``CLIPTokenizer`` accepts (no hub download)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["<|startoftext|>", "<|endoftext|>"] + _SYMBOLS + [s + "</w>" for s in _SYMBOLS]
    tokens += ["th", "the</w>", "e</w>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\nt h\nth e</w>\n")
    return folder / "vocab.json", folder / "merges.txt"


def _tokenizer(folder: Path):
    write_clip_tokenizer_files(folder)  # from_pretrained reads them under transformers 4 and 5 alike
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


def _clip_configs(vocab_size: int, embed_dim: int, image_size: int = 32):
    text = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=vocab_size,
        projection_dim=embed_dim,
        max_position_embeddings=77,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        image_size=image_size,
        patch_size=8,
        projection_dim=embed_dim,
    )
    return text, vision


def tiny_stable_unclip(embed_dim: int, workdir: Path, seed: int = 0):
    """A ``StableUnCLIPImg2ImgPipeline`` conditioned on ``embed_dim``-d image embeddings: a latent
    UNet with a projection class embedding of [noised embedding; noise-level embedding], an
    AutoencoderKL with 4 latent channels, a CLIP text encoder for the prompt."""
    torch.manual_seed(seed)
    tokenizer = _tokenizer(workdir / "tokenizer")
    text_cfg, vision_cfg = _clip_configs(len(tokenizer.get_vocab()), embed_dim)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(2, 4),
        cross_attention_dim=32,
        norm_num_groups=8,
        use_linear_projection=True,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=2 * embed_dim,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
        sample_size=32,
    )
    return StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32),
        image_encoder=CLIPVisionModelWithProjection(vision_cfg).eval(),
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=embed_dim),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=tokenizer,
        text_encoder=CLIPTextModel(text_cfg).eval(),
        unet=unet,
        scheduler=DDIMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            prediction_type="v_prediction",
            set_alpha_to_one=False,
            steps_offset=1,
        ),
        vae=vae,
    )


def tiny_karlo(embed_dim: int, workdir: Path, seed: int = 0):
    """An ``UnCLIPImageVariationPipeline`` (Karlo): a pixel decoder UNet at 16 px whose class
    embedding is the image embedding projected with the text (``UnCLIPTextProjModel``), then two
    super-resolution UNets to 32 px."""
    # Deprecated in diffusers and may be gone from a release (the library guards it): imported here, so that
    # only the tests that build Karlo fail then, not every module that imports this one.
    from diffusers import UnCLIPImageVariationPipeline  # noqa: PLC0415 (may be absent: see above)
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel  # noqa: PLC0415 (may be absent)

    torch.manual_seed(seed)
    tokenizer = _tokenizer(workdir / "tokenizer")
    text_cfg, vision_cfg = _clip_configs(len(tokenizer.get_vocab()), embed_dim)
    time_dim = 32 * 4
    decoder = UNet2DConditionModel(
        sample_size=16,
        in_channels=3,
        out_channels=6,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        attention_head_dim=8,
        cross_attention_dim=32,
        norm_num_groups=8,
        resnet_time_scale_shift="scale_shift",
        class_embed_type="identity",
    )
    text_proj = UnCLIPTextProjModel(
        clip_embeddings_dim=embed_dim, time_embed_dim=time_dim, cross_attention_dim=32, clip_extra_context_tokens=2
    )

    def super_res():
        return UNet2DModel(
            sample_size=32,
            layers_per_block=1,
            block_out_channels=(32, 64),
            in_channels=6,
            out_channels=3,
            norm_num_groups=8,
            down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D"),
            up_block_types=("ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
            resnet_time_scale_shift="scale_shift",
        )

    return UnCLIPImageVariationPipeline(
        decoder=decoder,
        text_encoder=CLIPTextModelWithProjection(text_cfg).eval(),
        tokenizer=tokenizer,
        text_proj=text_proj,
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32),
        image_encoder=CLIPVisionModelWithProjection(vision_cfg).eval(),
        super_res_first=super_res(),
        super_res_last=super_res(),
        decoder_scheduler=UnCLIPScheduler(
            variance_type="learned_range", prediction_type="epsilon", num_train_timesteps=1000
        ),
        super_res_scheduler=UnCLIPScheduler(
            variance_type="fixed_small_log", prediction_type="epsilon", num_train_timesteps=1000
        ),
    )


# An open_clip architecture of the standard family (OpenAI BPE tokenizer, 49408 tokens, context 77)
# at toy width, registered like any custom config: loaded from a checkpoint file through the same
# ``create_model_and_transforms(arch, pretrained=...)`` call the published weights go through.
TEST_CLIP_ARCH = "ps-test-clip"
TEST_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def register_test_clip(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{TEST_CLIP_ARCH}.json").write_text(json.dumps(TEST_CLIP_CONFIG))
    open_clip.add_model_config(folder)
    return TEST_CLIP_ARCH


def save_random_clip(path: Path, seed: int = 0) -> Path:
    """Random weights of the test architecture as a safetensors checkpoint file."""
    register_test_clip(path.parent / "clip_configs")
    torch.manual_seed(seed)
    model = open_clip.create_model(TEST_CLIP_ARCH)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path
