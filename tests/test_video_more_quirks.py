"""What the video_more family's registrations refuse, before any model runs (tests/tiny_video_more.py's pipelines)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from tiny_registry import TINY

import apg
from apg.errors import UnsupportedError

pytestmark = pytest.mark.usefixtures("single_thread")


def test_wan_animate_refuses_a_call_of_two_segments():
    case = TINY["WanAnimatePipeline"]
    pipe = case.build()
    nine = [Image.new("RGB", (32, 32))] * 9  # segments of 5 frames overlapping by 1: two of them
    with apg.guide(pipe, apg.APG(4.0)), pytest.raises(UnsupportedError, match="2 segments"):
        case.run(pipe, pose_video=nine, face_video=[Image.new("RGB", (16, 16))] * 9)


def test_chronoedit_refuses_temporal_reasoning():
    case = TINY["ChronoEditPipeline"]
    pipe = case.build()
    with apg.guide(pipe, apg.APG(4.0)), pytest.raises(UnsupportedError, match="enable_temporal_reasoning"):
        case.run(pipe, enable_temporal_reasoning=True, num_temporal_reasoning_steps=1)


def test_framepack_refuses_a_call_of_two_sections():
    case = TINY["HunyuanVideoFramepackPipeline"]
    pipe = case.build()
    with apg.guide(pipe, apg.APG(4.0)), pytest.raises(UnsupportedError, match="2 segments"):
        case.run(pipe, num_frames=17)  # windows of 9 frames


@pytest.mark.parametrize("key", ["Kandinsky5I2IPipeline", "Kandinsky5I2VPipeline"])
def test_kandinsky5_zeroed_step_skips_the_model(key):
    """CFG-Zero*'s zeroed first step runs no model: zeros shaped like the channels-last output, not the input."""
    case = TINY[key]
    pipe = case.build()
    outs = []
    for skip in (True, False):
        with apg.set_skipping(skip), apg.guide(pipe, apg.CFGZeroStar(4.0, zero_init_steps=1)):
            outs.append(case.run(pipe))
    assert torch.equal(*outs)
