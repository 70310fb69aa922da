"""Metrics against closed-form values; loop semantics of a whole run (losses: test_losses.py)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from halo_ray.config import ConfigError, build_config
from halo_ray.metrics import confusion_matrix, iou_from_confusion, radius_iou_spearman
from halo_ray.run import run_experiment
from halo_ray.training import normalize, poly_lr


def test_confusion_and_iou_closed_form():
    label = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 2]])
    conf = confusion_matrix(pred, label, 4)
    assert conf.sum() == 6  # ignore pixels dropped
    iou = iou_from_confusion(conf)
    # class 0: tp 1, fp 1 (a 2 predicted as 0), fn 1 → 1/3; class 1: tp 2, fp 1 → 2/3; class 2: tp 1, fn 1 → 1/2
    np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 3, 1 / 2])
    assert math.isnan(iou[3])  # absent class is NaN, not 0


def test_poly_schedule():
    assert poly_lr(0.01, 0, 100, 0.9) == 0.01
    assert poly_lr(0.01, 50, 100, 0.9) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(0.01, 100, 100, 0.9) == 0.0


def test_radius_iou_spearman():
    radius = np.array([1.0, 2.0, 3.0, np.nan, 4.0])
    iou = np.array([90.0, 80.0, 70.0, 50.0, 10.0])
    assert radius_iou_spearman(radius, iou) == pytest.approx(-1.0)
    assert math.isnan(radius_iou_spearman(np.array([1.0, 2.0]), np.array([1.0, 2.0])))


def test_radius_iou_spearman_equals_scipys_with_ties_and_gaps():
    """Our numpy ρ (average ranks for ties) is scipy's on random classes with ties and NaNs."""
    from scipy import stats

    from halo_ray.metrics import average_ranks

    rng = np.random.default_rng(0)
    for _ in range(200):
        radius = rng.integers(0, 6, 19).astype(float)  # many ties
        iou = np.round(rng.uniform(0, 100, 19), 0)
        radius[rng.random(19) < 0.2] = np.nan
        ok = np.isfinite(radius) & np.isfinite(iou)
        want = stats.spearmanr(radius[ok], iou[ok]).statistic if np.ptp(radius[ok]) and np.ptp(iou[ok]) else np.nan
        assert radius_iou_spearman(radius, iou) == pytest.approx(want, abs=1e-12, nan_ok=True)
        np.testing.assert_array_equal(average_ranks(iou), stats.rankdata(iou, method="average"))


def _quiet(_: str) -> None:
    pass


def test_retrain_restarts_from_the_source_model_each_round(tiny_config_values, tmp_path):
    values = {**tiny_config_values, "rounds": 2, "strategy": "entropy"}
    # no training after selection: a retrain round is exactly the source model again
    frozen = run_experiment(
        build_config({**values, "loop": "retrain", "round_steps": 0}), tmp_path / "a", log=_quiet, tensorboard=False
    )
    assert frozen["miou"].nunique() == 1
    assert frozen["labelled_pct"].is_monotonic_increasing and frozen["labelled_pct"].iloc[-1] > 0
    retrain = run_experiment(build_config({**values, "loop": "retrain"}), tmp_path / "b", log=_quiet, tensorboard=False)
    continuous = run_experiment(build_config(values), tmp_path / "c", log=_quiet, tensorboard=False)
    # retrain's source phase has its own schedule (poly over source_steps), shared with `frozen`
    assert retrain["miou"].iloc[0] == frozen["miou"].iloc[0]
    assert continuous["miou"].iloc[0] != retrain["miou"].iloc[0]  # poly over source + rounds
    assert retrain["miou"].iloc[2] != frozen["miou"].iloc[2]


# ----------------------------------------------------------------------------------
# paper-scale training options: warm-up, gradient accumulation, head LR, weights, frozen BN


def _trainer(**values):
    from halo_ray.training import Trainer

    base = dict(embed_dim=8, batch_size=4, lr=0.05, num_threads=1, device="cpu")
    return Trainer(build_config({**base, **values}), 19, torch.device("cpu"))


def _arrays(n: int, seed: int, height: int = 32, width: int = 48):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, height, width, 3), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 19, (n, height, width), generator=gen).to(torch.uint8)
    labels[:, :4] = 255  # void rows: the loss averages over labelled pixels only
    return images, labels


def _tensor_set(n: int, seed: int, height: int = 32, width: int = 48):
    from halo_ray.imagesets import ImageSet

    return ImageSet.from_arrays(*_arrays(n, seed, height, width))


def test_warmup_scales_the_poly_rate_linearly():
    from halo_ray.training import scheduled_lr

    cfg = build_config(dict(lr=0.1, poly_power=0.9, warmup_steps=10, warmup_start=0.01))
    assert scheduled_lr(cfg, 0, 100) == pytest.approx(0.1 * 0.01)
    assert scheduled_lr(cfg, 5, 100) == pytest.approx(0.1 * 0.95**0.9 * (0.01 + 0.99 * 0.5))
    assert scheduled_lr(cfg, 10, 100) == pytest.approx(0.1 * 0.9**0.9)  # warm-up over: poly alone


@pytest.mark.parametrize("geometry", ["euclidean", "hyperbolic"])
def test_gradient_accumulation_equals_the_whole_batch(geometry):
    """With frozen BatchNorm, 2 or 4 micro-batches give the whole batch's update (cross-entropies:
    summed over the micro-batches, divided by the whole batch's labelled pixels)."""
    from halo_ray.imagesets import SparseLabels

    source, target = _tensor_set(6, 0), _tensor_set(5, 1)
    dense = _arrays(5, 1)[1].clone()
    dense[2] = 255  # an unlabelled target image is never drawn
    target_labels = SparseLabels.from_dense(dense)
    assert target_labels.labelled_images().tolist() == [0, 1, 3, 4]
    params = {}
    extra = dict(freeze_bn=True, hfr=False, geometry=geometry, strategy="entropy")
    for accum in (1, 2, 4):
        trainer = _trainer(grad_accum=accum, **extra)
        trainer.train(
            2, source=source, generator=torch.Generator().manual_seed(7), start_step=0, total_steps=10,
            target=target, target_labels=target_labels,
        )
        params[accum] = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    untrained = torch.cat([p.detach().flatten() for p in _trainer(**extra).model.parameters()])
    assert not torch.allclose(params[1], untrained)  # the steps did move the weights
    torch.testing.assert_close(params[2], params[1], atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(params[4], params[1], atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("accum", [1, 2])
def test_the_papers_losses_are_per_micro_batch_as_on_the_released_gpus(accum):
    """A step's loss: CE over the whole batch + 0.1·LCR + NL, where LCR and NL are the released
    losses of each micro-batch (one reference GPU's batch), averaged over the micro-batches."""
    from halo_ray.losses import local_consistency_loss, negative_learning_loss

    trainer = _trainer(freeze_bn=True, hfr=False, grad_accum=accum, local_consistency=0.1, negative_learning=True)
    images, labels = _arrays(4, 3)
    t_images, t_labels = _arrays(4, 4)
    t_labels[:, 8:] = 255  # sparse target labels
    flips = torch.zeros(4, dtype=torch.bool)
    src, tgt = (images, labels, flips), (t_images, t_labels, flips)
    parts = list(torch.arange(4).chunk(accum))
    with torch.no_grad():
        got = sum(trainer._micro_batch_loss(src, tgt, part) for part in parts)
        ce = lcr = nl = 0.0
        for part in parts:
            x, y = trainer._batch(images[part], labels[part], flips[part])
            logits, _ = trainer._forward_full(x)
            xt, yt = trainer._batch(t_images[part], t_labels[part], flips[part])
            logits_t, _ = trainer._forward_full(xt)
            ce = ce + torch.nn.functional.cross_entropy(logits, y, ignore_index=255, reduction="sum") / (labels != 255).sum()
            ce = ce + torch.nn.functional.cross_entropy(logits_t, yt, ignore_index=255, reduction="sum") / (t_labels != 255).sum()
            lcr = lcr + local_consistency_loss(logits, y) / accum
            nl = nl + negative_learning_loss(logits_t) / accum
    assert float(lcr) > 0 and float(nl) > 0
    torch.testing.assert_close(got, ce + 0.1 * lcr + nl, rtol=1e-5, atol=1e-6)


def test_frozen_batchnorm_leaves_hfr_batchnorm_trained_as_halo_does():
    trainer = _trainer(freeze_bn=True)
    hfr_bn = trainer.model.head.hfr.mlp[1]
    backbone_bn = next(m for m in trainer.model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = hfr_bn.running_mean.clone(), backbone_bn.running_mean.clone()
    trainer.train(1, source=_tensor_set(4, 0), generator=torch.Generator().manual_seed(0), start_step=0, total_steps=5)
    assert hfr_bn.training and hfr_bn.weight.requires_grad and not torch.equal(before[0], hfr_bn.running_mean)
    assert not backbone_bn.training and not backbone_bn.weight.requires_grad
    assert torch.equal(before[1], backbone_bn.running_mean)


def test_grad_accum_must_divide_the_batch():
    from halo_ray.config import ConfigError

    with pytest.raises(ConfigError, match="grad_accum must be an integer >= 1 that divides batch_size=4"):
        build_config(dict(batch_size=4, grad_accum=3))


def test_frozen_batchnorm_keeps_its_statistics():
    source = _tensor_set(4, 0)
    for freeze, changes in ((True, False), (False, True)):
        trainer = _trainer(freeze_bn=freeze)
        bn = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        before = bn.running_mean.clone()
        trainer.train(1, source=source, generator=torch.Generator().manual_seed(0), start_step=0, total_steps=5)
        assert (not torch.equal(before, bn.running_mean)) == changes
        assert bn.weight.requires_grad != freeze


def test_pretrained_encoder_weights_and_head_lr_groups(tmp_path):
    """ImageNet-style weights load into the encoder (classifier keys ignored); the encoder
    trains at lr and everything else at lr × head_lr_mult."""
    from halo_ray.models import build_segmenter

    torch.manual_seed(123)
    donor = build_segmenter(backbone="mit_b0", embed_dim=8).backbone.encoder.state_dict()
    weights = tmp_path / "mit_b0_imagenet.pt"
    torch.save({**donor, "head.weight": torch.zeros(1000, 256), "head.bias": torch.zeros(1000)}, weights)
    trainer = _trainer(backbone="mit_b0", pretrained=str(weights), head_lr_mult=10.0)
    for key, value in trainer.model.backbone.encoder.state_dict().items():
        assert torch.equal(value, donor[key]), key
    assert sorted(trainer.weights_report.ignored) == ["head.bias", "head.weight"]
    trainer.train(1, source=_tensor_set(4, 0), generator=torch.Generator().manual_seed(0), start_step=0, total_steps=5)
    encoder_group, rest_group = trainer.optimizer.param_groups
    assert encoder_group["lr"] == pytest.approx(0.05) and rest_group["lr"] == pytest.approx(0.5)
    encoder = {id(p) for p in trainer.model.backbone.encoder.parameters()}
    assert {id(p) for p in encoder_group["params"]} == encoder
    assert not encoder & {id(p) for p in rest_group["params"]}


def test_pretrained_file_missing_a_key_is_named(tmp_path):
    from halo_ray.models import WeightsError, build_segmenter

    donor = build_segmenter(backbone="mit_b0", embed_dim=8).backbone.encoder.state_dict()
    dropped = sorted(donor)[3]
    del donor[dropped]
    weights = tmp_path / "partial.pt"
    torch.save(donor, weights)
    with pytest.raises(WeightsError, match=dropped.replace(".", r"\.")):
        _trainer(backbone="mit_b0", pretrained=str(weights))


def test_bad_model_options_are_refused_with_the_key_named(tmp_path):
    from halo_ray.config import ConfigError

    with pytest.raises(ConfigError, match="backbone must be one of"):
        build_config(dict(backbone="resnet50"))
    with pytest.raises(ConfigError, match="pretrained must be a local weights file"):
        build_config(dict(backbone="mit_b0", pretrained=str(tmp_path / "nope.pt")))
    with pytest.raises(ConfigError, match="head_lr_mult=10.0 needs a backbone with a pretrained encoder"):
        build_config(dict(head_lr_mult=10.0))
    with pytest.raises(ConfigError, match="amp=true needs a CUDA device"):
        build_config(dict(amp=True, device="cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="amp=true needs a CUDA device"):
            _trainer(amp=True, device="auto")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_amp_trains_and_predicts_in_float32_outputs_on_cuda():
    from halo_ray.training import Trainer

    cfg = build_config(dict(embed_dim=8, batch_size=2, amp=True, device="cuda"))
    trainer = Trainer(cfg, 19, torch.device("cuda"))
    loss = trainer.train(2, source=_tensor_set(2, 0), generator=torch.Generator().manual_seed(0), start_step=0, total_steps=4)
    assert math.isfinite(loss)
    probs, emb, _ = trainer.predict(_tensor_set(1, 1).images([0]))
    assert probs.dtype == torch.float32 and emb.dtype == torch.float32
    torch.testing.assert_close(probs.sum(dim=1), torch.ones_like(probs[:, 0]))


def test_learning_rate_per_loop_semantics(tiny_config_values, tmp_path):
    """The rate of every training step, read back from TensorBoard, in closed form per loop:
    continuous = one poly schedule over source + rounds; adapt = a new schedule over the
    rounds (HALO), not restarted between them; retrain = a new schedule every round."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {**tiny_config_values, "rounds": 2, "round_steps": 3, "source_steps": 20, "log_every": 1, "lr": 0.01,
              "poly_power": 0.9}
    expected = {
        "continuous": [poly_lr(0.01, 20 + k, 26, 0.9) for k in range(6)],
        "adapt": [poly_lr(0.01, k, 6, 0.9) for k in range(6)],
        "retrain": [poly_lr(0.01, k, 3, 0.9) for k in (0, 1, 2, 0, 1, 2)],
    }
    for loop, rates in expected.items():
        out = tmp_path / loop
        frame = run_experiment(build_config({**values, "loop": loop}), out, log=_quiet)
        (trial,) = frame["trial_id"].unique()
        acc = EventAccumulator(str(out / "tensorboard" / trial), size_guidance={"scalars": 0})
        acc.Reload()
        logged = [e for e in acc.Scalars("train/lr") if e.step > 20]  # the rounds' steps
        assert [e.value for e in logged] == pytest.approx(rates, rel=1e-6), loop


def test_target_sampling_all_draws_unlabelled_images_too():
    """`labelled` draws only images with revealed labels; `all` draws every image (the same
    generator stream), and an unlabelled image then adds the negative-learning term only."""
    from halo_ray.imagesets import ImageSet, SparseLabels

    source = ImageSet.from_arrays(*_arrays(4, 0))
    target = ImageSet.from_arrays(*_arrays(6, 1))
    dense = np.full((6, 32, 48), 255, np.uint8)
    dense[2, 5:9, 5:9] = 3  # only image 2 has labels
    labels = SparseLabels.from_dense(dense)
    seen = {}
    for sampling in ("labelled", "all"):
        trainer = _trainer(target_sampling=sampling, negative_learning=True)
        drawn = []
        original = target.images

        def spy(indices, _original=original, _drawn=drawn):
            _drawn.extend(indices)
            return _original(indices)

        target.images = spy
        trainer.train(3, source=source, generator=torch.Generator().manual_seed(4), start_step=0, total_steps=5,
                      target=target, target_labels=labels)
        target.images = original
        seen[sampling] = drawn
    assert set(seen["labelled"]) == {2} and len(seen["labelled"]) == 3 * 4
    gen = torch.Generator().manual_seed(4)
    replay = []
    for _ in range(3):  # the same draw order: source images, source flips, target images, target flips
        torch.randint(4, (4,), generator=gen), torch.rand(4, generator=gen)
        replay += torch.randint(6, (4,), generator=gen).tolist()
        torch.rand(4, generator=gen)
    assert seen["all"] == replay and len(set(replay)) > 1


def test_eval_flip_scores_the_mean_of_image_and_mirror():
    from halo_ray.imagesets import ImageSet
    from halo_ray.metrics import confusion_matrix, iou_from_confusion

    val = ImageSet.from_arrays(*_arrays(3, 2))
    trainer = _trainer(eval_flip=True)
    ev = trainer.evaluate(val)
    images, labels = val.evaluation_batch(range(3))
    probs = (trainer.predict(images)[0] + trainer.predict(images.flip(2))[0].flip(-1)) / 2
    conf = confusion_matrix(probs.argmax(dim=1), torch.stack(labels).long(), 19)
    np.testing.assert_allclose(ev.iou, iou_from_confusion(conf) * 100.0)
    plain = _trainer(eval_flip=False).evaluate(val)
    assert not np.allclose(np.nan_to_num(plain.iou), np.nan_to_num(ev.iou))


def test_source_free_rounds_never_read_the_source():
    """`source_weight: 0`: a round's steps decode no source image and train on the target alone;
    without target labels (source pre-training) the source is still used."""
    from halo_ray.imagesets import ImageSet, SparseLabels

    source = ImageSet.from_arrays(*_arrays(4, 0))
    target = ImageSet.from_arrays(*_arrays(3, 1))
    labels = SparseLabels.from_dense(_arrays(3, 1)[1].numpy())
    reads = []
    original = source.training_batch
    source.training_batch = lambda idx: reads.append(list(idx)) or original(idx)
    trainer = _trainer(source_weight=0.0, negative_learning=True)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    loss = trainer.train(2, source=source, generator=torch.Generator().manual_seed(0), start_step=0, total_steps=4,
                         target=target, target_labels=labels)
    assert reads == [] and math.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
    trainer.train(1, source=source, generator=torch.Generator().manual_seed(0), start_step=2, total_steps=4)
    assert len(reads) == 1  # source pre-training reads it whatever the weight
    source.training_batch = original
    with pytest.raises(Exception, match="source_weight must be >= 0"):
        build_config(dict(source_weight=-1.0))


def test_select_steps_place_the_rounds(tiny_config_values, tmp_path):
    """HALO selects at uneven steps: rounds train the gaps between them, and each row's step
    is where the next selection happens."""
    from halo_ray.config import ConfigError

    values = {**tiny_config_values, "rounds": 3, "round_steps": 4, "source_steps": 20}
    cfg = build_config({**values, "select_steps": [0, 5, 7]})
    assert cfg.round_lengths() == [5, 2, 5] and cfg.total_steps == 32
    frame = run_experiment(cfg, tmp_path / "run", log=_quiet, tensorboard=False)
    assert frame["step"].tolist() == [20, 25, 27, 32]
    assert build_config(values).round_lengths() == [4, 4, 4]
    for bad in ([0, 5], [1, 5, 7], [0, 7, 5], [0, 5, 12]):
        with pytest.raises(ConfigError, match="select_steps must list rounds=3 strictly increasing"):
            build_config({**values, "select_steps": bad})


def test_adamw_first_step_moves_each_weight_by_its_group_rate():
    """AdamW's first step is p ← p·(1 − lr·wd) − lr·g/(|g| + eps): every weight moves by at
    most its group's rate (encoder lr, the rest head_lr_mult × lr) beyond the decay, and
    weights with a clear gradient by almost exactly that much — unlike SGD's lr·g."""
    from halo_ray.models import find_encoder
    from halo_ray.optim import AdamW
    from halo_ray.training import Trainer

    lr, wd = 1e-3, 0.01
    cfg = build_config(dict(backbone="mit_b0", optimizer="adamw", lr=lr, weight_decay=wd, head_lr_mult=10.0,
                            embed_dim=8, batch_size=2, num_threads=1, device="cpu", warmup_steps=0))
    trainer = Trainer(cfg, 19, torch.device("cpu"))
    assert isinstance(trainer.optimizer, AdamW)
    assert [g["lr_mult"] for g in trainer.optimizer.param_groups] == [1.0, 10.0]
    _, encoder = find_encoder(trainer.model)
    inside = {id(p) for p in encoder.parameters()}
    before = {id(p): p.detach().clone() for p in trainer.model.parameters()}
    trainer.train(1, source=_tensor_set(2, 0, 64, 64), generator=torch.Generator().manual_seed(0),
                  start_step=0, total_steps=10)
    for rate, params in ((lr, [p for p in trainer.model.parameters() if id(p) in inside]),
                         (10 * lr, [p for p in trainer.model.parameters() if id(p) not in inside])):
        moves = torch.cat([(p.detach() - before[id(p)] * (1 - rate * wd)).abs().flatten() for p in params])
        assert moves.max() <= rate * (1 + 1e-3)  # float32 rounding of p around 1
        assert (moves > 0.99 * rate).float().mean() > 0.5  # most weights: a full signed step
    with pytest.raises(ConfigError, match="optimizer"):
        build_config(dict(optimizer="adam"))


def test_deterministic_key_selects_deterministic_kernels_for_the_process():
    from halo_ray.training import Trainer

    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    try:
        torch.use_deterministic_algorithms(False)
        _trainer()
        assert not torch.are_deterministic_algorithms_enabled()  # off by default
        Trainer(build_config(dict(embed_dim=8, device="cpu", deterministic=True)), 19, torch.device("cpu"))
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", ":16:8")
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1], before[2]


def test_upsampling_follows_align_corners_and_the_released_two_stage_selection_path():
    import torch.nn.functional as F

    maps = torch.randn(1, 3, 4, 6)
    ours, released = _trainer(), _trainer(reference=True)
    assert (ours.cfg.align_corners, released.cfg.align_corners) == (False, True)
    torch.testing.assert_close(ours.upsample(maps, (16, 24)), F.interpolate(maps, (16, 24), mode="bilinear"))
    direct = F.interpolate(maps, (16, 24), mode="bilinear", align_corners=True)
    torch.testing.assert_close(released.upsample(maps, (16, 24)), direct)
    two_stage = F.interpolate(F.interpolate(maps, (10, 15), mode="bilinear", align_corners=True), (16, 24),
                              mode="bilinear", align_corners=True)
    got = released.upsample(maps, (16, 24), via=(10, 15))
    torch.testing.assert_close(got, two_stage)
    assert (got - direct).abs().max() > 1e-3  # the detour through the input size changes values
    torch.testing.assert_close(released.upsample(maps, (16, 24), via=(16, 24)), direct)  # via = size: one stage


def _answered(n: int, seed: int):
    """Answered superpixels of ``n`` images of 32×48: 4×6 blocks of 8×8 px, answers from labels."""
    from halo_ray.imagesets import RegionTargets
    from halo_ray.multiclass import region_labels

    images, labels = _arrays(n, seed)
    spx = np.arange(24).reshape(4, 6).repeat(8, 0).repeat(8, 1)
    targets = RegionTargets(lambda i: spx, n)
    gen = np.random.default_rng(seed)
    for i in range(n):
        answers, _ = region_labels(labels[i].numpy(), spx, num_classes=19, trim=0)
        selected = gen.random(24) < 0.3
        if i == 1:
            selected[:] = False  # an image without answers is never drawn
        targets.set(i, answers, selected)
    return images, labels, spx, targets


def test_answered_superpixels_train_with_the_stage_one_loss():
    """RegionTargets in, the step's target term is partial_label_losses' total on the head's
    logits at temperature 1 (void bit dropped for a 19-output model)."""
    from halo_ray.imagesets import ImageSet
    from halo_ray.multiclass import partial_label_losses

    images, labels, spx, targets = _answered(4, 5)
    assert targets.labelled_images().tolist() == [0, 2, 3]
    trainer = _trainer(freeze_bn=True, hfr=False, geometry="cosine", strategy="entropy", source_weight=0.0)
    flips = torch.tensor([False, True, False])
    batch = targets.batch([0, 2, 3], (32, 48))
    assert batch[0].shape == (3, 32, 48) and batch[1].shape == (3, 24, 20) and batch[2].shape == (3, 24)
    tgt = (images[[0, 2, 3]], batch, flips)
    with torch.no_grad():
        got = trainer._micro_batch_loss(None, tgt, torch.arange(3))
        x = torch.where(flips.view(-1, 1, 1, 1), tgt[0].flip(2), tgt[0])
        logits, _ = trainer._forward_full(normalize(x))
        s = torch.where(flips.view(-1, 1, 1), batch[0].flip(2), batch[0])
        want = partial_label_losses(logits, batch[1][..., :19], s, batch[2], temperature=1.0)["total"]
    torch.testing.assert_close(got, want)
    # training on them lowers that loss; only answered images are drawn
    target = ImageSet.from_arrays(images, labels)
    before = float(got)
    trainer.train(15, source=target, generator=torch.Generator().manual_seed(0), start_step=0, total_steps=15,
                  target=target, target_labels=targets)
    with torch.no_grad():
        after = float(trainer._micro_batch_loss(None, tgt, torch.arange(3)))
    assert after < before
