"""Segmentation models: registered backbones, Euclidean / hyperbolic heads, the segmenter.

``build_segmenter(...)`` is the entry point; ``BACKBONES`` is the name → factory registry
(``"tiny"`` today; DeepLab-v2 / v3+ slot in as new entries).
"""

from .backbones import ASPP, BACKBONES, FeatureExtractor, TinyDeepLab, build_backbone
from .heads import EuclideanHead, HyperbolicHead, SegOutput
from .segmenter import GEOMETRIES, Segmenter, SegmenterSpec, build_segmenter

__all__ = [
    "ASPP",
    "BACKBONES",
    "GEOMETRIES",
    "EuclideanHead",
    "FeatureExtractor",
    "HyperbolicHead",
    "SegOutput",
    "Segmenter",
    "SegmenterSpec",
    "TinyDeepLab",
    "build_backbone",
    "build_segmenter",
]
