"""A search trial's start-up: what its driver and label pool import before the actors start.

A trial's driver creates its actors before it imports the run loop, so that the actors'
torch imports and the driver's overlap (docs/architecture.md §3). These tests run a fresh
interpreter, as a trial's process is, and look at what it imported.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _fresh(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object as its last line."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_trials_driver_imports_no_torch_before_it_creates_its_actors(tiny_config_values):
    """Everything ``run_trial`` does before ``start_trial_actors`` returns: import the trainable's
    module, validate the config, read the target-train headers, build the square pool."""
    code = f"""
import json, sys
import halo_ray.distributed.search
from halo_ray.config import build_config
from halo_ray.splits import open_pool, open_split
cfg = build_config(json.loads({json.dumps(tiny_config_values)!r}))
train = open_split(cfg, "train")
shapes = [tuple(train.image_size(i)) for i in range(len(train))]
pool = open_pool(cfg, shapes)
print(json.dumps(dict(torch="torch" in sys.modules, geoopt="geoopt" in sys.modules,
                      pool=type(pool).__name__, images=len(shapes), shape=shapes[0])))
"""
    seen = _fresh(code)
    assert seen == {"torch": False, "geoopt": False, "pool": "LabelPool", "images": 8, "shape": [64, 128]}


@pytest.mark.parametrize("unit", ["region", "pixel"])
def test_the_square_and_pixel_pool_actor_builds_without_torch(tiny_config_values, unit):
    """The pool actor of a square or pixel run reveals real labels, hands out what a round asks
    of it, and checkpoints and restores its state without ever importing torch (~1 s of CPU,
    paid at round 0's checkpoint when its state was tensors)."""
    code = f"""
import json, sys
import numpy as np
from halo_ray.config import build_config
from halo_ray.distributed.actors import PoolActor
cfg = build_config({{**json.loads({json.dumps(tiny_config_values)!r}), "unit": "{unit}"}})
host = PoolActor(cfg, [(64, 128)] * 8)
state0 = host.call("state_dict")
assert host.call("images_without", 1) == list(range(8))
host.call("reveal_many", 1, [0], [np.array([[10, 20]], np.int32)], region_size=3, unit="{unit}")
host.call("centres_of", [0, 1])
host.call("revealed_labels", rounds=[1])
again = PoolActor(cfg, [(64, 128)] * 8)
again.call("load_state_dict", state0)
again.call("load_state_dict", host.call("state_dict"))
done = again.call("summary")
print(json.dumps(dict(torch="torch" in sys.modules, labelled=int(done["labelled_pixels"] + done["void_pixels"]),
                      heavy=[m for m in ("ray.tune", "pandas", "pyarrow", "halo_ray.distributed.space")
                             if m in sys.modules])))
"""
    seen = _fresh(code)
    assert seen["torch"] is False
    assert seen["heavy"] == []  # Ray Tune and pandas cost a fresh pool process ~1.5 s of CPU
    assert seen["labelled"] == (9 if unit == "region" else 1)


def test_the_multiclass_pool_actor_answers_and_checkpoints_without_torch(tiny_config_values, tmp_path):
    """The multi-class unit's pool actor (a RegionPool) fills and reads the region answers
    from ground truth, hands out costs, availability and answers, reveals regions and
    checkpoints and restores, without importing torch: the answers are numpy arithmetic
    (:func:`halo_ray.region_answers.answer_table`)."""
    from halo_ray.config import build_config
    from halo_ray.splits import ensure_superpixels

    values = {**tiny_config_values, "unit": "multiclass", "strategy": "pixbal", "clicks_per_round": 30,
              "superpixels": "grid", "num_superpixels": 32, "superpixel_cache": str(tmp_path / "spx")}
    ensure_superpixels(build_config(values), log=lambda _: None)
    code = f"""
import json, sys
import numpy as np
from halo_ray.config import build_config
from halo_ray.distributed.actors import PoolActor
cfg = build_config(json.loads({json.dumps(values)!r}))
host = PoolActor(cfg, [(64, 128)] * 8)
state0 = host.call("state_dict")
counts = [int(len(c)) for c in host.call("costs_of", list(range(8)))]
available = host.call("available_table", counts, before_round=1)
host.call("reveal", 1, 0, np.array([0, 3]))
answers = host.call("targets_of", [0], counts)
again = PoolActor(cfg, [(64, 128)] * 8)
again.call("load_state_dict", state0)
again.call("load_state_dict", host.call("state_dict"))
print(json.dumps(dict(torch="torch" in sys.modules, regions=counts, available=int(available.sum()),
                      answered=int(answers[0][1].sum()), clicks=int(again.call("summary")["clicks"]))))
"""
    seen = _fresh(code)
    assert seen["torch"] is False
    assert seen["regions"] == [32] * 8 and seen["available"] == 8 * 32 and seen["answered"] == 2
    assert seen["clicks"] > 0


def test_a_trials_run_loop_imports_no_model_code_and_no_torch():
    """What ``run_trial`` imports while its actors start: the run loop drives the learner actor,
    so torch (~1 s of CPU), geoopt (with scipy.optimize), the models and the learner stay out of
    the trial's process. (A whole round without torch: tests/test_search.py.)"""
    code = """
import json, sys
import halo_ray.distributed.search
from halo_ray.run import ActiveLearningRun, load_checkpoint
from halo_ray.acquisition import picks_per_round
print(json.dumps(dict(loaded=[m for m in ("torch", "geoopt", "scipy.optimize", "halo_ray.learner", "halo_ray.models",
                                          "halo_ray.hyperbolic", "torch.utils.tensorboard") if m in sys.modules])))
"""
    assert _fresh(code) == {"loaded": []}


def test_every_backbone_name_is_a_registered_backbone():
    """The torch-free names the config checks against are exactly the model registry's keys."""
    from halo_ray.models import BACKBONES
    from halo_ray.names import BACKBONE_NAMES

    assert tuple(BACKBONES) == BACKBONE_NAMES


def test_the_warm_learner_hook_imports_what_a_learner_needs_and_touches_no_gpu():
    """A learner process started ahead runs ``preimport``: afterwards torch, geoopt, the learner,
    the actor classes and the checkpoint code (the learner makes checkpoint bytes) are loaded, ``torch._dynamo`` is not (no learner needs it), and no
    CUDA query ran (the GPU Ray later assigns the actor is the one its first CUDA call sees)."""
    code = """
import json, sys, time
import torch
calls = []
for name in ("is_available", "device_count", "init", "_lazy_init", "current_device", "get_device_properties"):
    original = getattr(torch.cuda, name)
    def spy(*args, _original=original, _name=name, **kwargs):
        calls.append(_name)
        return _original(*args, **kwargs)
    setattr(torch.cuda, name, spy)
from halo_ray.distributed import warm
before = time.time()
warm.preimport()
print(json.dumps(dict(
    modules=[m for m in ("torch._dynamo", "geoopt", "halo_ray.learner", "halo_ray.distributed.actors",
                         "halo_ray.run.checkpointer") if m in sys.modules], cuda=calls,
    initialized=torch.cuda.is_initialized(), stamped=before <= warm.PREIMPORTED_AT,
    started=warm.process_started_at() <= before)))
"""
    seen = _fresh(code)
    assert seen == {"modules": ["geoopt", "halo_ray.learner", "halo_ray.distributed.actors", "halo_ray.run.checkpointer"],
                    "cuda": [], "initialized": False,
                    "stamped": True, "started": True}


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_a_learner_trains_and_checkpoints_without_torch_dynamo(optimizer):
    """A learner process never imports ``torch._dynamo`` (~1.4 s of CPU; ``torch.optim`` imports
    it at every optimizer's construction and step, halo_ray.optim does not): training steps,
    scoring outputs, and a state dict through ``torch.save``/``torch.load``."""
    code = f"""
import io, json, sys, torch
from halo_ray.config import build_config
from halo_ray.imagesets import ImageSet
from halo_ray.training import Trainer
gen = torch.Generator().manual_seed(0)
images = torch.randint(0, 256, (4, 32, 48, 3), generator=gen, dtype=torch.uint8)
labels = torch.randint(0, 19, (4, 32, 48), generator=gen).to(torch.uint8)
cfg = build_config(dict(embed_dim=8, batch_size=2, num_threads=1, device="cpu", optimizer="{optimizer}"))
trainer = Trainer(cfg, 19, torch.device("cpu"))
loss = trainer.train(2, source=ImageSet.from_arrays(images, labels), generator=torch.Generator().manual_seed(0),
                     start_step=0, total_steps=4)
trainer.predict(ImageSet.from_arrays(images, labels).images([0]))
buffer = io.BytesIO()
torch.save(trainer.state_dict(), buffer)
buffer.seek(0)
trainer.load_state_dict(torch.load(buffer, weights_only=True))
print(json.dumps(dict(dynamo="torch._dynamo" in sys.modules, finite=loss == loss)))
"""
    assert _fresh(code) == {"dynamo": False, "finite": True}


def test_the_acquisition_package_loads_each_public_name_from_its_home_on_first_use():
    """``halo_ray.acquisition`` imports its submodules lazily, so ``picks_per_round`` comes
    without torch; every public name still resolves, to the submodule's own object."""
    code = """
import importlib, json, sys
import halo_ray.acquisition as acquisition
from halo_ray.acquisition import picks_per_round
no_torch = "torch" not in sys.modules
same = all(getattr(acquisition, n) is getattr(importlib.import_module("halo_ray.acquisition." + m), n)
           for n, m in acquisition._HOMES.items())
print(json.dumps(dict(no_torch=no_torch, all=sorted(acquisition.__all__) == sorted(acquisition._HOMES), same=same,
                      listed=set(acquisition.__all__) <= set(dir(acquisition)), picks=picks_per_round(
                          64, 128, budget_pct=5, rounds=5, region_size=3))))
"""
    assert _fresh(code) == {"no_torch": True, "all": True, "same": True, "listed": True, "picks": 10}
