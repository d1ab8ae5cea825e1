"""Test helpers for apg.evaluation: a tiny registered feature extractor and a fake pipeline.

Also run as a script by the distributed and resume tests (see `main`).
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

EXTRACTOR = "apg-test-pool"


class PoolFeatures(FeatureExtractorBase):
    """Colour layout features, no weights: 4x4 average-pooled RGB (48-d) and 10 fixed random 'logits'."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        self.register_buffer("projection", torch.randn(48, 10, generator=torch.Generator().manual_seed(0)))

    @staticmethod
    def get_provided_features_list():
        return "pool", "logits_unbiased"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits_unbiased", "fid": "pool", "kid": "pool", "prc": "pool"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    def forward(self, x):  # [B, 3, H, W], uint8
        pool = F.adaptive_avg_pool2d(x.float() / 255.0, 4).flatten(1)  # [B, 48]
        features = {"pool": pool, "logits_unbiased": 4.0 * pool @ self.projection}
        return tuple(features[name] for name in self.features_list)


def register_extractor():
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(EXTRACTOR, PoolFeatures)
    return EXTRACTOR
