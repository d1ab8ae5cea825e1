"""Model evaluations an apg sigma interval saves through the guider slot, on default schedules (no weights).

    python benchmarks/guider_savings.py [--steps 50]

Where a rule's interval leaves a step out, apg's guider reports one condition and the pipeline runs no
unconditional pass there. Each schedule is built from its model's published scheduler config; sigma is apg's
EDM noise level of each step (apg.schedulers.noise_level), as the guider reads it.
"""

from __future__ import annotations

import argparse

import apg
from apg.guidance import in_interval
from apg.schedulers import check_scheduler, noise_level

# model -> (scheduler class, its scheduler_config.json on the hub, as published)
SCHEDULES = {
    "SDXL base 1.0 (Euler)": ("EulerDiscreteScheduler", dict(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        prediction_type="epsilon", steps_offset=1, timestep_spacing="leading", interpolation_type="linear")),
    "Wan 2.1 T2V 480p (UniPC, shift 3)": ("UniPCMultistepScheduler", dict(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000)),
    "Wan 2.1 T2V 720p (UniPC, shift 5)": ("UniPCMultistepScheduler", dict(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0, num_train_timesteps=1000)),
}


def step_sigmas(scheduler, steps: int) -> list[float]:
    """apg's noise level of each step of a `steps`-step schedule."""
    family = check_scheduler(scheduler)
    scheduler.set_timesteps(steps)
    sigmas = []
    for i, timestep in enumerate(scheduler.timesteps):
        scheduler._step_index = i  # the state step() would be in at step i
        sigmas.append(noise_level(scheduler, family, timestep))
    return sigmas


def main():
    import diffusers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="sampling steps (the pipelines' default: 50)")
    steps = parser.parse_args().steps
    interval = apg.INTERVALS["sdxl"]
    print(f"interval {interval} (apg.INTERVALS['sdxl']), {steps} steps; CFG runs 2 evaluations per step")
    for model, (cls, config) in SCHEDULES.items():
        sigmas = step_sigmas(getattr(diffusers, cls).from_config(config), steps)
        inside = sum(in_interval(s, interval) for s in sigmas)
        evaluations = steps + inside
        print(f"{model}: {inside}/{steps} steps inside; {evaluations} evaluations instead of {2 * steps}: "
              f"{2 * steps - evaluations} saved ({(2 * steps - evaluations) / (2 * steps):.0%})")


if __name__ == "__main__":
    main()
