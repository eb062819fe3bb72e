"""Margin heads: ArcFace / CosFace / combined, numerically safe, float32 logits."""

from __future__ import annotations

import math

import pytest
import torch

from facenas.errors import ConfigError
from facenas.train.losses import MarginHead, MarginSoftmax, NormalizedClassifier


def test_arcface_adds_the_angle_to_the_target_only():
    cos = torch.tensor([[0.6, 0.2, -0.1], [0.1, 0.9, 0.3]])
    labels = torch.tensor([0, 1])
    logits = MarginSoftmax(s=64, m2=0.5)(cos, labels)
    assert logits[0, 0].item() == pytest.approx(64 * math.cos(math.acos(0.6) + 0.5), rel=1e-5)
    assert logits[1, 1].item() == pytest.approx(64 * math.cos(math.acos(0.9) + 0.5), rel=1e-5)
    assert torch.allclose(logits[0, 1:], 64 * cos[0, 1:]) and logits[1, 0].item() == pytest.approx(6.4)


def test_cosface_and_combined_margins():
    cos = torch.tensor([[0.7, 0.1]])
    y = torch.tensor([0])
    assert MarginSoftmax(s=30, m2=0.0, m3=0.35)(cos, y)[0, 0].item() == pytest.approx(30 * 0.35, rel=1e-5)
    combined = MarginSoftmax(s=1, m1=1.0, m2=0.3, m3=0.2)(cos, y)[0, 0].item()
    assert combined == pytest.approx(math.cos(math.acos(0.7) + 0.3) - 0.2, rel=1e-5)
    sphere = MarginSoftmax(s=1, m1=2.0, m2=0.0, m3=0.0)(cos, y)[0, 0].item()
    assert sphere == pytest.approx(math.cos(2 * math.acos(0.7)), rel=1e-4)


def test_target_stays_monotonic_past_pi_and_gradients_stay_finite():
    margin = MarginSoftmax(s=64, m2=0.5)
    cos = torch.linspace(-1.0, 1.0, 2001, requires_grad=True)
    target = margin.target(cos)
    assert torch.all(target[1:] >= target[:-1])  # decreasing in theta = increasing in cos
    target.sum().backward()
    assert torch.all(torch.isfinite(cos.grad))
    sphere = MarginSoftmax(s=1, m1=3.0, m2=0.2)
    cos2 = torch.linspace(-1.0, 1.0, 2001)
    t2 = sphere.target(cos2)
    assert torch.all(t2[1:] >= t2[:-1] - 1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"s": 0}, "s = 0 must be > 0"), ({"m1": 0.5}, "m1 = 0.5 must be >= 1"),
    ({"m2": 4.0}, "m2 = 4.0 must lie in"), ({"m3": -0.1}, "m3 = -0.1 must lie in"),
])
def test_bad_margins_name_their_values(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MarginSoftmax(**kwargs)


def test_logits_are_float32_under_autocast_and_the_loss_trains():
    torch.manual_seed(0)
    head = MarginHead(8, 5, 16.0, 1.0, 0.3, 0.0)
    emb = torch.randn(20, 8, requires_grad=True)
    labels = torch.arange(20) % 5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cos = head.classifier(emb.bfloat16())
    assert cos.dtype == torch.float32
    opt = torch.optim.SGD(list(head.parameters()) + [emb], lr=0.5)
    first = None
    for _ in range(30):
        loss, _ = head(emb, labels)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_classifier_returns_cosines():
    clf = NormalizedClassifier(4, 3)
    cos = clf(torch.randn(6, 4))
    assert cos.shape == (6, 3) and cos.abs().max() <= 1 + 1e-6


def test_partial_fc_on_one_process_at_rate_1_is_the_plain_margin_head():
    from facenas.train.partial_fc import PartialFC

    torch.manual_seed(0)
    head = MarginHead(8, 12, 32.0, 1.0, 0.5, 0.0)
    partial = PartialFC(8, 12, MarginSoftmax(32.0, 1.0, 0.5, 0.0))
    with torch.no_grad():
        partial.weight.copy_(head.classifier.weight)
    embeddings = torch.randn(10, 8, requires_grad=True)
    labels = torch.randint(0, 12, (10,))
    loss, cosine = head(embeddings, labels)
    (grad_e, grad_w) = torch.autograd.grad(loss, [embeddings, head.classifier.weight])
    loss_p, correct = partial(embeddings, labels, global_size=10, step=0)
    (grad_pe, grad_pw) = torch.autograd.grad(loss_p, [embeddings, partial.weight])
    torch.testing.assert_close(loss_p, loss)
    torch.testing.assert_close(grad_pe, grad_e)
    torch.testing.assert_close(grad_pw, grad_w)
    assert int(correct) == int((cosine.argmax(1) == labels).sum())


def test_partial_fc_samples_every_positive_class_and_the_rate_of_the_rest():
    from facenas.train.partial_fc import PartialFC

    partial = PartialFC(4, 100, MarginSoftmax(16.0, 1.0, 0.3, 0.0), sample_rate=0.2, seed=3)
    labels = torch.tensor([5, 7, 7, 93])
    index, column = partial._sample(labels, step=11)
    assert len(index) == 20 and {5, 7, 93} <= set(index.tolist())
    assert torch.equal(index[column], labels)  # each label's column points at its own class
    again, _ = partial._sample(labels, step=11)
    other, _ = partial._sample(labels, step=12)
    assert torch.equal(again, index) and not torch.equal(other, index)  # seeded by the step: resumes sample alike
    loss, _ = partial(torch.randn(4, 4), labels, global_size=4, step=11)
    assert torch.isfinite(loss)


def test_margin_ramp_holds_then_grows_linearly_and_is_a_function_of_the_step():
    from facenas.train.losses import margin_ramp

    steps = 10  # per epoch
    assert [margin_ramp(s, steps, 1.0, 2.0) for s in (0, 9, 10, 20, 30, 45)] == [0.0, 0.0, 0.0, 0.5, 1.0, 1.0]
    assert margin_ramp(5, steps, 0.0, 0.0) == 1.0 and margin_ramp(5, steps, 1.0, 0.0) == 0.0
    assert margin_ramp(15, steps, 1.0, 0.0) == 1.0  # a softmax start that switches the margin on at once


@pytest.mark.parametrize("kwargs", [{"m2": 0.5}, {"m2": 0.0, "m3": 0.35}, {"m1": 1.0, "m2": 0.3, "m3": 0.2},
                                    {"m1": 2.0, "m2": 0.1}])
def test_the_ramp_scales_every_margin_from_none_to_all(kwargs):
    cos = torch.tensor([[0.7, 0.1, -0.2], [0.3, 0.8, 0.5]])
    y = torch.tensor([0, 1])
    margin = MarginSoftmax(s=10, **kwargs)
    full = margin(cos, y)
    margin.set_ramp(0.0)
    assert torch.allclose(margin(cos, y), 10 * cos, atol=1e-5)  # a normalised softmax: no margin at all
    margin.set_ramp(0.5)
    half = MarginSoftmax(s=10, m1=1 + (kwargs.get("m1", 1.0) - 1) / 2, m2=kwargs.get("m2", 0.5) / 2,
                         m3=kwargs.get("m3", 0.0) / 2)
    assert torch.allclose(margin(cos, y), half(cos, y), atol=1e-5)
    margin.set_ramp(1.0)
    assert torch.equal(margin(cos, y), full)
    assert "ramp" not in margin.state_dict()  # set by the step, never saved: old checkpoints load as they were
