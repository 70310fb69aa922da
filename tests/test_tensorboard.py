"""EventLog: TensorBoard event files written without torch, read back with TensorBoard's own reader."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from halo_ray.run.tensorboard import EventLog, to_rgb8


def _read(folder) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_scalars_and_a_resume_that_purges_the_steps_an_interrupted_process_wrote(tmp_path):
    first = EventLog(tmp_path)
    for step in range(1, 6):
        first.scalar("eval/miou", 10.0 * step, step)
    first.close()
    again = EventLog(tmp_path, purge_step=3)  # the resumed run continues after step 2
    again.scalar("eval/miou", 33.0, 3)
    again.scalar("eval/miou", 44.0, 4)
    again.close()
    points = [(e.step, e.value) for e in _read(tmp_path).Scalars("eval/miou")]
    assert points == [(1, 10.0), (2, 20.0), (3, 33.0), (4, 44.0)]


def test_images_are_pngs_of_the_truncated_255_scale_and_grey_maps_become_rgb(tmp_path):
    grey = np.array([[0.0, 0.5], [1.0, 2.0]], np.float32)  # 2.0 clips to 255
    colour = np.zeros((2, 3, 3), np.uint8)
    colour[0, 1] = (255, 0, 0)
    log = EventLog(tmp_path)
    log.image("pic/grey", grey, 7)
    log.image("pic/colour", colour, 7)
    log.close()
    acc = _read(tmp_path)
    (g,) = acc.Images("pic/grey")
    (c,) = acc.Images("pic/colour")
    assert (g.step, g.height, g.width, c.height, c.width) == (7, 2, 2, 2, 3)
    decoded = np.asarray(Image.open(io.BytesIO(g.encoded_image_string)))
    assert decoded.shape == (2, 2, 3) and (decoded == np.array([[0, 127], [255, 255]])[..., None]).all()
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(c.encoded_image_string))), colour)
    with pytest.raises(ValueError, match=r"\[H, W\] or \[H, W, 3\], but got shape \(2, 2, 4\)"):
        to_rgb8(np.zeros((2, 2, 4)))


def test_hparams_records_hold_the_values_and_metric_names(tmp_path):
    log = EventLog(tmp_path)
    log.hparams_start({"strategy": "halo", "budget": 2.5, "hfr": True, "bins": 8, "weights": None}, ["eval/miou"])
    log.hparams_end()
    log.close()
    records = [HParamsPluginData.FromString(v) for v in _read(tmp_path).PluginTagToContent("hparams").values()]
    (start,) = [r.session_start_info for r in records if r.HasField("session_start_info")]
    (experiment,) = [r.experiment for r in records if r.HasField("experiment")]
    assert len([r for r in records if r.HasField("session_end_info")]) == 1
    assert start.hparams["strategy"].string_value == "halo"
    assert start.hparams["budget"].number_value == 2.5 and start.hparams["bins"].number_value == 8
    assert start.hparams["hfr"].number_value == 1.0  # booleans as numbers, as SummaryWriter wrote them
    assert "weights" not in start.hparams
    assert sorted(h.name for h in experiment.hparam_infos) == ["bins", "budget", "hfr", "strategy"]
    assert [m.name.tag for m in experiment.metric_infos] == ["eval/miou"]


def test_writing_an_event_log_imports_no_torch(tmp_path):
    code = f"""
import json, sys
import numpy as np
from halo_ray.run.tensorboard import EventLog
log = EventLog({str(tmp_path)!r}, purge_step=2)
log.scalar("a", 1.0, 2)
log.image("b", np.zeros((4, 4), np.float32), 2)
log.hparams_start({{"x": 1}}, ["a"])
log.hparams_end()
log.close()
print(json.dumps(dict(torch="torch" in sys.modules)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"torch": False}
