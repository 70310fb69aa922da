"""A run's TensorBoard event file, written with the ``tensorboard`` package alone.

``torch.utils.tensorboard`` imports torch (~1 s of CPU in a fresh process), and a search
trial's process otherwise needs none: it drives its learner actor and writes rows,
checkpoints and this log. :class:`EventLog` writes the same records a ``SummaryWriter`` did
for a run (scalars as ``simple_value``, images as PNG, the HParams plugin's experiment and
session records, a resume's purge marker) through tensorboard's own event-file writer.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

__all__ = ["EventLog", "to_rgb8"]


class EventLog:
    """One run's event file under ``logdir`` (a new file per opening, as TensorBoard expects).

    ``purge_step``: a resumed run's first step; TensorBoard then hides the events at and after
    it that an earlier, interrupted process wrote (its ``SessionLog.START`` marker).
    """

    def __init__(self, logdir: Path | str, purge_step: int | None = None):
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._writer = EventFileWriter(str(logdir), max_queue_size=10, flush_secs=120)
        if purge_step is not None:
            self._add(Event(step=int(purge_step), file_version="brain.Event:2"))
            self._add(Event(step=int(purge_step), session_log=SessionLog(status=SessionLog.START)))

    def _add(self, event) -> None:  # noqa: ANN001 - an Event proto
        event.wall_time = time.time()
        self._writer.add_event(event)

    def _summary(self, summary, step: int | None = None) -> None:  # noqa: ANN001 - a Summary proto
        from tensorboard.compat.proto.event_pb2 import Event

        event = Event(summary=summary)
        if step is not None:
            event.step = int(step)
        self._add(event)

    def scalar(self, tag: str, value: float, step: int) -> None:
        """One point of the scalar series ``tag``."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        self._summary(Summary(value=[Summary.Value(tag=tag, simple_value=float(value))]), step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """An image: ``[H, W]`` or ``[H, W, 3]``, float in [0, 1] or uint8 (:func:`to_rgb8`)."""
        from PIL import Image
        from tensorboard.compat.proto.summary_pb2 import Summary

        rgb = to_rgb8(image)
        png = io.BytesIO()
        Image.fromarray(rgb, "RGB").save(png, format="PNG")
        height, width, channels = rgb.shape
        picture = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=png.getvalue())
        self._summary(Summary(value=[Summary.Value(tag=tag, image=picture)]), step)

    def hparams_start(self, values: Mapping[str, object], metrics: Iterable[str]) -> None:
        """The HParams dashboard's experiment record (the names of ``values`` and ``metrics``)
        and this run's session-start record (its ``values``). As ``SummaryWriter`` did:
        numbers and booleans as numbers, strings as strings, None left out."""
        from tensorboard.plugins.hparams import metadata
        from tensorboard.plugins.hparams.api_pb2 import (
            DataType,
            Experiment,
            HParamInfo,
            MetricInfo,
            MetricName,
        )
        from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionStartInfo

        start = SessionStartInfo()
        infos = []
        for name, value in values.items():
            if value is None:
                continue
            if isinstance(value, (bool, int, float, np.integer, np.floating)):
                start.hparams[name].number_value = float(value)
                infos.append(HParamInfo(name=name, type=DataType.Value("DATA_TYPE_FLOAT64")))
            else:
                start.hparams[name].string_value = str(value)
                infos.append(HParamInfo(name=name, type=DataType.Value("DATA_TYPE_STRING")))
        experiment = Experiment(hparam_infos=infos, metric_infos=[MetricInfo(name=MetricName(tag=m)) for m in metrics])
        self._plugin_record(metadata.EXPERIMENT_TAG, HParamsPluginData(experiment=experiment))
        self._plugin_record(metadata.SESSION_START_INFO_TAG, HParamsPluginData(session_start_info=start))

    def hparams_end(self) -> None:
        """The session-end record (status success): the run reached its last round."""
        from tensorboard.plugins.hparams import metadata
        from tensorboard.plugins.hparams.api_pb2 import Status
        from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo

        end = SessionEndInfo(status=Status.Value("STATUS_SUCCESS"))
        self._plugin_record(metadata.SESSION_END_INFO_TAG, HParamsPluginData(session_end_info=end))

    def _plugin_record(self, tag: str, data) -> None:  # noqa: ANN001 - an HParamsPluginData proto
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.hparams import metadata

        self._summary(Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data))]))

    def flush(self) -> None:
        """Write what is queued to disk (a round's row is on disk: its scalars follow)."""
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the file."""
        self._writer.close()


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` uint8 for a PNG: a grey ``[H, W]`` map repeated over 3 channels; floats
    (taken as [0, 1]) scaled by 255, clipped and truncated, as ``SummaryWriter.add_image`` did."""
    x = np.asarray(image)
    if x.ndim == 2:
        x = np.repeat(x[:, :, None], 3, axis=2)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"an image must be [H, W] or [H, W, 3], but got shape {x.shape}")
    if x.dtype != np.uint8:
        x = (x.astype(np.float32) * 255.0).clip(0, 255).astype(np.uint8)
    return x
