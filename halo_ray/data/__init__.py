"""Data layer: Cityscapes label maps, the embedded synthetic benchmark, and layout readers.

Public names are re-exported here; the implementations live in :mod:`.labels`,
:mod:`.synthetic` and :mod:`.layouts`.
"""

from halo_ray.data.labels import (
    CITYSCAPES_CLASSES,
    IGNORE_INDEX,
    LABEL_ID_TO_TRAIN_ID,
    NUM_CLASSES,
    LabelError,
    to_train_ids,
)
from halo_ray.data.layouts import (
    ACDC_CONDITIONS,
    LAYOUTS,
    ACDCDataset,
    CityscapesDataset,
    DatasetError,
    GTAVDataset,
    InvalidLabelError,
    Sample,
    SegmentationDataset,
    open_dataset,
)
from halo_ray.data.synthetic import (
    BenchmarkPaths,
    SyntheticSample,
    class_frequencies,
    generate_benchmark,
    generate_sample,
)

__all__ = [
    "ACDC_CONDITIONS",
    "ACDCDataset",
    "BenchmarkPaths",
    "CITYSCAPES_CLASSES",
    "CityscapesDataset",
    "DatasetError",
    "GTAVDataset",
    "IGNORE_INDEX",
    "InvalidLabelError",
    "LABEL_ID_TO_TRAIN_ID",
    "LAYOUTS",
    "LabelError",
    "NUM_CLASSES",
    "Sample",
    "SegmentationDataset",
    "SyntheticSample",
    "class_frequencies",
    "generate_benchmark",
    "generate_sample",
    "open_dataset",
    "to_train_ids",
]
