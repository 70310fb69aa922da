"""Data that scales to real datasets: lazy sets, network input sizes, sparse labels, class-balanced source.

Everything here is asserted by counts (decodes, pixels, picks, draws), never by timing.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from halo_ray.acquisition import picks_per_round
from halo_ray.config import ConfigError, build_config
from halo_ray.data.labels import IGNORE_INDEX
from halo_ray.data.layouts import open_dataset, resize_image, resize_label
from halo_ray.imagesets import ArrayDataset, ImageSet, SparseLabels
from halo_ray.learner import Learner, RunData, class_presence, open_split
from halo_ray.metrics import upsample_chunks
from halo_ray.pool import ArrayOracle, LabelPool
from halo_ray.run import ActiveLearningRun, run_experiment
from halo_ray.sampling import CLASS_BALANCE_SUB_EPOCH, ClassBalancedSampler, class_weights


def _quiet(_: str) -> None:
    pass


class CountingDataset:
    """A reader wrapper that counts (and records) every decode: full items, images, labels."""

    def __init__(self, dataset):
        self._dataset = dataset
        self.names = dataset.names
        self.calls: Counter[str] = Counter()
        self.indices: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def _count(self, kind: str, i: int) -> None:
        with self._lock:
            self.calls[kind] += 1
            self.indices.append((kind, int(i)))

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, i):
        self._count("item", i)
        return self._dataset[i]

    def load_image(self, i):
        self._count("image", i)
        return self._dataset.load_image(i)

    def load_label(self, i):
        self._count("label", i)
        return self._dataset.load_label(i)

    def image_size(self, i):  # a header read, not a decode
        return self._dataset.image_size(i)


def _counting_data(cfg, cache_bytes: int = 0) -> tuple[RunData, dict[str, CountingDataset]]:
    readers = {which: CountingDataset(open_split(cfg, which)) for which in ("source", "train", "val")}
    sizes = {"source": cfg.source_hw, "train": cfg.target_hw, "val": cfg.target_hw}
    sets = {w: ImageSet(r, size=sizes[w], cache_bytes=cache_bytes, workers=1) for w, r in readers.items()}
    return RunData(sets["source"], sets["train"], sets["val"]), readers


class Recorder:
    """Stands between the run and its learner and keeps every call's arguments."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name):
        method = getattr(self.inner, name)

        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return method(*args, **kwargs)

        return call


def _arrays_in(value) -> list:
    """Every tensor/array inside a (nested) argument."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return [value]
    if isinstance(value, dict):
        return [a for v in value.values() for a in _arrays_in(v)]
    if isinstance(value, (list, tuple)):
        return [a for v in value for a in _arrays_in(v)]
    return []


# ----------------------------------------------------------------------------------
# a run whose network input is smaller than the native labels


def test_run_at_a_smaller_target_size_counts_native_pixels(tiny_config_values, tmp_path):
    """Target 64×128 images seen by the network at 32×64: the pool, the budget, the scores and
    the evaluation stay in native label pixels; training batches come at the input size."""
    values = {**tiny_config_values, "rounds": 2, "source_size": [64, 32], "target_size": [64, 32], "log_images": 0}
    cfg = build_config(values)
    learner = Learner(cfg, log=_quiet)
    seen: list[tuple[int, ...]] = []
    forward = learner.trainer._forward_full
    learner.trainer._forward_full = lambda x: (seen.append(tuple(x.shape)), forward(x))[1]
    recorder = Recorder(learner)
    run = ActiveLearningRun(cfg, tmp_path / "run", log=_quiet, tensorboard=False, learner=recorder)
    frame = run.execute()

    H, W, N = 64, 128, 8
    assert run.pool.shapes == [(H, W)] * N
    picks = picks_per_round(H, W, budget_pct=cfg.budget, rounds=cfg.rounds, region_size=3, unit="region")
    ledger = pd.DataFrame(run.pool.ledger())
    assert len(ledger) == N * cfg.rounds and (ledger["picks"] == picks).all()  # exact picks per image
    for i in range(N):  # each image's revealed pixels are native pixels of its own map
        mask = run.pool.labelled_mask(i)
        assert mask.shape == (H, W)
        assert mask.sum() == ledger.loc[ledger["index"] == i, ["pixels", "void"]].to_numpy().sum()
    assert frame["labelled_pixels"].iloc[-1] == ledger["pixels"].sum() == run.pool.labelled_pixels
    assert frame["labelled_pct"].iloc[-1] == pytest.approx(100 * run.pool.labelled_pixels / (N * H * W))
    # the learner trains on exactly the pool's non-void revealed pixels, kept sparse
    assert learner._target_labels.num_pixels == run.pool.labelled_pixels
    assert learner.labelled_target_images() == [i for i in range(N) if (run.pool.labels(i) != 255).any()]

    # every training forward pass ran at the input size (source and target alike)
    steps = cfg.source_steps + cfg.rounds * cfg.round_steps
    assert len(seen) == steps + cfg.rounds * cfg.round_steps  # source every step, target in rounds
    assert {s[-2:] for s in seen} == {(32, 64)} and {s[0] for s in seen} == {cfg.batch_size}
    # score maps are at native label resolution
    assert [tuple(m.shape) for m in learner.score(1, [0, 1])] == [(H, W)] * 2

    # evaluation counts every non-void native val pixel once
    truth = open_dataset("cityscapes", cfg.target_path, split="val")
    native = sum(int((truth.load_label(i) != IGNORE_INDEX).sum()) for i in range(len(truth)))
    ev = learner.evaluate()
    assert ev.pixels == native and native > 6 * 32 * 64

    # the run never hands the learner a dense label tensor: only 1-D arrays, O(labelled pixels)
    calls = {name for name, _, _ in recorder.calls}
    assert {"set_target_labels", "add_target_labels", "train"} <= calls
    for name, args, kwargs in recorder.calls:
        if name == "load_state_dict":  # model / optimizer / RNG state, never labels
            continue
        if name == "checkpoint":  # the pool's own state, which the learner writes into the file with its own
            assert set(args[1]) == set(run.pool.state_dict()) and _arrays_in(args[0]) == []
            continue
        arrays = _arrays_in((args, kwargs))
        if name == "select":  # the earlier pick centres of the images it selects: [n, 2] each
            assert all(a.ndim == 2 and a.shape[1] == 2 and a.shape[0] <= cfg.rounds * picks for a in arrays)
            continue
        assert all(a.ndim <= 1 for a in arrays), name
        if name == "train":
            assert arrays == []
    added = [args[0] for name, args, _ in recorder.calls if name == "add_target_labels"]
    assert len(added) == cfg.rounds  # one call per round, never per step
    rounds_pixels = ledger.groupby("round")["pixels"].sum().tolist()
    assert [len(a["flat"]) for a in added] == rounds_pixels
    assert max(sum(a.nbytes for a in _arrays_in(x)) for x in added) <= 5 * max(rounds_pixels) + 8 * N


# ----------------------------------------------------------------------------------
# decodes


def test_preparing_decodes_nothing_and_a_step_decodes_one_batch(tiny_config_values):
    cfg = build_config({**tiny_config_values, "batch_size": 3, "grad_accum": 3})
    data, readers = _counting_data(cfg)
    learner = Learner(cfg, data=data, log=_quiet)
    assert learner.target_shapes() == [(64, 128)] * 8  # from file headers
    assert all(sum(r.calls.values()) == 0 for r in readers.values())

    learner.train(1, start_step=0, total_steps=2)  # source only
    assert readers["source"].calls == Counter(item=3)
    assert sum(readers["train"].calls.values()) == 0

    pool = LabelPool(learner.target_shapes(), ArrayOracle([open_split(cfg, "train").load_label(i) for i in range(8)]))
    pool.reveal(1, 2, np.array([[10, 10], [30, 60]]), region_size=3)
    pool.reveal(1, 5, np.array([[40, 100]]), region_size=3)
    learner.add_target_labels(pool.revealed_labels())
    learner.train(1, start_step=1, total_steps=2, use_target=True)
    assert readers["source"].calls == Counter(item=6)  # one more batch: full items (image + label)
    assert readers["train"].calls == Counter(image=3)  # images only: labels come from the pool
    assert {i for _, i in readers["train"].indices} <= {2, 5}
    assert sum(readers["val"].calls.values()) == 0

    learner.evaluate()
    assert readers["val"].calls == Counter(item=6)  # each val image once


def test_the_small_set_cache_decodes_each_item_once_and_changes_nothing(tiny_config_values):
    cfg = build_config({**tiny_config_values, "batch_size": 4})
    cached, readers = _counting_data(cfg, cache_bytes=2**30)
    plain, _ = _counting_data(cfg, cache_bytes=0)
    idx = [3, 1, 3, 7]
    for _ in range(2):
        a, b = cached.source.training_batch(idx), plain.source.training_batch(idx)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert readers["source"].calls == Counter(item=4)  # first batch only (3 repeated within it)
    tiny = ImageSet(readers["val"], cache_bytes=64 * 128 * 4 * 6 - 1)  # the set does not fit: no cache
    tiny.images([0]), tiny.images([0])
    assert readers["val"].calls == Counter(image=2)


# ----------------------------------------------------------------------------------
# sparse labels and resizing


def test_sparse_labels_build_dense_maps_only_for_the_batch():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 19, size=(4, 10, 20)).astype(np.uint8)
    truth[1, :, :5] = IGNORE_INDEX
    pool = LabelPool([(10, 20)] * 4, ArrayOracle(truth))
    pool.reveal(1, 1, np.array([[5, 4], [5, 10]]), region_size=3)  # one square 2/3 void
    pool.reveal(1, 3, np.array([[0, 0]]), region_size=3)
    pool.reveal(2, 3, np.array([[9, 19]]), region_size=1)
    revealed = pool.revealed_labels()
    assert revealed["counts"].tolist() == [0, 9 + 3, 0, 4 + 1]  # void pixels are left out
    labels = SparseLabels.from_revealed(pool.revealed_labels(rounds=[1]))
    labels.add(pool.revealed_labels(rounds=[2]))
    assert labels.labelled_images().tolist() == [1, 3]
    for i in range(4):
        assert np.array_equal(labels.dense(i), pool.labels(i))
    small = labels.batch([3, 1], (5, 10))  # [2, 5, 10]
    assert small.shape == (2, 5, 10) and small.dtype == torch.uint8
    assert np.array_equal(small[1].numpy(), resize_label(pool.labels(1), (5, 10)))
    assert labels.nbytes() == 5 * labels.num_pixels == 5 * 17


def test_resize_helpers_follow_pil_and_keep_ids():
    label = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    label[0, 0] = IGNORE_INDEX
    out = resize_label(label, (6, 8))
    assert set(np.unique(out)) == set(np.unique(label))  # nearest: no new ids
    assert np.array_equal(out, np.asarray(Image.fromarray(label).resize((8, 6), Image.Resampling.NEAREST)))
    image = np.random.default_rng(1).integers(0, 256, (6, 8, 3)).astype(np.uint8)
    bicubic = np.asarray(Image.fromarray(image).resize((5, 3), Image.Resampling.BICUBIC))
    assert np.array_equal(resize_image(image, (3, 5)), bicubic)
    assert resize_image(image, (6, 8)) is image
    with pytest.raises(ValueError, match="size must be None or"):
        resize_label(label, (0, 4))


def test_evaluation_in_pieces_equals_evaluation_in_one(monkeypatch):
    import halo_ray.metrics as metrics
    import halo_ray.training as training

    images = torch.randint(0, 256, (5, 16, 24, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    labels = torch.randint(0, 19, (5, 16, 24), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    data = ImageSet.from_arrays(images, labels)
    trainer = training.Trainer(build_config(dict(embed_dim=8, eval_batch_size=5, device="cpu")), 19, torch.device("cpu"))
    whole = trainer.evaluate(data)
    assert upsample_chunks([(16, 24)] * 5, 19 + 8) == [[0, 1, 2, 3, 4]]
    monkeypatch.setattr(metrics, "MAX_UPSAMPLED_VALUES", 2 * 27 * 16 * 24)
    assert upsample_chunks([(16, 24)] * 5, 27) == [[0, 1], [2, 3], [4]]
    assert upsample_chunks([(2, 2), (2, 2), (3, 2)], 1) == [[0, 1], [2]]  # a new shape starts a piece
    pieces = trainer.evaluate(data)
    assert pieces.pixels == whole.pixels == 5 * 16 * 24
    np.testing.assert_array_equal(pieces.iou, whole.iou)
    np.testing.assert_allclose(pieces.radius_per_class, whole.radius_per_class, rtol=1e-12)


def test_train_flip_off_keeps_the_draws_and_changes_the_update():
    from halo_ray.training import Trainer

    images = torch.randint(0, 256, (4, 16, 24, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    labels = torch.randint(0, 19, (4, 16, 24), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    source = ImageSet.from_arrays(images, labels)
    params, states = {}, {}
    for flip in (True, False):
        cfg = build_config(dict(embed_dim=8, batch_size=4, lr=0.05, device="cpu", train_flip=flip))
        trainer, gen = Trainer(cfg, 19, torch.device("cpu")), torch.Generator().manual_seed(3)
        trainer.train(2, source=source, generator=gen, start_step=0, total_steps=4)
        params[flip] = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        states[flip] = gen.get_state()
    assert torch.equal(states[True], states[False])  # the same draws, flips included
    assert not torch.equal(params[True], params[False])


# ----------------------------------------------------------------------------------
# class-balanced source sampling


def _rare_class_source(n: int = 20, rare: int = 7) -> ArrayDataset:
    """Images of road/building (0/2); image ``rare`` also holds a patch of class 5 (pole)."""
    images = np.zeros((n, 8, 8, 3), np.uint8)
    images[:, :, :, 0] = np.arange(n, dtype=np.uint8)[:, None, None]
    labels = np.zeros((n, 8, 8), np.uint8)
    labels[:, 4:] = 2
    labels[rare, :2, :2] = 5
    labels[:, 0, -1] = IGNORE_INDEX
    return ArrayDataset(images, labels)


def test_class_balanced_sampling_favours_the_image_of_a_rare_class():
    data = _rare_class_source()
    presence = class_presence(data, 19)
    assert presence.sum(axis=0)[[0, 2, 5]].tolist() == [20, 20, 1] and presence.sum() == 41
    sampler = ClassBalancedSampler(lambda: presence, 19, seed=0)
    drawn = sampler.draw(400, torch.Generator().manual_seed(0)).tolist()
    counts = Counter(drawn)
    # uniform sampling gives image 7 400/20 = 20 draws; a class with a small share has weight
    # up to 1/log(1.01) ≈ 100 against 1/log(1.01 + 1/2) ≈ 2.4 for road and building at worst
    assert counts[7] == 197
    assert counts[7] > 5 * 400 / 20
    assert set(counts) == set(range(20))
    w = class_weights(np.array([3, 0, 3] + [0] * 16), presence.any(axis=0))
    ratio = np.log(1.51) / np.log(1.01)  # share 1/2 for road and building, 0 for pole
    np.testing.assert_allclose(w[[0, 2, 5]], np.array([1, 1, ratio]) / (2 + ratio))
    assert w[[1, 3, 18]].tolist() == [0, 0, 0]  # absent classes are never drawn


def test_class_balanced_draws_resume_exactly_and_restart_each_sub_epoch():
    presence = class_presence(_rare_class_source(), 19)
    straight = ClassBalancedSampler(lambda: presence, 19, seed=4)
    gen = torch.Generator().manual_seed(1)
    whole = straight.draw(CLASS_BALANCE_SUB_EPOCH + 50, gen).tolist()
    assert straight.drawn == 50 and straight.counts.sum() == presence[whole[-50:]].sum()

    first = ClassBalancedSampler(lambda: presence, 19, seed=4)
    gen = torch.Generator().manual_seed(1)
    head = first.draw(1234, gen).tolist()
    state, gen_state = first.state_dict(), gen.get_state()
    again = ClassBalancedSampler(lambda: presence, 19, seed=4)
    again.load_state_dict(state)
    gen = torch.Generator()
    gen.set_state(gen_state)
    assert head + again.draw(CLASS_BALANCE_SUB_EPOCH + 50 - 1234, gen).tolist() == whole


def test_learner_checkpoint_carries_the_class_balanced_state(tiny_benchmark, tmp_path):
    """Source draws of 3 steps straight == 1 step, checkpoint (weights_only), 2 steps in a new learner;
    the class scan runs once, lazily, and is cached beside the source checkpoints."""
    values = dict(
        data_root=str(tiny_benchmark), generate_data=False, batch_size=2, embed_dim=8, num_threads=1,
        device="cpu", class_balanced_source=True, source_cache=str(tmp_path / "cache"),
    )
    cfg = build_config(values)

    def learner() -> tuple[Learner, CountingDataset]:
        data, readers = _counting_data(cfg)
        return Learner(cfg, data=data, log=_quiet), readers["source"]

    a, reader_a = learner()
    assert sum(reader_a.calls.values()) == 0  # nothing scanned before training
    a.train(3, start_step=0, total_steps=3)
    assert reader_a.calls["label"] == 16 and len(list((tmp_path / "cache").glob("classes-*.npy"))) == 1
    straight = [i for kind, i in reader_a.indices if kind == "item"]

    b, reader_b = learner()
    b.train(1, start_step=0, total_steps=3)
    path = tmp_path / "state.pt"
    torch.save(b.state_dict(), path)
    c, reader_c = learner()
    c.load_state_dict(torch.load(path, weights_only=True))
    c.train(2, start_step=1, total_steps=3)
    resumed = [i for kind, i in reader_b.indices + reader_c.indices if kind == "item"]
    assert resumed == straight and len(straight) == 6
    assert reader_b.calls["label"] == reader_c.calls["label"] == 0  # read from the cache file
    for name, tensor in a.model_state().items():
        assert torch.equal(tensor, c.model_state()[name]), name


# ----------------------------------------------------------------------------------
# config


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("source_size", [1280], "source_size must be null (native size) or [W, H] with two integers >= 1"),
        ("source_size", [1280, 0], "but got source_size=[1280, 0]"),
        ("target_size", [1280, 640, 3], "target_size must be null (native size) or [W, H]"),
        ("target_size", [1280.5, 640], "target_size must be an integer"),
        ("target_size", "wide", "target_size must be an integer"),
        ("target_size", 640, "target_size must be a list"),
        ("train_flip", "sometimes", "train_flip must be true or false"),
        ("class_balanced_source", 3, "class_balanced_source must be true or false"),
    ],
)
def test_bad_input_sizes_and_switches_are_refused_naming_the_key(key, value, expected):
    with pytest.raises(ConfigError) as err:
        build_config({key: value}, origin="exp.yaml")
    assert expected in str(err.value) and str(err.value).startswith("exp.yaml:")


def test_input_sizes_are_w_h_and_shape_the_source_key():
    cfg = build_config(dict(source_size="1280,720", target_size=[1280, 640]))
    assert cfg.source_hw == (720, 1280) and cfg.target_hw == (640, 1280)
    assert cfg.to_dict()["source_size"] == [1280, 720]
    assert build_config(cfg.to_dict()) == cfg  # the JSON form reads back
    base = build_config({})
    assert base.source_key() != base.replace(source_size=(1280, 720)).source_key()
    assert base.source_key() != base.replace(class_balanced_source=True).source_key()
    assert base.source_key() != base.replace(train_flip=False).source_key()
    assert base.source_key() == base.replace(target_size=(1280, 640)).source_key()  # no target in source training
    shipped = build_config({}).to_dict()
    from halo_ray.config import load_config

    file_cfg = load_config(Path(__file__).resolve().parents[1] / "experiments" / "synthetic.yaml").to_dict()
    for key in ("source_size", "target_size", "train_flip", "class_balanced_source"):
        assert file_cfg[key] == shipped[key], key


def test_a_checkpoint_written_before_the_new_keys_resumes_with_their_defaults():
    from halo_ray.run import check_same_config as _check_same_config

    cfg = build_config({})
    new_keys = ("source_size", "target_size", "train_flip", "class_balanced_source")
    older = {k: v for k, v in cfg.to_dict().items() if k not in new_keys}
    _check_same_config(cfg, older, "round_002.pt")  # the defaults stand in for the missing keys
    with pytest.raises(ConfigError, match=r"target_size: checkpoint=None now=\[1280, 640\]"):
        _check_same_config(cfg.replace(target_size=(1280, 640)), older, "round_002.pt")


# ----------------------------------------------------------------------------------
# prefetching: the next step's images decode while this step trains


class ThreadRecordingDataset(ArrayDataset):
    """Records, per image decode, the index and the name of the thread that decoded it."""

    def __init__(self, images, labels):
        super().__init__(images, labels)
        self.loads: list[tuple[int, str]] = []
        self._lock = threading.Lock()

    def load_image(self, i):
        with self._lock:
            self.loads.append((int(i), threading.current_thread().name))
        return super().load_image(i)

    def __getitem__(self, i):
        self.load_image(i)
        return super().__getitem__(i)


def _prefetch_run(prefetch: bool, workers: int, *, size=None):
    """Four steps on source + sparse target labels (class-balanced source, 2 micro-batches):
    the trained parameters, the generator state and the recording readers."""
    from halo_ray.imagesets import SparseLabels
    from halo_ray.sampling import ClassBalancedSampler
    from halo_ray.training import Trainer

    gen = torch.Generator().manual_seed(0)
    src_images = torch.randint(0, 256, (6, 24, 40, 3), generator=gen, dtype=torch.uint8)
    src_labels = torch.randint(0, 19, (6, 24, 40), generator=gen).to(torch.uint8)
    tgt_images = torch.randint(0, 256, (5, 24, 40, 3), generator=gen, dtype=torch.uint8)
    dense = np.full((5, 24, 40), 255, np.uint8)
    dense[[0, 2, 3], 4:10, 6:14] = 5
    readers = {"source": ThreadRecordingDataset(src_images, src_labels),
               "target": ThreadRecordingDataset(tgt_images, torch.from_numpy(dense))}
    source = ImageSet(readers["source"], size=size, cache_bytes=0, workers=workers)
    target = ImageSet(readers["target"], size=size, cache_bytes=0, workers=workers)
    cfg = build_config(dict(embed_dim=8, batch_size=4, grad_accum=2, lr=0.05, device="cpu", num_threads=1,
                            negative_learning=True, prefetch=prefetch, decode_workers=workers))
    trainer = Trainer(cfg, 19, torch.device("cpu"))
    sampler = ClassBalancedSampler(lambda: np.eye(6, 19, dtype=bool), 19, seed=1)
    run_gen = torch.Generator().manual_seed(3)
    trainer.train(4, source=source, target=target, target_labels=SparseLabels.from_dense(dense),
                  generator=run_gen, start_step=0, total_steps=8, source_sampler=sampler.draw)
    params = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    return params, run_gen.get_state(), sampler.state_dict(), readers


@pytest.mark.parametrize("workers", [1, 3])
def test_prefetching_decodes_ahead_in_its_thread_and_changes_nothing(workers):
    params, state, sampler, readers = _prefetch_run(False, workers)
    params_p, state_p, sampler_p, readers_p = _prefetch_run(True, workers, size=None)
    assert torch.equal(params, params_p)  # identical training
    assert torch.equal(state, state_p)  # the generator stopped where it would: no draw beyond step 4
    assert sampler.keys() == sampler_p.keys()
    for key in sampler:  # the class-balanced sampler's counters too
        assert np.array_equal(np.asarray(sampler[key]), np.asarray(sampler_p[key])), key
    for which in ("source", "target"):
        # the same images (decode threads may finish a batch's items out of order)
        assert sorted(i for i, _ in readers[which].loads) == sorted(i for i, _ in readers_p[which].loads)
        assert len(readers_p[which].loads) == 4 * 4  # exactly batch_size per step, nothing extra
        threads = [name for _, name in readers_p[which].loads]
        off_main = [name for name in threads if name != "MainThread"]
        # steps 2-4 were loaded away from the trainer's thread (by the prefetch thread itself,
        # or by the decode threads it drives); step 1 before the pipeline fills
        assert len(off_main) >= 3 * 4, threads
        if workers == 1:  # without prefetching, everything decodes in the trainer's thread
            assert all(name == "MainThread" for _, name in readers[which].loads)


def test_resize_happens_in_the_decode_threads():
    """With input sizes the bicubic resize runs where the decode runs, and the batch equals
    a one-thread read of the same items."""
    images = torch.randint(0, 256, (4, 30, 50, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    labels = torch.randint(0, 19, (4, 30, 50), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    one = ImageSet.from_arrays(images, labels, size=(12, 20), cache_bytes=0, workers=1)
    many = ImageSet.from_arrays(images, labels, size=(12, 20), cache_bytes=0, workers=3)
    for a, b in zip(one.training_batch([3, 0, 2, 0]), many.training_batch([3, 0, 2, 0]), strict=True):
        assert torch.equal(a, b)
    assert tuple(one.images([1]).shape) == (1, 12, 20, 3)
    imgs, labs = many.evaluation_batch([1, 2])
    assert tuple(imgs.shape) == (2, 12, 20, 3) and [tuple(lab.shape) for lab in labs] == [(30, 50)] * 2


def test_runtime_keys_may_change_on_resume(tiny_config_values, tmp_path):
    """decode_workers / prefetch / num_threads / device are how, not what: a resume may change
    them (another node); with the same arithmetic (threads, device) the result is bit-identical
    to the uninterrupted run's."""
    values = {**tiny_config_values, "rounds": 2, "decode_workers": 1, "prefetch": False}
    full = run_experiment(build_config(values), tmp_path / "full", log=_quiet, tensorboard=False)
    cut = ActiveLearningRun(build_config(values), tmp_path / "cut", log=_quiet, tensorboard=False)
    cut.start_or_resume(False)
    cut.run_round(1)  # ... and the process ends here
    cut.close()
    with pytest.raises(ConfigError, match="different config.*budget"):  # a key that changes results
        run_experiment(build_config({**values, "budget": 7.0}), tmp_path / "cut", resume=True, log=_quiet,
                       tensorboard=False)
    changed = build_config({**values, "decode_workers": 3, "prefetch": True})
    for runtime in ({"num_threads": 2}, {"device": "cpu"}, {"deterministic": not values["deterministic"]}):
        assert build_config({**values, **runtime}).run_id() == build_config(values).run_id()
    assert changed.run_id() == build_config(values).run_id()
    resumed = run_experiment(changed, tmp_path / "cut", resume=True, log=_quiet, tensorboard=False)
    cols = ["round", "miou", "labelled_pixels"]
    pd.testing.assert_frame_equal(full[cols], resumed[cols])
