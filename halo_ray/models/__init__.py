"""Segmentation models: registered backbones, Euclidean / hyperbolic heads, the segmenter.

``build_segmenter(...)`` is the entry point; ``BACKBONES`` is the name → factory registry
(``"tiny"``; paper scale: ``"deeplabv2_r101"``, ``"deeplabv3p_r101"``,
``"deeplabv3p_r101_sep"``, ``"deeplabv3p_r50_deepstem"``, ``"mit_b0"`` …
``"mit_b5"``). ``load_backbone_weights`` / ``load_pretrained`` read local weight files (never
downloading); ``freeze_batchnorm`` freezes BatchNorm layers for fine-tuning.
"""

from .backbones import ASPP, BACKBONES, FeatureExtractor, TinyDeepLab, build_backbone
from .deeplab import (
    ASPPv2,
    DeepLabV2,
    DeepLabV3Plus,
    MulticlassDeepLabV3Plus,
    SeparableDeepLabV3Plus,
    deeplabv2_r101,
    deeplabv3p_r50_deepstem,
    deeplabv3p_r101,
    deeplabv3p_r101_sep,
)
from .heads import CosineHead, EuclideanHead, HyperbolicHead, SegOutput
from .mit import (
    MIT_SIZES,
    MiTSize,
    MixTransformer,
    SegFormer,
    mit_b0,
    mit_b1,
    mit_b2,
    mit_b3,
    mit_b4,
    mit_b5,
)
from .resnet import ResNet, ResNetFeatures, resnet50_deepstem, resnet101
from .segmenter import GEOMETRIES, Segmenter, SegmenterSpec, build_segmenter
from .weights import (
    MIT_LAYOUTS,
    LoadReport,
    WeightsError,
    convert_hf_mit,
    find_encoder,
    freeze_batchnorm,
    load_backbone_weights,
    load_pretrained,
    mit_key_layout,
    read_state_dict,
)

__all__ = [
    "ASPP",
    "BACKBONES",
    "GEOMETRIES",
    "MIT_LAYOUTS",
    "MIT_SIZES",
    "ASPPv2",
    "DeepLabV2",
    "DeepLabV3Plus",
    "CosineHead",
    "EuclideanHead",
    "FeatureExtractor",
    "HyperbolicHead",
    "LoadReport",
    "MiTSize",
    "MixTransformer",
    "MulticlassDeepLabV3Plus",
    "ResNet",
    "ResNetFeatures",
    "SegFormer",
    "SegOutput",
    "Segmenter",
    "SegmenterSpec",
    "SeparableDeepLabV3Plus",
    "TinyDeepLab",
    "WeightsError",
    "build_backbone",
    "build_segmenter",
    "convert_hf_mit",
    "deeplabv2_r101",
    "deeplabv3p_r50_deepstem",
    "deeplabv3p_r101",
    "deeplabv3p_r101_sep",
    "find_encoder",
    "freeze_batchnorm",
    "load_backbone_weights",
    "load_pretrained",
    "mit_b0",
    "mit_b1",
    "mit_b2",
    "mit_b3",
    "mit_b4",
    "mit_b5",
    "mit_key_layout",
    "read_state_dict",
    "resnet50_deepstem",
    "resnet101",
]
