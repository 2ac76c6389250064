"""The one table from the library's parameter names (what its errors name, ``protosynth.errors.P``)
to this command line's flags, and the one place an error is spelled with them."""

from __future__ import annotations

from protosynth.errors import ProtosynthError, python_spelling

# library parameter -> flag, for every verb. A dotted name is a field of a nested config
# (DistillConfig.render.strength, ModelsTrainConfig.decoder["guidances"]); an undotted one a field of
# the config (or the argument) the raising function takes. None: no flag sets it (the verb computes
# it), so the error keeps the library's name.
FLAGS: dict[str, str | None] = {
    # corpus and output, shared by most verbs
    "corpus": "--corpus",
    "test": "--test",
    "image_root": "--image-root",
    "skip_bad": "--skip-bad",
    "image_column": "--image-column",
    "caption_column": "--caption-column",
    "out": "--out",
    "force": "--force",
    "device": "--device",
    "budget": "--budget",
    "budgets": "--budget",
    "seed": "--seed",
    "method": "--method",
    "methods": "--methods",
    "protocol": "--protocol",
    "repeats": "--repeats",
    # the model pair (distill, embed, coreset)
    "clip": "--clip",
    "clip_arch": "--clip-arch",
    "clip_space": "--clip-space",
    "decoder": "--decoder",
    "dtype": "--dtype",
    "mode": "--mode",
    "caption": "--caption",
    "candidates": "--candidates",
    "preset": "--preset",
    "cluster_space": "--cluster-space",
    "kmeans": "--kmeans",
    "prototype_norm": "--prototype-norm",
    "prototype_order": "--prototype-order",
    # render settings: DistillConfig.render.*, and RenderConfig's own fields for the renderer's errors
    "render.init": "--init",
    "init": "--init",
    "render.strength": "--strength",
    "strength": "--strength",
    "render.steps": "--steps",
    "render.guidance_scale": "--guidance",
    "render.noise_level": "--noise-level",
    "noise_level": "--noise-level",
    "negative_prompt": "--negative-prompt",
    "render.size": "--size",
    "render.super_res_steps": "--super-res-steps",
    "super_res_steps": "--super-res-steps",
    "render.batch_size": "--batch-size",
    "render.clip_guidance": "--clip-guidance",
    # embed (EmbedConfig)
    "batch_size": "--batch-size",
    "shard_size": "--shard-size",
    "num_workers": "--workers",
    "fp16": "--fp16",
    # the engine (EngineConfig): embed and distill
    "engine": "--engine",
    "address": "--address",
    "workers": "--workers",
    "gpus_per_worker": "--gpus-per-worker",
    "cpus_per_worker": "--cpus-per-worker",
    # coreset
    "keep": "--keep",
    "forgetting_epochs": "--forgetting-epochs",
    # eval (EvalConfig, cross_arch's archs)
    "epochs": "--epochs",
    "text": "--text",
    "full": "--full",
    "archs": "--archs",
    "val": "--val",
    "split": None,  # eval retrieval sets it from --val
    # buffer, baseline, compare-baselines
    "buffer": "--buffer",
    "experts": "--experts",
    "lr": "--lr",
    "max_pairs": "--max-pairs",
    "heads_only": "--heads-only",
    "family": "--preset",
    "iterations": "--iterations",
    "syn_steps": "--syn-steps",
    "expert_epochs": "--expert-epochs",
    "max_start_epoch": "--max-start-epoch",
    "batch_syn": "--batch-syn",
    "rank": "--rank",
    "lr_img": "--lr-img",
    "lr_txt": "--lr-txt",
    "lr_lr": "--lr-lr",
    "lr_init": "--lr-init",
    "lr_sim": "--lr-sim",
    "lr_space": "--lr-space",
    "grad_mode": "--grad-mode",
    "eval_epochs": "--eval-epochs",
    # models train / calibrate (ModelsTrainConfig, its decoder settings) and pretrain-backbone
    "only": "--only",
    "decoder.guidances": "--guidances",
    "decoder.render_steps": "--steps",
    "decoder.lr_schedule": "--decoder-lr-schedule",
    "decoder.prediction_type": "--decoder-prediction",
    "decoder.init_from": "--decoder-init-from",
    "decoder.coords": "--decoder-coords",
    "holdout": None,  # pretrain-backbone derives it from --n-images
    # export, report
    "to": "--to",
    "members": "--members",
    "samples": "--samples",
    "folders": None,  # report's DIR arguments
}

# Where a verb sets a library parameter with another flag, its entry wins.
VERB_FLAGS: dict[str, dict[str, str]] = {
    "models calibrate": {"out": "--models"},
}


def flag_spelling(verb: str | None):
    """How ``verb`` writes a parameter reference: its flag, with the value after it (a boolean
    flag alone); the library's name where no flag sets the parameter."""
    table = {**FLAGS, **VERB_FLAGS.get(verb or "", {})}

    def spell(param: str, value: str | None) -> str:
        flag = table.get(param)
        if flag is None:
            return python_spelling(param, value)
        return flag if value in (None, "True") else f"{flag} {value}"

    return spell


def cli_message(error: ProtosynthError, verb: str | None = None) -> str:
    """The error as ``verb`` reports it: the library's message with its flags for the parameters."""
    return error.spelled(flag_spelling(verb))
