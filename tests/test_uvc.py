"""UVC models, primal-dual step, optimizers, schedules, hooks, compaction and the command lines."""
import json

import pytest
import torch
from mmengine.optim import OptimWrapper, OptimWrapperDict
from mmengine.registry import MODELS, init_default_scope
from mmpretrain.structures import DataSample

import mmsparse  # noqa: F401
from mmsparse.analysis import count_flops
from mmsparse.analysis.model_parts import part_module
from mmsparse.errors import ConfigError
from mmsparse.compaction.uvc import compact_uvc_model, max_output_diff
from mmsparse.checkpoint import load_checkpoint_file
from mmsparse.engine.uvc_optim import PresetLR, UVCOptimWrapperConstructor
from mmsparse.ops.uvc import uvc_macs
from tests.conftest import REPO, ok, run_tool, small_config, tool_env

STAGE1 = REPO / 'configs/uvc/uvc-vit-tiny-p4_stage1_fashion-mnist.py'
STAGE2 = REPO / 'configs/uvc/uvc-vit-tiny-p4_stage2_fashion-mnist.py'

# a tiny ViT: 16x16 grey images, patch 4 -> 16 patches + cls = 17 tokens, C 32, 2 heads of 16
ARCH = dict(embed_dims=32, num_layers=3, num_heads=2, feedforward_channels=64)
PRE = dict(type='mmpretrain.ClsDataPreprocessor', num_classes=5, mean=[0.], std=[1.],
           to_rgb=False)
HEAD = dict(type='mmpretrain.VisionTransformerClsHead', num_classes=5, in_channels=32)


def uvc_cfg(**kw) -> dict:
    backbone = dict(type='mmsparse.UVCVisionTransformer', arch=ARCH, img_size=16, patch_size=4,
                    in_channels=1, drop_rate=0.0)
    backbone.update(kw.pop('backbone', {}))
    cfg = dict(type='mmsparse.UVCClassifier', _scope_='mmpretrain', budget=0.5,
               warmup_epochs=0, backbone=backbone, head=HEAD, data_preprocessor=PRE)
    cfg.update(kw)
    return cfg


def build(**kw):
    init_default_scope('mmsparse')
    torch.manual_seed(0)
    return MODELS.build(uvc_cfg(**kw))


def batch(n=4, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(inputs=[torch.randint(0, 255, (1, 16, 16), generator=g, dtype=torch.uint8)
                        for _ in range(n)],
                data_samples=[DataSample().set_gt_label(i % 5) for i in range(n)])


def optim(model, weights_lr=0.0, arch=0.1, duals=0.01, flops_dual=0.5, gates=0.1):
    cfg = dict(weights=dict(optimizer=dict(type='AdamW', lr=weights_lr)),
               arch=dict(optimizer=dict(type='SGD', lr=arch)),
               duals=dict(optimizer=dict(type='SGD', lr=duals)),
               flops_dual=dict(optimizer=dict(type='SGD', lr=flops_dual)),
               gates=dict(optimizer=dict(type='SGD', lr=gates)))
    return UVCOptimWrapperConstructor(cfg)(model)


class Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x, mode='tensor')


# ---- the model ---------------------------------------------------------------------------------
def test_dense_resource_equals_traced_flops_and_mmpretrain_weights_load():
    model = build()
    dense = MODELS.build(dict(
        type='mmpretrain.ImageClassifier', _scope_='mmpretrain', head=HEAD,
        data_preprocessor=PRE, backbone=dict(type='mmpretrain.VisionTransformer', arch=ARCH,
                                             img_size=16, patch_size=4, in_channels=1)))
    x = torch.randn(2, 1, 16, 16)
    traced = count_flops(Logits(dense), (x[:1], )).flops
    assert model.cost.num_tokens == 17
    assert model.cost.dense_macs == traced  # attention matmuls, norms, embed and head counted
    # state_dict-compatible: the dense weights load; only UVC's variables are new
    missing, unexpected = model.load_state_dict(dense.state_dict(), strict=False)
    assert not unexpected
    assert all(k.split('.')[-1].startswith(('arch_', 'mask_', 'dual_', 'block_gates',
                                            'soft_l0_eps', 'gate_grad')) for k in missing)
    model.eval()
    dense.eval()
    with torch.no_grad():  # nothing removed, every block runs: the dense model
        torch.testing.assert_close(model(x, mode='tensor'), dense(x, mode='tensor'))


def hand_step(model, scores, budget, lrs, removed_head_dims='excluded'):
    """The expected architecture and dual updates of one step, computed by hand (loops).

    ``removed_head_dims='included'`` (the original): removed heads' dims count in the least
    sums (their r gradient and the ascent of p), with no resource gradient."""
    bb = model.backbone
    c = model.cost
    n, cc, hd, H = c.num_tokens, c.embed_dims, c.head_dims, c.num_heads
    dense = c.dense_macs
    head_s, dim_s, neuron_s = scores
    sh, sn, r = bb.arch_heads.tolist(), bb.arch_neurons.tolist(), bb.arch_dims.tolist()
    y_h, y_n, p, z = (model.dual_heads.tolist(), model.dual_neurons.tolist(),
                      model.dual_dims.tolist(), model.dual_flops.item())
    import math
    new = dict(arch_heads=[], arch_neurons=[], arch_dims=[], dual_heads=[], dual_neurons=[],
               dual_dims=[])
    macs = c.fixed_macs
    for l in range(c.num_layers):
        kh = math.ceil(sh[l])
        order = sorted(range(H), key=lambda h: (head_s[l][h], h))
        kept = [h not in order[:kh] for h in range(H)]
        hk = H - kh
        kn = math.ceil(sn[l])
        dv = hk * hd - sum(math.ceil(r[l][h]) for h in range(H) if kept[h])
        macs += (c.norm_macs + n * cc * (2 * hk * hd + dv) + n * n * (hk * hd + dv)
                 + n * dv * cc + 2 * n * cc * (c.mlp_dims - kn))
        # least sums and their "next smallest" derivatives
        hs = sorted(head_s[l])
        ns = sorted(neuron_s[l])
        ls_h, d_h = sum(hs[:kh]), hs[min(kh, H - 1)]
        ls_n, d_n = sum(ns[:kn]), ns[min(kn, c.mlp_dims - 1)]
        g_h = y_h[l] * d_h - z * (n * cc * 3 * hd + 2 * n * n * hd + n * hd * cc) / dense
        g_n = y_n[l] * d_n - z * 2 * n * cc / dense
        new['arch_heads'].append(min(max(sh[l] - lrs['arch'] * g_h, 0), H - 1))
        new['arch_neurons'].append(min(max(sn[l] - lrs['arch'] * g_n, 0), c.mlp_dims - 1))
        new['dual_heads'].append(max(y_h[l] + lrs['duals'] * ls_h, 0))
        new['dual_neurons'].append(max(y_n[l] + lrs['duals'] * ls_n, 0))
        row_r, row_p = [], []
        for h in range(H):
            ds = sorted(dim_s[l][h])
            kd = math.ceil(r[l][h])
            counted = kept[h] or removed_head_dims == 'included'
            ls_d = sum(ds[:kd]) if counted else 0.0
            g_d = (p[l][h] * ds[min(kd, hd - 1)] if counted else 0.0) \
                - (z * (2 * n * cc + n * n) / dense if kept[h] else 0.0)
            row_r.append(min(max(r[l][h] - lrs['arch'] * g_d, 0), hd - 1))
            row_p.append(max(p[l][h] + lrs['duals'] * ls_d, 0))
        new['arch_dims'].append(row_r)
        new['dual_dims'].append(row_p)
    flops = macs / dense
    new['dual_flops'] = [max(z + lrs['flops_dual'] * (flops - budget), 0)]
    return new, flops


@pytest.mark.parametrize('removed_head_dims', ['excluded', 'included'])
def test_one_primal_dual_step_hand_computed(removed_head_dims):
    model = build(backbone=dict(block_gating=None), arch_grad_clip=1e9, dual_init=0.0,
                  removed_head_dims=removed_head_dims)
    bb = model.backbone
    with torch.no_grad():
        bb.arch_heads.copy_(torch.tensor([0.5, 0.0, 1.0 - 1e-8]))
        bb.arch_neurons.copy_(torch.tensor([3.2, 0.0, 10.0]))
        bb.arch_dims.copy_(torch.tensor([[1.5, 0.0], [4.0, 2.2], [0.0, 3.0]]))
        model.dual_heads.copy_(torch.tensor([0.1, 0.2, 0.3]))
        model.dual_neurons.copy_(torch.tensor([0.05, 0.0, 0.4]))
        model.dual_dims.copy_(torch.tensor([[0.1, 0.2], [0.3, 0.0], [0.5, 0.6]]))
        model.dual_flops.fill_(2.0)
    lrs = dict(arch=0.7, duals=0.05, flops_dual=0.5)
    ow = optim(model, weights_lr=0.0, arch=lrs['arch'], duals=lrs['duals'],
               flops_dual=lrs['flops_dual'])
    weights = {k: v.clone() for k, v in model.state_dict().items() if 'layers' in k}
    scores = [t.tolist() for t in bb.group_scores()]
    expected, flops = hand_step(model, scores, 0.5, lrs, removed_head_dims)
    model.train()
    model.train_step(batch(), ow)
    for name in ('arch_heads', 'arch_neurons', 'arch_dims'):
        torch.testing.assert_close(getattr(bb, name).detach(),
                                   torch.tensor(expected[name]), rtol=1e-5, atol=1e-6)
    for name in ('dual_heads', 'dual_neurons', 'dual_dims', 'dual_flops'):
        torch.testing.assert_close(getattr(model, name).detach(),
                                   torch.tensor(expected[name]), rtol=1e-5, atol=1e-6)
    # lr 0: AdamW leaves the weights alone and the proximal factor is 1
    for k, v in model.state_dict().items():
        if k in weights:
            torch.testing.assert_close(v, weights[k])
    # the masks follow the new architecture
    assert bb.mask_heads.sum(-1).tolist() == [2 - int(torch.ceil(x)) for x in bb.arch_heads]


def test_proximal_step_shrinks_removed_groups():
    model = build(backbone=dict(block_gating=None))
    bb = model.backbone
    with torch.no_grad():
        bb.arch_heads.fill_(1.0)
        bb.arch_dims.fill_(2.0)
        bb.arch_neurons.fill_(5.0)
        model.dual_heads.fill_(1.0)
        model.dual_dims.fill_(2.0)
        model.dual_neurons.fill_(3.0)
    masks = bb.compute_masks()
    proj = [layer.attn.proj.weight.detach().clone() for layer in bb.layers]
    fc2 = [layer.ffn.layers[1].weight.detach().clone() for layer in bb.layers]
    lr = 0.01
    model.primal_dual.shrink_removed(bb, model.duals, masks, lr)
    for i, layer in enumerate(bb.layers):
        head_f = torch.where(masks.heads[i], 1.0, 1 / (1 + 2 * lr * 1.0))  # (H,)
        dim_f = torch.where(~masks.dims[i] & masks.heads[i, :, None], 1 / (1 + 2 * lr * 2.0),
                            1.0)  # (H, hd)
        col = (head_f[:, None] * dim_f).flatten()
        torch.testing.assert_close(layer.attn.proj.weight.detach(), proj[i] * col)
        neuron_f = torch.where(masks.neurons[i], 1.0, 1 / (1 + 2 * lr * 3.0))
        torch.testing.assert_close(layer.ffn.layers[1].weight.detach(), fc2[i] * neuron_f)


def test_proximal_step_of_removed_heads_dims_included_as_the_original():
    # the original's prox_w: every head's ceil(r) lowest proj columns / (1 + 2 lr p), then a
    # removed head's whole columns / (1 + 2 lr y): its lowest dims get both factors
    model = build(backbone=dict(block_gating=None), removed_head_dims='included')
    bb = model.backbone
    with torch.no_grad():
        bb.arch_heads.fill_(1.0)
        bb.arch_dims.copy_(torch.tensor([[2.0, 3.0], [0.0, 1.0], [5.0, 0.5]]))
        model.dual_heads.fill_(1.0)
        model.dual_dims.fill_(2.0)
    masks = bb.compute_masks()
    proj = [layer.attn.proj.weight.detach().clone() for layer in bb.layers]
    lr = 0.01
    model.primal_dual.shrink_removed(bb, model.duals, masks, lr)
    r = [[2, 3], [0, 1], [5, 1]]  # ceil
    for i, layer in enumerate(bb.layers):
        col = torch.ones(32)
        for h in range(2):
            cols = proj[i][:, h * 16:(h + 1) * 16].pow(2).sum(0)
            lowest = torch.sort(cols, stable=True).indices[:r[i][h]]
            col[h * 16 + lowest] /= 1 + 2 * lr * 2.0  # kept and removed heads alike
            if not masks.heads[i, h]:
                col[h * 16:(h + 1) * 16] /= 1 + 2 * lr * 1.0
        assert not masks.heads[i].all()  # one head removed per block
        torch.testing.assert_close(layer.attn.proj.weight.detach(), proj[i] * col)


def test_arch_gradient_clipped_jointly_for_heads_and_neurons_as_the_original():
    # the original: clip_grad_norm_(s, 1.0, inf) on s = [heads, neurons] (L, 2), one scale;
    # r on its own. Hand-computed with the arch SGD at lr 1 from the middle of the box.
    grads = (torch.tensor([3.0, -1.0, 0.5]), torch.tensor([0.2, 0.1, -0.4]),
             torch.tensor([[0.5, -2.0], [0.1, 0.0], [1.0, 0.25]]))
    # the largest |component| each tensor is clipped by: heads and neurons share one when joint
    clip = dict(joint=(3.0, 3.0, 2.0), per_tensor=(3.0, 0.4, 2.0))
    for mode, maxima in clip.items():
        model = build(backbone=dict(block_gating=None), arch_grad_clip=1.0,
                      arch_grad_clip_joint=mode == 'joint')
        bb = model.backbone
        start = (torch.full((3, ), 0.5), torch.full((3, ), 30.0), torch.full((3, 2), 7.0))
        params = [bb.arch_heads, bb.arch_neurons, bb.arch_dims]
        with torch.no_grad():
            for p, x in zip(params, start):
                p.copy_(x)
        model.primal_dual._arch_step(bb, params, grads, optim(model, arch=1.0)['arch'])
        for p, x, g, m in zip(params, start, grads, maxima):
            scale = min(1.0, 1.0 / (m + 1e-6))  # max_norm / (norm + 1e-6), as torch's clip
            torch.testing.assert_close(p.detach(), (x - scale * g).clamp(min=0.0), msg=mode)


def test_gate_step_original_weights_by_position_hand_computed():
    # the original (uvc_optimizer.py): gating_grad_list.append(g * (global_step % interval)),
    # then SGD on the list's mean every interval steps: here the i-th gradient weighs i
    for gate_step, weights in (('uniform', (1, 1, 1)), ('original', (0, 1, 2))):
        model = build(backbone=dict(block_gating='soft_l0'), gating_interval=3,
                      gate_step=gate_step)
        bb = model.backbone
        wrapper = optim(model, gates=0.1)['gates']  # SGD lr 0.1, no momentum
        start = bb.block_gates.detach().clone()
        gs = [torch.full((3, 2), v) * torch.tensor([1.0, -2.0]) for v in (1.0, 3.0, 5.0)]
        zero = torch.zeros(3, 2)
        for g in gs:
            bb.block_gates.grad = g.clone()
            model.primal_dual._gate_step(bb, model.duals, zero, wrapper)
        mean = sum(w * g for w, g in zip(weights, gs)) / 3
        torch.testing.assert_close(bb.block_gates.detach(), start - 0.1 * mean, msg=gate_step)
    # a steady gradient over the original's interval of 50: 24.5 times the uniform step,
    # i.e. glr 0.1 acts as 2.45
    model = build(backbone=dict(block_gating='soft_l0'), gate_step='original')
    bb = model.backbone
    wrapper = optim(model, gates=0.1)['gates']
    start = bb.block_gates.detach().clone()
    for _ in range(50):
        bb.block_gates.grad = torch.ones(3, 2)
        model.primal_dual._gate_step(bb, model.duals, torch.zeros(3, 2), wrapper)
    torch.testing.assert_close(bb.block_gates.detach(), start - 2.45)


def test_gate_step_original_also_trains_the_gates_with_the_weights_adamw():
    import copy
    lr, wd = 0.01, 0.05
    model = build(backbone=dict(block_gating='soft_l0'), gate_step='original',
                  gating_interval=10)
    cfg = dict(weights=dict(optimizer=dict(type='AdamW', lr=lr, weight_decay=wd),
                            clip_grad=dict(max_norm=1e9)))
    ow = UVCOptimWrapperConstructor(cfg)(model)
    owner = [k for k, w in ow.items() for g in w.optimizer.param_groups
             if any(p is model.backbone.block_gates for p in g['params'])]
    assert sorted(owner) == ['gates', 'weights']
    # the gates' task gradient, from a copy (soft-L0 gates and no dropout: deterministic)
    ref = copy.deepcopy(model)
    ref.train()
    data = ref.data_preprocessor(batch(), True)
    loss, _ = ref.parse_losses(ref._run_forward(data, mode='loss'))
    loss.backward()
    g = ref.backbone.block_gates.grad.clone()
    start = model.backbone.block_gates.detach().clone()
    model.train()
    model.train_step(batch(), ow)  # no gate SGD step yet (interval 10)
    # AdamW's first step: decoupled decay, then lr * m / (sqrt(v) + eps) with m = g, v = g^2
    expected = start * (1 - lr * wd) - lr * g / (g.abs() + 1e-8)
    torch.testing.assert_close(model.backbone.block_gates.detach(), expected)
    assert int(model.gate_grad_count) == 1 and model.gate_grad_sum.abs().sum() == 0  # weight 0
    # the default: the gates are the gates optimizer's only
    plain = build(backbone=dict(block_gating='soft_l0'))
    ow = optim(plain)
    assert not any(p is plain.backbone.block_gates for g in ow['weights'].optimizer.param_groups
                   for p in g['params'])


def test_duals_stay_nonnegative_and_warmup_freezes_the_search():
    model = build(backbone=dict(block_gating='soft_l0'), budget=0.9, dual_init=0.0)
    with torch.no_grad():
        model.dual_flops.fill_(0.01)
    ow = optim(model, flops_dual=10.0)
    model.train()
    model.train_step(batch(), ow)  # FLOPs 1.0 > 0.9: z grows
    assert model.dual_flops.item() > 0.01
    with torch.no_grad():  # far under the budget: z would go negative
        model.backbone.arch_neurons.fill_(60.0)
        model.backbone.arch_heads.fill_(0.9)
    for _ in range(3):
        model.train_step(batch(), ow)
        for p in (model.dual_heads, model.dual_neurons, model.dual_dims, model.dual_flops):
            assert (p >= 0).all()
    assert model.dual_flops.item() == 0.0

    warm = build(warmup_epochs=2)
    ow = optim(warm)
    state = {k: v.clone() for k, v in warm.state_dict().items()
             if k.startswith(('dual_', 'backbone.arch_', 'backbone.block_gates'))}
    warm.train()
    log = warm.train_step(batch(), ow)  # epoch 0 (no runner): warm-up
    assert log['warmup'] == 1.0
    for k, v in state.items():
        torch.testing.assert_close(warm.state_dict()[k], v)


def test_block_gates_accumulate_over_the_interval():
    model = build(backbone=dict(block_gating='soft_l0'), gating_interval=2)
    ow = optim(model, gates=1.0)
    gates = model.backbone.block_gates.detach().clone()
    model.train()
    model.train_step(batch(), ow)
    assert torch.equal(model.backbone.block_gates.detach(), gates)
    assert int(model.gate_grad_count) == 1 and model.gate_grad_sum.abs().sum() > 0
    model.train_step(batch(seed=1), ow)
    assert not torch.equal(model.backbone.block_gates.detach(), gates)
    assert int(model.gate_grad_count) == 0 and model.gate_grad_sum.abs().sum() == 0


def test_end_of_search_projection_meets_the_budget_and_rounds():
    model = build(backbone=dict(block_gating=None), budget=0.45)
    with torch.no_grad():
        model.backbone.arch_neurons.fill_(10.0)
    assert model.flops_fraction(hard=True) > 0.45
    removed = model.project_to_budget(multiple=8)
    assert removed > 0 and model.flops_fraction(hard=True) <= 0.45
    kept = model.backbone.mask_neurons.sum(-1)
    assert all(int(k) % 8 == 0 or k <= 8 for k in kept)
    v = model.backbone.mask_dims.sum(-1)[model.backbone.mask_heads.bool()]
    assert all(int(d) % 8 == 0 or d <= 8 for d in v)


@torch.no_grad()
def old_project_to_budget(self, multiple: int = 1) -> int:
    """UVCClassifier.project_to_budget before the redesign, verbatim: every group rescored
    after each removal (the reference of the incremental ops.uvc.project_to_budget)."""
    bb = self.uvc_backbone
    n, c, hd = self.cost.num_tokens, self.cost.embed_dims, bb.head_dims
    ub = bb.bounds
    removed = 0
    while self.flops_fraction(hard=True) > self.budget:
        head_s, dim_s, neuron_s = bb.group_scores()
        masks = bb.compute_masks((head_s, dim_s, neuron_s))
        runs = bb.block_keep_hard()
        nh, nn_, nd = bb.removed_counts()
        inf = torch.tensor(float('inf'))
        # heads: the next head's score / the MACs its removal saves
        sorted_h, order_h = torch.sort(head_s, dim=-1, stable=True)
        k = nh.clamp(max=bb.num_heads - 1)
        nxt_h = order_h.gather(-1, k.unsqueeze(-1)).squeeze(-1)  # (L,)
        v_kept = masks.dims.sum(-1).gather(-1, nxt_h.unsqueeze(-1)).squeeze(-1).double()
        saved_h = n * c * (2 * hd + v_kept) + n * n * (hd + v_kept) + n * v_kept * c
        cost_h = (sorted_h.gather(-1, k.unsqueeze(-1)).squeeze(-1).double()
                  / head_s.mean(-1).double().clamp(min=1e-12) / saved_h)
        cost_h[(nh + 1 > ub['arch_heads'] + 1e-8) | ~runs] = inf
        # neurons
        sorted_n, _ = torch.sort(neuron_s, dim=-1)
        kn = nn_.clamp(max=bb.mlp_dims - 1)
        cost_n = (sorted_n.gather(-1, kn.unsqueeze(-1)).squeeze(-1).double()
                  / neuron_s.mean(-1).double().clamp(min=1e-12) / (2 * n * c))
        cost_n[(nn_ + 1 > ub['arch_neurons'] + 1e-8) | ~runs] = inf
        # value dims inside kept heads
        sorted_d, _ = torch.sort(dim_s, dim=-1)
        kd = nd.clamp(max=hd - 1)
        cost_d = (sorted_d.gather(-1, kd.unsqueeze(-1)).squeeze(-1).double()
                  / dim_s.mean((-1, -2)).double().clamp(min=1e-12).unsqueeze(-1)
                  / (2 * n * c + n * n))
        cost_d[(nd + 1 > ub['arch_dims'] + 1e-8) | ~masks.heads
               | ~runs.unsqueeze(-1)] = inf
        best = [(cost_h.min(), 'arch_heads', cost_h.argmin()),
                (cost_n.min(), 'arch_neurons', cost_n.argmin()),
                (cost_d.min(), 'arch_dims', cost_d.argmin())]
        value, name, idx = min(best, key=lambda t: float(t[0]))
        if not torch.isfinite(value):
            break  # nothing left to remove
        p = getattr(bb, name).view(-1)
        p[idx] = torch.ceil(p[idx]) + 1
        removed += 1
    if multiple > 1:
        runs = bb.block_keep_hard()
        masks = bb.compute_masks()
        for name, kept, keep in (
                ('arch_neurons', bb.mlp_dims - torch.ceil(bb.arch_neurons), runs),
                ('arch_dims', hd - torch.ceil(bb.arch_dims), masks.heads & runs[:, None])):
            extra = torch.where(keep & (kept > multiple), kept % multiple,
                                torch.zeros_like(kept))
            p = getattr(bb, name)
            p.copy_(torch.ceil(p) + extra)
            removed += int(extra.sum())
    bb.refresh_masks()
    return removed


@pytest.mark.parametrize('gating, budget', [(None, 0.45), ('gumbel', 0.4), ('soft_l0', 0.3)])
def test_end_of_search_projection_equals_the_old_greedy(gating, budget):
    """The projection (ops.uvc.project_to_budget, rescoring only the block that lost a group)
    writes the architecture variables the old rescore-everything loop wrote."""
    import copy
    for multiple in (1, 8):
        model = build(backbone=dict(block_gating=gating), budget=budget)
        random_architecture(model, seed=multiple)
        old = copy.deepcopy(model)
        assert model.project_to_budget(multiple) == old_project_to_budget(old, multiple) > 0
        for name in ('arch_heads', 'arch_neurons', 'arch_dims', 'mask_heads', 'mask_dims',
                     'mask_neurons', 'mask_blocks'):
            assert torch.equal(getattr(model.backbone, name), getattr(old.backbone, name)), name
        assert model.flops_fraction(hard=True) == old.flops_fraction(hard=True) <= budget


# ---- optimizers and the dual lr schedule ------------------------------------------------------
def test_optim_wrapper_dict_partitions_the_parameters():
    model = build(backbone=dict(patch_gating=True))
    ow = optim(model)
    assert set(ow.keys()) == {'weights', 'arch', 'gates', 'duals', 'flops_dual'}
    seen = {}
    for key, wrapper in ow.items():
        for group in wrapper.optimizer.param_groups:
            for p in group['params']:
                assert id(p) not in seen, f'{key} and {seen.get(id(p))} share a parameter'
                seen[id(p)] = key
    names = {id(p): n for n, p in model.named_parameters()}
    owner = {names[i]: k for i, k in seen.items()}
    assert owner['backbone.block_gates'] == 'gates'
    assert owner['backbone.patch_gates'] == 'weights'  # the original trains it with the weights
    assert owner['backbone.arch_dims'] == 'arch' and owner['dual_flops'] == 'flops_dual'
    assert owner['dual_dims'] == 'duals'
    assert set(owner) == {n for n, p in model.named_parameters()
                          if p.requires_grad or n.split('.')[-1].startswith(('arch_', 'dual_'))}
    with pytest.raises(ConfigError, match='UVCClassifier'):
        UVCOptimWrapperConstructor(dict(weights=dict(optimizer=dict(type='SGD', lr=1.))))(
            torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="'weights'"):
        UVCOptimWrapperConstructor(dict(optimizer=dict(type='SGD', lr=1.)))


def test_preset_lr_really_changes_the_dual_step_size():
    """The original's zlr schedule edits a key its optimizer never reads; here it applies."""
    p = torch.nn.Parameter(torch.zeros(1))
    wrapper = OptimWrapper(torch.optim.SGD([p], lr=1.0))
    sched = PresetLR(wrapper, milestones=[0, 2, 4], values=[1.0, 5.0, 9.0], by_epoch=True)
    lrs = []
    for _ in range(6):
        lrs.append(wrapper.optimizer.param_groups[0]['lr'])
        wrapper.step()
        sched.step()
    assert lrs == [1.0, 1.0, 5.0, 5.0, 9.0, 9.0]
    with pytest.raises(ConfigError, match='milestones'):
        PresetLR(wrapper, milestones=[2, 1], values=[1.0, 2.0])


# ---- multi-process -----------------------------------------------------------------------------
def test_ddp_wrapper_lives_in_the_mmsparse_registry_and_the_runner_finds_it():
    from mmengine.model import is_model_wrapper
    from mmengine.registry import MODEL_WRAPPERS as ROOT
    from mmsparse.models.uvc_ddp import UVCDistributedDataParallel
    from mmsparse.registry import MODEL_WRAPPERS, scoped_type
    from mmsparse.utils.cli import load_config
    assert MODEL_WRAPPERS.get('UVCDistributedDataParallel') is UVCDistributedDataParallel
    assert 'UVCDistributedDataParallel' not in ROOT.module_dict
    # Runner.wrap_model: MODEL_WRAPPERS.get(type) on the root (no default scope), then build
    type_ = scoped_type(ROOT, load_config(str(STAGE1)).model_wrapper_cfg['type'])
    assert type_ == 'mmsparse.UVCDistributedDataParallel'
    assert ROOT.get(type_) is UVCDistributedDataParallel
    assert scoped_type(ROOT, 'MMDistributedDataParallel') == 'MMDistributedDataParallel'
    model = build()
    wrapped = ROOT.build(dict(type=type_), default_args=dict(module=model))
    assert is_model_wrapper(wrapped) and wrapped.module is model
    model.train()
    assert 'flops_real' in wrapped.train_step(batch(), optim(model))  # the model's own step


def _two_process_average(rank: int, init_file: str, out: dict) -> None:
    import torch.distributed as dist
    from mmsparse.models.uvc_ddp import UVCDistributedDataParallel, average_gradients
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    module = torch.nn.Linear(2, 1)
    with torch.no_grad():
        module.weight.fill_(float(rank))
    UVCDistributedDataParallel(module)  # broadcasts process 0's state
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    a.grad = torch.tensor([1.0, 2.0]) * (rank + 1)  # b has no gradient on either process
    average_gradients([a, b])
    out[rank] = (module.weight.tolist(), a.grad.tolist(), b.grad.tolist())
    dist.destroy_process_group()


def test_gradients_are_averaged_over_processes(tmp_path):
    import torch.multiprocessing as mp
    with mp.Manager() as manager:
        out = manager.dict()
        # fork: the children start with mmsparse imported (spawn would import it again, slowly)
        mp.start_processes(_two_process_average, args=(str(tmp_path / 'init'), out), nprocs=2,
                           start_method='fork')
        results = dict(out)
    for rank in (0, 1):
        assert results[rank] == ([[0.0, 0.0]], [1.5, 3.0], [0.0])


# ---- compaction --------------------------------------------------------------------------------
def random_architecture(model, seed=0):
    bb = model.backbone
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bb.arch_heads.copy_(torch.tensor([1.0, 0.3, 0.0]))
        bb.arch_neurons.copy_(torch.randint(0, 60, (3, ), generator=g).float() + 0.5)
        bb.arch_dims.copy_(torch.rand(3, 2, generator=g) * 14)
        bb.arch_dims[2, 0] = 3.0  # heads of equal and of different value dims
        bb.arch_dims[2, 1] = 3.0
        bb.block_gates.copy_(torch.tensor([[-1.0, 1.0], [1.0, -1.0], [-1.0, 1.0]]))  # skip 1
        for layer in bb.layers:  # non-trivial weights
            for p in layer.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    bb.refresh_masks()


def test_compaction_equals_masked_model_and_its_flops_equal_the_resource():
    model = build(backbone=dict(block_gating='gumbel'))
    random_architecture(model)
    model.eval()
    compact, cfg = compact_uvc_model(model, uvc_cfg(backbone=dict(block_gating='gumbel')))
    layers = cfg['backbone']['layers']
    assert len(layers) == 2  # block 1 skipped
    assert layers[0]['v_dims'] and len(layers[0]['v_dims']) == 1  # a head removed
    assert layers[1]['v_dims'] == [13, 13]  # 16 - 3 each, one attention call
    x = torch.randn(6, 1, 16, 16)
    assert max_output_diff(model, compact, x) <= 1e-5
    # FLOPs: traced MACs of the compact model == the resource function of the hard architecture
    traced = count_flops(part_module(compact, 'model', x[:1]), (x[:1], )).flops
    bb = model.backbone
    masks = bb.compute_masks()
    hard = uvc_macs(model.cost, bb.arch_heads, bb.arch_neurons, bb.arch_dims, masks.heads,
                    bb.block_keep_hard().float())
    assert traced == int(hard.item())
    assert traced / model.cost.dense_macs == pytest.approx(model.flops_fraction(hard=True),
                                                           abs=1e-12)
    # a fixed-architecture (stage 2) model from the same state dict computes the same
    fixed = build(backbone=dict(block_gating='gumbel', mode='fixed'))
    fixed.load_state_dict(model.state_dict())
    fixed.train()  # fixed mode applies the stored masks in training too (no dropout here)
    with torch.no_grad():
        torch.testing.assert_close(fixed(x, mode='tensor'), compact(x, mode='tensor'),
                                   atol=1e-5, rtol=0)
    assert fixed.flops_fraction() == pytest.approx(model.flops_fraction(hard=True), abs=1e-12)


# ---- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize('kw, match', [
    (dict(budget=0.0), 'model.budget must be a FLOPs fraction in \\(0, 1\\)'),
    (dict(budget=1.0), 'model.budget'),
    (dict(budget=-0.2), 'model.budget'),
    (dict(budget=0.01, backbone=dict(block_gating=None)), 'below what the structure can reach'),
    (dict(backbone=dict(block_gating='soft_l0', gumbel_hard=True)), 'gumbel_hard=True contra'),
    (dict(backbone=dict(mode='fixed', patch_gating=True)), 'patch_gating=True contradicts'),
    (dict(backbone=dict(block_gating=None, warmup_block_keep=0.5)), 'contradicts block_gating'),
    (dict(backbone=dict(block_gating='l0')), 'block_gating must be'),
    (dict(backbone=dict(mode='stage1')), "backbone.mode must be 'search'"),
    (dict(backbone=dict(out_type='avg_featmap')), 'out_type'),
    (dict(arch_precondition='newton'), 'arch_precondition'),
    (dict(gating_interval=0), 'gating_interval'),
    (dict(backbone=dict(train_masked='yes')), 'backbone.train_masked must be True or False'),
    (dict(backbone=dict(eval_masked=1)), 'backbone.eval_masked must be True or False'),
    (dict(least_sum_slope='prev'),
     "model.least_sum_slope must be one of \\('next', 'nearest'\\)"),
    # every message names the full config key
    (dict(warmup_epochs=-1), 'model.warmup_epochs must be an integer >= 0'),
    (dict(distill_alpha=1.5), 'model.distill_alpha must be a number in \\[0, 1\\]'),
    (dict(distill_tau=0), 'model.distill_tau must be a number > 0'),
    (dict(neck=dict(type='mmpretrain.GlobalAveragePooling')), 'model.neck must be None'),
    (dict(gating_interval=0), 'model.gating_interval must be an integer >= 1'),
    (dict(score_normalize='max'), "model.score_normalize must be one of 'none', 'sum'"),
    (dict(resource_clip=0.0), 'model.resource_clip must be a number > 0'),
    (dict(arch_grad_clip=-1.0), 'model.arch_grad_clip must be a number > 0'),
])
def test_bad_input_fails_at_build_time(kw, match):
    with pytest.raises(ConfigError, match=match):
        build(**kw)


def test_bad_hook_input_names_the_hook_key():
    from mmsparse.engine.uvc_hooks import UVCHook
    with pytest.raises(ConfigError, match=r'custom_hooks\[UVCHook\]\.round_to must be an integer'):
        UVCHook(round_to=0)


def test_stage1_needs_the_uvc_optimizers_and_stage2_a_plain_one():
    model = build()
    plain = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ConfigError, match='UVCOptimWrapperConstructor'):
        model.train_step(batch(), plain)
    fixed = build(backbone=dict(mode='fixed'))
    with pytest.raises(ConfigError, match='one optimizer'):
        fixed.train_step(batch(), optim(model))
    with pytest.raises(ConfigError, match="stage 1"):
        optim(fixed)
    log = fixed.train_step(batch(), OptimWrapper(torch.optim.SGD(
        [p for p in fixed.parameters() if p.requires_grad], lr=0.1)))
    assert 'loss_distill' in log


def test_amp_scales_the_weights_loss_only(monkeypatch):
    """``--amp`` on the stage-1 config: only ``weights`` becomes an AmpOptimWrapper, and a step
    under loss scaling gives the block gates the task gradient of a step without it."""
    from mmsparse.utils.cli import enable_amp, load_config
    # MMEngine's AmpOptimWrapper refuses to be built without a GPU; a CPU GradScaler (enabled
    # on CPU, unlike the CUDA one it would make) stands in for the loss scaling below
    monkeypatch.setattr('mmengine.device.is_cuda_available', lambda: True)
    monkeypatch.setattr('mmengine.optim.optimizer.amp_optimizer_wrapper.is_cuda_available',
                        lambda: True)
    cfg = load_config(str(STAGE1))
    enable_amp(cfg)
    assert cfg.optim_wrapper.weights.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.weights.loss_scale == 'dynamic'
    assert 'type' not in cfg.optim_wrapper  # the constructor's keys only
    assert all(cfg.optim_wrapper[k].get('type', 'OptimWrapper') == 'OptimWrapper'
               for k in ('arch', 'gates', 'duals', 'flops_dual'))
    with pytest.raises(ConfigError, match='optim_wrapper.duals.type: AmpOptimWrapper'):
        UVCOptimWrapperConstructor(dict(weights=dict(optimizer=dict(type='SGD', lr=0.)),
                                        duals=dict(type='AmpOptimWrapper',
                                                   optimizer=dict(type='SGD', lr=0.))))

    def gate_task_grad(amp: bool, gate_step: str = 'uniform'):
        model = build(backbone=dict(block_gating='soft_l0'), gating_interval=3,
                      gating_weight=0.0,  # the gates' gradient is the task gradient alone
                      gate_step=gate_step)
        ow = optim(model)
        if amp:
            weights = UVCOptimWrapperConstructor(dict(weights=dict(
                type='AmpOptimWrapper', optimizer=dict(type='AdamW', lr=0.0))))(model)['weights']
            weights.loss_scaler = torch.amp.GradScaler('cpu', init_scale=1024.0)
            ow = OptimWrapperDict(**{**dict(ow.items()), 'weights': weights})
        model.train()
        # gate_step='original': the first gradient of an interval weighs 0, take the second
        for _ in range(1 if gate_step == 'uniform' else 2):
            model.train_step(batch(), ow)
        return model.gate_grad_sum.clone()

    # 'original': the gates are in the AmpOptimWrapper too, whose scaler unscales them once
    for gate_step in ('uniform', 'original'):
        plain, scaled = gate_task_grad(False, gate_step), gate_task_grad(True, gate_step)
        assert plain.abs().sum() > 0
        # bfloat16 autocast on CPU changes the gradient a little; an unscaled one would be 1024x
        torch.testing.assert_close(scaled, plain, rtol=0.1,
                                   atol=1e-4 * plain.abs().max().item(), msg=gate_step)


# ---- the command lines: train, resume, stage 2, compaction, test -------------------------------
STAGE1_EXTRA = """
load_from = None
max_epochs = 2
model = dict(warmup_epochs=1, gating_interval=3, backbone=dict(block_gating='soft_l0'))
optim_wrapper = dict(arch=dict(optimizer=dict(lr=0.05)))
param_scheduler = dict(
    weights=[dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=0, end=2,
                  convert_to_iter_based=True)],
    flops_dual=[dict(type='PresetLR', by_epoch=True, milestones=[0, 1], values=[0.5, 2.0],
                     end=2)])
train_cfg = dict(max_epochs=max_epochs, val_interval=1)
# no end-of-search projection: the interrupted run's last epoch would get it, the full run's not
custom_hooks = [dict(type='UVCHook', project_at_end=False)]
"""
STAGE2_EXTRA = """
load_from = None
model = dict(backbone=dict(block_gating='soft_l0'))
train_cfg = dict(max_epochs=1, val_interval=1)
"""
UVC_KEYS = ('dual_', 'gate_grad', 'backbone.arch_', 'backbone.block_gates', 'backbone.mask_',
            'backbone.soft_l0_eps')


@pytest.fixture(scope='module')
def stage1_runs(tmp_path_factory, data_root):
    tmp = tmp_path_factory.mktemp('uvc')
    cfg1 = tmp / 'stage1.py'
    cfg1.write_text(small_config(STAGE1, STAGE1_EXTRA, epochs=None))
    cfg2 = tmp / 'stage2.py'
    cfg2.write_text(small_config(STAGE2, STAGE2_EXTRA, epochs=None))
    full, cut = tmp / 'full', tmp / 'cut'
    out_full = ok(run_tool('tools/train.py', cfg1, '--work-dir', full))
    ok(run_tool('tools/train.py', cfg1, '--work-dir', cut, '--cfg-options',
                'train_cfg.max_epochs=1'))
    out_cut = ok(run_tool('tools/train.py', cfg1, '--work-dir', cut, '--resume'))
    return dict(tmp=tmp, cfg1=cfg1, cfg2=cfg2, full=full, cut=cut,
                log_full=out_full.stdout + out_full.stderr,
                log_cut=out_cut.stdout + out_cut.stderr)


def test_stage1_logs_expected_and_real_flops_every_epoch(stage1_runs):
    log = stage1_runs['log_full']
    for epoch in (0, 1):
        assert f'UVC epoch {epoch}: FLOPs expected' in log
    assert 'real' in log and 'flops_expected' in log and 'flops_real' in log
    ckpt = load_checkpoint_file(str(stage1_runs['full'] / 'epoch_2.pth'), map_location='cpu')
    sd = ckpt['state_dict']
    assert any(k.startswith('teacher.') for k in sd)  # the dense teacher travels along
    assert float(sd['backbone.arch_neurons'].abs().sum()) > 0  # the search ran in epoch 2
    # the budget dual's lr follows the preset schedule (the original's no-op schedule fixed)
    assert ckpt['optimizer']['flops_dual']['param_groups'][0]['lr'] == 2.0


def test_resume_restores_every_architecture_and_dual_variable(stage1_runs):
    assert 'resumed epoch: 1' in stage1_runs['log_cut']
    a = load_checkpoint_file(str(stage1_runs['full'] / 'epoch_2.pth'), map_location='cpu')
    b = load_checkpoint_file(str(stage1_runs['cut'] / 'epoch_2.pth'), map_location='cpu')
    sa, sb = a['state_dict'], b['state_dict']
    assert sa.keys() == sb.keys()
    uvc = [k for k in sa if k.startswith(UVC_KEYS)]
    assert len(uvc) == 15
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-6, msg=k)
    assert a['optimizer'].keys() == b['optimizer'].keys() == {
        'weights', 'arch', 'gates', 'duals', 'flops_dual'}
    assert b['optimizer']['flops_dual']['param_groups'][0]['lr'] == 2.0


def test_stage2_compaction_test_and_compact_tool(stage1_runs):
    tmp = stage1_runs['tmp']
    s2 = tmp / 's2'
    proc = ok(run_tool('tools/train.py', stage1_runs['cfg2'], '--work-dir', s2, '--cfg-options',
                       f"load_from={stage1_runs['full'] / 'epoch_2.pth'}"))
    log = proc.stdout + proc.stderr
    assert 'UVC compact model written' in log
    compact_cfg, compact_ckpt = s2 / 'uvc_compact.py', s2 / 'uvc_compact.pth'
    assert compact_cfg.is_file() and compact_ckpt.is_file()
    # its structure travels in the file: DynamicViT on it at keep ratio 1 is the compact model
    from tests.test_svite import _composes
    _composes(str(compact_ckpt), str(compact_cfg))
    # the compact model runs as a normal classifier
    out = tmp / 'metrics.json'
    ok(run_tool('tools/test.py', compact_cfg, compact_ckpt, '--work-dir', tmp / 't',
                '--out', out, '--out-item', 'metrics'))
    assert 0.0 <= json.loads(out.read_text())['accuracy/top1'] <= 100.0
    # tools/compact.py --method uvc: outputs to 1e-5, measured FLOPs == the real fraction
    proc = ok(run_tool('tools/compact.py', stage1_runs['cfg2'], s2 / 'epoch_1.pth', '--out',
                       tmp / 'c', '--method', 'uvc', '--atol', '1e-5'))
    assert 'FLOPs: compact' in proc.stdout and 'UVC real fraction' in proc.stdout
    report = json.loads((tmp / 'c' / 'stage2_uvc.json').read_text())
    assert report['max_abs_diff'] <= 1e-5
    assert report['measured_flops_fraction'] == pytest.approx(report['real_flops_fraction'],
                                                              abs=1e-12)
    assert report['real_flops_fraction'] < 1.0
    # a stage-1 config cannot be compacted with patch gating, and a non-UVC model is refused
    proc = run_tool('tools/compact.py', REPO / 'configs/vit/vit-tiny-p4_fashion-mnist.py',
                    s2 / 'epoch_1.pth', '--out', tmp / 'x', '--method', 'uvc')
    assert proc.returncode == 2 and 'UVCClassifier' in proc.stderr


def test_pick_closest_epoch_prefers_not_above_the_budget():
    from mmsparse.engine.uvc_hooks import pick_closest_epoch
    assert pick_closest_epoch({1: 1.0, 2: 0.52, 3: 0.49, 4: 0.45}, 0.5) == 3  # below wins
    assert pick_closest_epoch({1: 1.0, 2: 0.5, 3: 0.5}, 0.5) == 3  # at the budget, the later
    assert pick_closest_epoch({1: 1.0, 2: 0.56, 3: 0.53, 4: 0.53}, 0.5) == 4  # all above
    with pytest.raises(ValueError, match='no epochs'):
        pick_closest_epoch({}, 0.5)


def test_stage2_starts_from_the_stage1_epoch_closest_to_the_budget(stage1_runs):
    import re
    from types import SimpleNamespace

    from mmengine.config import Config

    from mmsparse.engine.uvc_hooks import (UVCClosestEpochHook, pick_closest_epoch,
                                           stage1_epoch_flops)
    tmp, full = stage1_runs['tmp'], stage1_runs['full']
    # UVCHook's per-epoch real FLOPs travel in each epoch's checkpoint
    flops = stage1_epoch_flops(str(full))
    assert sorted(flops) == [1, 2]
    logged = re.findall(r'UVC epoch (\d+): FLOPs expected [\d.]+ %, real ([\d.]+) %',
                        stage1_runs['log_full'])
    assert {int(e) + 1: float(f) for e, f in logged} == {
        e: pytest.approx(f * 100, abs=0.006) for e, (_, f) in flops.items()}
    epoch = pick_closest_epoch({e: f for e, (_, f) in flops.items()}, 0.5)
    cfg = tmp / 'stage2_closest.py'
    cfg.write_text("_base_ = ['./stage2.py']\nload_from = None\ncustom_hooks = ["
                   f"dict(type='UVCClosestEpochHook', stage1_work_dir={str(full)!r}), "
                   "dict(type='UVCHook')]\n")
    s2 = tmp / 's2_closest'
    proc = ok(run_tool('tools/train.py', cfg, '--work-dir', s2))
    assert f'budget 50.0 %: starting from epoch {epoch} ' in proc.stdout + proc.stderr
    # the fixed architecture of stage 2 is the picked epoch's
    a = load_checkpoint_file(str(full / f'epoch_{epoch}.pth'), map_location='cpu')['state_dict']
    b = load_checkpoint_file(str(s2 / 'epoch_1.pth'), map_location='cpu')['state_dict']
    masks = [k for k in a if k.startswith('backbone.mask_')]
    assert len(masks) == 4
    for k in masks:
        assert torch.equal(a[k], b[k]), k
    # bad input: with load_from set, or a dir without stage-1 checkpoints
    hook = UVCClosestEpochHook(str(full))
    with pytest.raises(ConfigError, match='load_from must be None'):
        hook.before_run(SimpleNamespace(cfg=Config(dict(load_from='x.pth'))))
    with pytest.raises(ConfigError, match='stage1_work_dir: no epoch'):
        stage1_epoch_flops(str(tmp / 'nothing'))
    with pytest.raises(ConfigError, match='stage1_work_dir'):
        UVCClosestEpochHook('')


@pytest.mark.parametrize('wrapper', ['mmsparse.UVCDistributedDataParallel',
                                     'UVCDistributedDataParallel'])
def test_stage1_on_two_processes_uses_the_uvc_wrapper(wrapper, stage1_runs, tmp_path):
    """Stage 1 under ``dist_train.sh`` (2 gloo ranks): the Runner finds mmsparse's wrapper in
    the child registry (the configs' prefixed name, and an unprefixed one from an older config)
    and the search runs and checkpoints its variables."""
    proc = ok(run_tool(REPO / 'tools/dist_train.sh', stage1_runs['cfg1'], 2, '--work-dir',
                       tmp_path, '--cfg-options', 'train_cfg.max_epochs=1',
                       f'model_wrapper_cfg.type={wrapper}',
                       env=tool_env(PORT='29531' if '.' in wrapper else '29533')))
    out = proc.stdout + proc.stderr
    assert 'Distributed launcher: pytorch' in out and 'UVC epoch 0: FLOPs expected' in out
    sd = load_checkpoint_file(str(tmp_path / 'epoch_1.pth'), map_location='cpu')['state_dict']
    assert all(k in sd for k in ('dual_flops', 'backbone.arch_heads', 'backbone.block_gates'))
