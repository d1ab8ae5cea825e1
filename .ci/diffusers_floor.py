"""Smoke test of the oldest Diffusers that pyproject.toml admits: `import apg` and one guided tiny pipeline.

    python .ci/diffusers_floor.py    # in a venv with the floor release installed (.ci/run makes one)

A tiny random Stable Diffusion (no text encoder: embeddings are passed) samples 4 DDIM steps. APG with
eta = 1, r = 0, beta = 0 is CFG, so it must match the stock pipeline; APG with eta = 0 must not.
"""

import sys

import torch

import apg

assert "diffusers" not in sys.modules, "import apg imported diffusers"

import diffusers  # noqa: E402  (after the check above)

torch.manual_seed(0)
unet = diffusers.UNet2DConditionModel(
    block_out_channels=(4, 8), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32, norm_num_groups=2, attention_head_dim=2,
).eval()
vae = diffusers.AutoencoderKL(
    block_out_channels=(4, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2, sample_size=32,
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
).eval()
scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                    clip_sample=False, set_alpha_to_one=False, steps_offset=1)
pipe = diffusers.StableDiffusionPipeline(
    vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler, safety_checker=None,
    feature_extractor=None, requires_safety_checker=False,
)
pipe.set_progress_bar_config(disable=True)
cond, uncond = torch.randn(1, 8, 32), torch.randn(1, 8, 32)  # [B, tokens, cross_attention_dim]


def sample(**kwargs):
    return pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, num_inference_steps=4, output_type="pt",
                generator=torch.manual_seed(1), **kwargs).images.double()  # [1, 3, 32, 32]


def rel_diff(a, b):
    return float((a - b).norm() / b.norm())


stock = sample(guidance_scale=5.0)
with apg.guide(pipe, apg.APG(5.0, eta=1.0, norm_threshold=0.0, momentum=0.0)):
    as_cfg = sample()
with apg.guide(pipe, apg.APG(5.0)):
    guided = sample()
assert rel_diff(as_cfg, stock) < 1e-4, f"APG(eta=1) differs from stock CFG by {rel_diff(as_cfg, stock):.2e}"
assert rel_diff(guided, stock) > 1e-3, "APG(eta=0) gave stock CFG's images: the guidance was not applied"
print(f"diffusers {diffusers.__version__}: import apg and a guided tiny StableDiffusionPipeline ok "
      f"(APG as CFG {rel_diff(as_cfg, stock):.1e} from stock, APG {rel_diff(guided, stock):.1e})")
