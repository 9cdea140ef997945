import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from custom_modules.losses import WeightedBCEDiceLoss
from custom_modules.networks import RAAGR2Net
from raagr2_tools.compression.distillation import KnowledgeDistillationLoss, attention_map

TEACHER_FEATURES = (4, 8, 16, 32, 64)
#: narrower than the teacher at enc5/dec5/dec4/dec3 (level 1 must stay a multiple of the 4 input channels)
STUDENT_FEATURES = (4, 4, 8, 16, 32)


def _net(features=TEACHER_FEATURES, seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return RAAGR2Net(in_channels=4, out_channels=3, features=features, dropout=dropout, sigmoid=False)


def _batch(seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 32, 32, generator=g)
    y = (torch.rand(n, 3, 32, 32, generator=g) > 0.7).float()
    return x, y


def _train_mode_without_bn_updates(net):
    """Training mode (so the loss records the batch) with BatchNorm on running stats: same outputs as eval."""
    net.train()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return net


def test_alpha_zero_is_task_loss_and_formula():
    teacher, student = _net(seed=0), _net(seed=1)
    task = WeightedBCEDiceLoss(sigmoid=True)
    x, y = _batch()
    kd0 = KnowledgeDistillationLoss(task, teacher, student, alpha=0.0)
    pred = student.train()(x)
    assert torch.equal(kd0(pred, y), task(pred, y))
    kd0.close()

    kd = KnowledgeDistillationLoss(task, teacher, student, alpha=0.3, temperature=3.0)
    pred = student(x)
    with torch.no_grad():
        t = teacher(x)
    soft = F.binary_cross_entropy(torch.sigmoid(pred / 3.0), torch.sigmoid(t / 3.0))
    expected = 0.7 * task(pred, y) + 0.3 * 9.0 * soft
    torch.testing.assert_close(kd(pred, y), expected, rtol=1e-5, atol=1e-6)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not teacher.training
    kd.train()
    assert not teacher.training  # the loss never puts the teacher back into training mode
    kd.close()


def test_soft_target_minimum_at_teacher_logits():
    teacher = _net(seed=0)
    student = _train_mode_without_bn_updates(copy.deepcopy(teacher))  # same function as the teacher
    x, y = _batch()
    kd = KnowledgeDistillationLoss(WeightedBCEDiceLoss(), teacher, student, alpha=1.0, feature_weight=1.0)
    pred = student(x)
    for temperature in (1.0, 2.0, 4.5):
        kd.temperature = temperature
        loss = kd(pred, y)
        (grad,) = torch.autograd.grad(loss, pred, retain_graph=True)
        assert grad.abs().max().item() < 1e-9, temperature
        assert kd.attention_transfer_loss().item() < 1e-6
        # a perturbed student is worse and its gradient points back to the teacher's logits
        bumped = (pred.detach() + 0.5).requires_grad_()
        worse = kd(bumped, y)
        (grad,) = torch.autograd.grad(worse, bumped)
        assert worse.item() > loss.item()
        assert (grad > 0).all()
    loss = kd(pred, y)
    loss.backward()
    grads = [p.grad.abs().max().item() for p in student.parameters() if p.grad is not None]
    assert grads and max(grads) < 1e-6
    kd.close()


def test_trains_student_in_supervised_trainer():
    from ignite.engine import Events
    from monai.data import MetaTensor
    from monai.engines import SupervisedTrainer

    teacher, student = _net(seed=0), _net(STUDENT_FEATURES, seed=1, dropout=0.2)
    teacher_before = copy.deepcopy(teacher.state_dict())
    student_before = copy.deepcopy(student.state_dict())
    kd = KnowledgeDistillationLoss(
        WeightedBCEDiceLoss(sigmoid=True), teacher, student, alpha=0.5, temperature=2.0, feature_weight=0.5
    )
    data = [dict(zip(("image", "label"), map(MetaTensor, _batch(seed=i)))) for i in range(2)]  # as in bundles
    losses = []
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=student,
        optimizer=torch.optim.Adam(student.parameters(), 1e-3),
        loss_function=kd,
        decollate=False,
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"].item()))
    trainer.run()
    assert trainer.state.iteration == 2
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k
    assert any(not torch.equal(v, student_before[k]) for k, v in student.state_dict().items() if v.is_floating_point())
    assert all(p.grad is None for p in teacher.parameters())
    kd.close()


def test_distillation_reduces_soft_target_loss():
    teacher, student = _net(seed=0), _net(STUDENT_FEATURES, seed=1)
    x, y = _batch()
    kd = KnowledgeDistillationLoss(WeightedBCEDiceLoss(), teacher, student, alpha=1.0, temperature=2.0)
    opt = torch.optim.Adam(student.parameters(), 1e-2)
    student.train()
    values = []
    for _ in range(3):
        opt.zero_grad()
        loss = kd(student(x), y)
        loss.backward()
        opt.step()
        values.append(loss.item())
    assert values[-1] < values[0]


def test_attention_transfer_different_widths():
    teacher, student = _net(seed=0), _net(STUDENT_FEATURES, seed=1)
    x, y = _batch()
    task = WeightedBCEDiceLoss()
    kd = KnowledgeDistillationLoss(task, teacher, student, alpha=0.0, feature_weight=2.0)
    pred = student.train()(x)
    loss = kd(pred, y)
    at = kd.attention_transfer_loss()  # from the feature maps recorded by the student forward and the loss call
    assert at.item() > 1e-3
    torch.testing.assert_close(loss, task(pred, y) + 2.0 * at)
    loss.backward()
    assert next(student.enc5.parameters()).grad is not None
    assert all(p.grad is None for p in teacher.parameters())

    # reference value for one layer: channel mean of F^2, flattened, L2-normalised, per-sample L2 distance
    kd1 = KnowledgeDistillationLoss(task, teacher, student, alpha=0.0, feature_weight=1.0, feature_layers=("dec4",))
    feats = {}
    hs = student.dec4.register_forward_hook(lambda m, a, o: feats.__setitem__("s", o.detach()))
    ht = teacher.dec4.register_forward_hook(lambda m, a, o: feats.__setitem__("t", o.detach()))
    pred = student(x)
    kd1(pred, y)
    assert feats["s"].shape[1] == 8 and feats["t"].shape[1] == 16
    a_s = feats["s"].pow(2).mean(1).flatten(1)
    a_t = feats["t"].pow(2).mean(1).flatten(1)
    ref = (a_s / a_s.norm(dim=1, keepdim=True) - a_t / a_t.norm(dim=1, keepdim=True)).norm(dim=1).mean()
    torch.testing.assert_close(kd1.attention_transfer_loss().detach(), ref)
    torch.testing.assert_close(attention_map(feats["s"]).norm(dim=1), torch.ones(2))
    for handle in (hs, ht, kd, kd1):
        handle.close() if isinstance(handle, KnowledgeDistillationLoss) else handle.remove()


def test_survives_in_place_pruning():
    import torch_pruning as tp

    teacher, student = _net(seed=0), _net(seed=1)
    x, y = _batch()
    kd = KnowledgeDistillationLoss(WeightedBCEDiceLoss(), teacher, student, feature_weight=1.0)
    graph = tp.DependencyGraph().build_dependency(student.eval(), example_inputs=x[:1])
    conv = student.dec3.conv1x1  # the RRCNN 1x1 projection that sets dec3's width (8)
    graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0, 1, 2]).prune()
    assert conv.out_channels == 5 and student.dec3.conv1x1 is conv
    pred = student.train()(x)
    loss = kd(pred, y)
    assert kd._student_features["dec3"].shape[1] == 5 and kd._teacher_features["dec3"].shape[1] == 8
    assert torch.isfinite(loss)
    loss.backward()
    assert conv.weight.grad is not None and conv.weight.grad.shape[0] == 5
    kd.close()


def test_errors_and_close():
    teacher, student = _net(seed=0), _net(STUDENT_FEATURES, seed=1)
    x, y = _batch()
    kd = KnowledgeDistillationLoss(WeightedBCEDiceLoss(), teacher, student, feature_weight=1.0)
    with pytest.raises(RuntimeError, match="training mode"):
        kd(torch.zeros(2, 3, 32, 32), y)  # the student never ran
    student.train()(x)
    student.eval()
    with torch.no_grad():
        pred = student(x)  # an eval-mode forward forgets the earlier batch
    with pytest.raises(RuntimeError, match="training mode"):
        kd(pred, y)
    student.train()(x[:1])
    with pytest.raises(ValueError, match="does not match"):
        kd(torch.zeros(2, 3, 32, 32), y)  # pred from another batch than the recorded one
    kd.close()
    assert not student._forward_pre_hooks and not student.enc5._forward_hooks and not teacher.dec2._forward_hooks
    student(x)
    with pytest.raises(RuntimeError, match="training mode"):
        kd(torch.zeros(2, 3, 32, 32), y)
    with pytest.raises(ValueError, match="not found"):
        KnowledgeDistillationLoss(WeightedBCEDiceLoss(), teacher, student, feature_weight=1.0, feature_layers=("nope",))
    with pytest.raises(ValueError, match="alpha"):
        KnowledgeDistillationLoss(WeightedBCEDiceLoss(), teacher, student, alpha=1.5)
