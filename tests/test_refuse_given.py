"""quirks.RefuseGiven: a guided call that passes the argument at all is refused by name, before any model runs."""

import pytest
import torch
from tiny_registry import TINY

import apg
from apg.errors import UnsupportedError

pytestmark = pytest.mark.usefixtures("single_thread")


def test_cosmos2_5_predict_refuses_a_conditioning_video():
    case = TINY["Cosmos2_5_PredictBasePipeline"]
    pipe = case.build()
    calls = []
    pipe.transformer.register_forward_hook(lambda *args: calls.append(1))
    with apg.guide(pipe, apg.APG(4.0)):
        with pytest.raises(UnsupportedError, match=r"^video is not supported by apg with Cosmos2_5_PredictBase"):
            case.run(pipe, video=torch.zeros(1, 3, 1, 32, 32))
        assert not calls
        case.run(pipe)  # text-to-world is guided
    assert calls
