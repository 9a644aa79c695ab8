"""The ASA network, losses, EMA teacher and the two phases, on tiny configs (feature size 12, 64³)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.asa import losses, pretext
from models.asa.model import ASA
from models.asa.network import ASANetwork
from models.asa.schedules import ema_momentum, warmup_cosine
from models.config import build_config

TINY = ["network.projector_dim=32", "network.projector_hidden=32", "network.local_dim=16"]


@pytest.fixture(scope="module")
def cfg():
    return build_config("cpu-demo", overrides=TINY, batch_size=2)


@pytest.fixture()
def asa(cfg) -> ASA:
    torch.manual_seed(0)
    return ASA(cfg).train()


def test_network_shapes(cfg) -> None:
    net = ASANetwork(cfg.network).eval()  # no drop-path, so both paths are deterministic
    x = torch.rand(2, 1, 64, 64, 64)
    out = net(x)
    assert out.tokens.shape == (2, 64, 96)  # 4³ sub-volumes, 8 × feature size channels
    assert out.recon.shape == x.shape
    enc = net.encode(x)
    assert torch.allclose(enc.tokens, out.tokens, atol=1e-5)  # the short path gives the same tokens
    assert net.predict_order(out.tokens).shape == (2, 64, 3)
    g = net.global_embedding(out.tokens)
    assert g.shape == (2, 32) and torch.allclose(g.norm(dim=-1), torch.ones(2))
    assert net.local_embedding(out.tokens).shape == (2, 64, 16)


def test_losses_are_zero_when_they_should_be_and_positive_otherwise() -> None:
    a = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    assert losses.global_loss(a, a).item() == 0 and losses.global_loss(a, b).item() > 0
    t = torch.randn(2, 64, 3)
    assert losses.order_loss(t, t).item() == 0 and losses.order_loss(t + 0.1, t).item() > 0
    v = torch.rand(1, 1, 8, 8, 8)
    assert losses.recovery_loss(v, v).item() == 0 and losses.recovery_loss(v, v * 0.5).item() > 0
    tok = torch.nn.functional.normalize(torch.randn(2, 8, 4), dim=-1)
    pairs = [(torch.tensor([0, 1]), torch.tensor([0, 1]))] * 2
    assert losses.local_loss(tok, tok, pairs).item() == 0
    assert losses.local_loss(tok, tok, [(torch.tensor([0, 1]), torch.tensor([1, 0]))] * 2).item() > 0
    # squared l2 of unit vectors is 2 - 2 cos
    assert losses.global_loss(a, b).item() == pytest.approx((2 - 2 * (a * b).sum(-1)).mean().item(), rel=1e-5)


def test_embedding_loss_never_sends_gradient_to_the_teacher_side() -> None:
    s = torch.randn(2, 4, requires_grad=True)
    t = torch.randn(2, 4, requires_grad=True)
    losses.global_loss(s, t).backward()
    assert s.grad is not None and t.grad is None


def test_teacher_starts_as_student_and_gets_no_gradient(asa: ASA) -> None:
    for ps, pt in zip(asa.student.parameters(), asa.teacher.parameters(), strict=True):
        assert torch.equal(ps, pt) and not pt.requires_grad
    loss, _ = asa.phase1(torch.rand(2, 1, 64, 64, 64), torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is None for p in asa.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in asa.student.parameters())
    assert not asa.teacher.training  # eval mode: no drop-path in the teacher ...
    asa.train()
    assert not asa.teacher.training and asa.student.training  # ... even after train()


def test_ema_update_is_exact(asa: ASA) -> None:
    with torch.no_grad():
        for p in asa.student.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in asa.teacher.parameters()]
    asa.update_teacher(0.9)
    for t0, s, t1 in zip(before, asa.student.parameters(), asa.teacher.parameters(), strict=True):
        assert torch.allclose(t1, 0.9 * t0 + 0.1 * s, atol=1e-6)
    asa.update_teacher(1.0)  # momentum 1 freezes the teacher
    after = [p.clone() for p in asa.teacher.parameters()]
    asa.update_teacher(1.0)
    assert all(torch.equal(a, b) for a, b in zip(after, asa.teacher.parameters(), strict=True))


def test_phase1_recovery_target_is_the_original_and_teacher_sees_the_original(asa: ASA, monkeypatch) -> None:
    x = torch.rand(2, 1, 64, 64, 64)
    seen: dict[str, torch.Tensor] = {}
    real_recovery, real_encode = losses.recovery_loss, asa.teacher.encode
    monkeypatch.setattr(losses, "recovery_loss", lambda r, o: seen.setdefault("target", o) is o and real_recovery(r, o))
    monkeypatch.setattr(asa.teacher, "encode", lambda v: seen.setdefault("teacher_in", v) is v and real_encode(v))
    asa.phase1(x, torch.Generator().manual_seed(0))
    assert torch.equal(seen["target"], x)
    assert torch.equal(seen["teacher_in"], x)


def test_phase1_teacher_can_see_the_shuffled_volume_as_in_the_reference_code(cfg, monkeypatch) -> None:
    asa = ASA(cfg.model_copy(update={"teacher_input": "shuffled"}))
    x = torch.rand(1, 1, 64, 64, 64)
    seen = {}
    real = asa.teacher.encode
    monkeypatch.setattr(asa.teacher, "encode", lambda v: seen.setdefault("v", v) is v and real(v))
    asa.phase1(x, torch.Generator().manual_seed(5))
    perm = pretext.random_permutations(1, 64, torch.Generator().manual_seed(5))
    assert torch.equal(seen["v"], pretext.shuffle_subvolumes(x, perm))


def test_phase1_loss_uses_lambdas(cfg) -> None:
    torch.manual_seed(0)
    a = ASA(cfg)
    x = torch.rand(1, 1, 64, 64, 64)
    loss, m = a.phase1(x, torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(m["loss_vop"] + m["loss_var"] + m["loss_global"], rel=1e-5)
    assert m["loss_vop"] > 0 and m["loss_var"] > 0 and m["order_error_vox"] > 0


def test_phase2_updates_encoder_and_projectors_but_never_the_decoder(asa: ASA) -> None:
    opt = torch.optim.SGD([p for p in asa.student.parameters()], lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    # a phase-1 step first, so SGD has momentum on the decoder that a careless phase 2 would apply
    loss, _ = asa.phase1(torch.rand(2, 1, 64, 64, 64), g)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    decoder = {n: p.clone() for n, p in asa.student.named_parameters() if not _is_phase2_param(n)}
    encoder = {n: p.clone() for n, p in asa.student.named_parameters() if _is_phase2_param(n)}
    loss, m = asa.phase2(torch.rand(2, 1, 96, 96, 96), g)
    assert m["loss_global"] > 0 and m["loss_local"] > 0
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    params = dict(asa.student.named_parameters())
    assert decoder and all(torch.equal(params[n], v) for n, v in decoder.items())
    changed = [n for n, v in encoder.items() if not torch.equal(params[n], v)]
    assert any("swinViT" in n for n in changed) and any("local_projector" in n for n in changed)


def _is_phase2_param(name: str) -> bool:
    """Phase 2 trains the Swin encoder up to stage 3 and both projectors (not order head, CNN decoder)."""
    enc = name.startswith("backbone.swinViT.") and not name.startswith("backbone.swinViT.layers4")
    return enc or name.startswith(("global_projector", "local_projector"))


def test_schedules_have_exactly_one_value_per_step() -> None:
    lr = warmup_cosine(1e-3, 0.0, 100, 10)
    assert len(lr) == 100 and lr[0] > 0 and lr[9] < lr[10] == pytest.approx(1e-3) and lr[-1] == 0.0
    assert np.all(np.diff(lr[10:]) <= 0)
    m = ema_momentum(0.996, 50)
    assert len(m) == 50 and m[0] == pytest.approx(0.996) and m[-1] == 1.0
    assert len(warmup_cosine(1.0, 0.0, 1)) == 1


def test_bf16_and_gradient_checkpointing_options_train(cfg) -> None:
    fast = cfg.model_copy(update={"precision": "bf16"})
    fast.network = fast.network.model_copy(update={"use_checkpoint": True})
    torch.manual_seed(0)
    asa = ASA(fast).train()
    loss, m = asa.phase1(torch.rand(1, 1, 64, 64, 64), torch.Generator().manual_seed(0))
    loss.backward()
    assert np.isfinite(m["loss"]) and any(p.grad is not None for p in asa.student.parameters())
