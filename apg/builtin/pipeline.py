"""A class-conditional pixel-space pipeline with DiTPipeline's calling convention and SD's CFG loop."""

from __future__ import annotations

import inspect
import numbers

import diffusers
import numpy as np
import torch
from diffusers import DiffusionPipeline, EulerDiscreteScheduler, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from ..errors import InputError
from ..integration import register_pipeline
from .model import GaussianMixtureDenoiser


def default_scheduler(unet: GaussianMixtureDenoiser) -> EulerDiscreteScheduler:
    """Euler on Karras (EDM) sigmas over the model's own VP schedule."""
    config = unet.config
    return EulerDiscreteScheduler(
        num_train_timesteps=config.num_train_timesteps, beta_start=config.beta_start, beta_end=config.beta_end,
        beta_schedule=config.beta_schedule, prediction_type="epsilon", use_karras_sigmas=True,
    )


class ClassConditionalPipeline(DiffusionPipeline):
    """pipe(class_labels=[3, "ship"], guidance_scale=4.0) -> .images; label ids or class names."""

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, unet: GaussianMixtureDenoiser, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @property
    def labels(self) -> dict[str, int]:
        """Class name -> label id."""
        names = self.unet.config.class_names or [str(k) for k in range(self.unet.config.num_classes)]
        return {name: k for k, name in enumerate(names)}

    def get_label_ids(self, label: str | list[str]) -> list[int]:
        """Class names -> label ids, like DiTPipeline.get_label_ids."""
        names = [label] if isinstance(label, str) else list(label)
        unknown = [name for name in names if name not in self.labels]
        if unknown:
            raise InputError(f"unknown class name(s) {unknown}; known: {sorted(self.labels)}")
        return [self.labels[name] for name in names]

    def _label_tensor(self, class_labels) -> torch.Tensor:
        if isinstance(class_labels, (int, str)):
            class_labels = [class_labels]
        if isinstance(class_labels, torch.Tensor):
            class_labels = class_labels.tolist()
        if not isinstance(class_labels, (list, tuple)) or not class_labels:
            raise InputError(f"class_labels must be a non-empty list of label ids or class names, got {class_labels!r}")
        num_classes = self.unet.config.num_classes
        ids = []
        for label in class_labels:
            if isinstance(label, str):
                label = self.get_label_ids(label)[0]
            if isinstance(label, bool) or not isinstance(label, numbers.Integral) or not 0 <= label < num_classes:
                raise InputError(f"class label {label!r} is out of range: expected an int in [0, {num_classes - 1}]")
            ids.append(int(label))
        return torch.tensor(ids, device=self._execution_device)

    def _extra_step_kwargs(self, generator, eta):
        accepted = set(inspect.signature(self.scheduler.step).parameters)
        kwargs = {}
        if "eta" in accepted:
            kwargs["eta"] = eta
        if "generator" in accepted:
            kwargs["generator"] = generator
        return kwargs

    @torch.no_grad()
    def __call__(
        self,
        class_labels,
        guidance_scale: float = 4.0,
        num_inference_steps: int = 32,
        generator: torch.Generator | list[torch.Generator] | None = None,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    ):
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, numbers.Integral) \
                or num_inference_steps < 1:
            raise InputError(f"num_inference_steps must be an int >= 1, got {num_inference_steps!r}")
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real) \
                or not np.isfinite(guidance_scale):
            raise InputError(f"guidance_scale must be a finite real number, got {guidance_scale!r}")
        if output_type not in ("pil", "np", "pt"):
            raise InputError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise InputError(f"callback_on_step_end_tensor_inputs {sorted(unknown)} not in {self._callback_tensor_inputs}")
        labels = self._label_tensor(class_labels)  # [B]
        batch = labels.shape[0]
        if isinstance(generator, list) and len(generator) != batch:
            raise InputError(f"got {len(generator)} generators for {batch} class labels")

        device = self._execution_device
        config = self.unet.config
        latents = randn_tensor(
            (batch, config.in_channels, config.sample_size, config.sample_size),
            generator=generator, device=device, dtype=self.unet.dtype,
        )  # [B, C, H, W]
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = latents * self.scheduler.init_noise_sigma
        do_cfg = guidance_scale > 1
        # [uncond, cond] like the Stable Diffusion pipelines; label num_classes is the null class.
        model_labels = torch.cat([torch.full_like(labels, config.num_classes), labels]) if do_cfg else labels
        extra_step_kwargs = self._extra_step_kwargs(generator, eta)

        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            latent_model_input = torch.cat([latents] * 2) if do_cfg else latents
            latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)
            noise_pred = self.unet(latent_model_input, t, class_labels=model_labels).sample
            if do_cfg:
                noise_uncond, noise_cond = noise_pred.chunk(2)
                noise_pred = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
            latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs).prev_sample
            if callback_on_step_end is not None:
                tensors = {"latents": latents} if "latents" in callback_on_step_end_tensor_inputs else {}
                latents = callback_on_step_end(self, i, t, tensors).pop("latents", latents)

        images = (latents / 2 + 0.5).clamp(0, 1)  # [B, C, H, W] in [0, 1]
        self.maybe_free_model_hooks()
        if output_type != "pt":
            images = images.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


register_pipeline(ClassConditionalPipeline, denoiser="unet", batch="uncond_first")
# DiffusionPipeline.from_pretrained looks model_index.json's _class_name up in the diffusers namespace; the
# alternative, a pipeline.py inside the folder, would need trust_remote_code.
if not hasattr(diffusers, ClassConditionalPipeline.__name__):
    setattr(diffusers, ClassConditionalPipeline.__name__, ClassConditionalPipeline)
