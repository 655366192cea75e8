# The `make demo` row of SViTE: SViTE+ (unstructured density 0.5 + token selector keeping 70 % of
# the patch tokens) fine-tuned briefly from the dense demo model (the demo passes its checkpoint as
# load_from), so that it fits the demo's time budget: 200 iterations on the first 12800 training
# images (~1/5 of an epoch). The masks start from one-shot magnitude pruning of the dense weights
# (ERK densities, exact counts) and are updated every 50 iterations (magnitude death, gradient
# growth); the token selector is new (its keys are missing from the dense checkpoint) and learns
# with the Gumbel temperature annealed 10 -> 0.1. At inference 34 of the 49 patch tokens (+ the
# class token) are gathered, so FLOPs and latency drop; the weight sparsity itself saves nothing
# on dense kernels.
_base_ = ['./svite-plus-vit-tiny-p4_fashion-mnist.py']

train_dataloader = dict(dataset=dict(indices=12800))
optim_wrapper = dict(optimizer=dict(lr=5e-4),
                     paramwise_cfg=dict(custom_keys={'.token_selector': dict(lr_mult=10.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
]
custom_hooks = [
    dict(type='SparseTrainingHook', density=0.5, sparse_init='ERK', init_by='magnitude',
         growth='gradient', update_interval=50, stop_ratio=0.8, death_rate=0.3,
         death_rate_min=0.005),
    dict(type='TokenSelectorTemperatureHook', start=10.0, end=0.1, noise_until=0.5),
]
