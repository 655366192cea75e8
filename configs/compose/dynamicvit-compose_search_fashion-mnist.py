# Joint search on real Fashion-MNIST (CPU): which composed model (a compact structure with its
# trained DynamicViT predictors) and which keep ratios give the best test accuracy inside a
# latency window. The genome is one categorical gene (an entry of search_cfg.structures) plus the
# two keep-ratio genes (pruning before blocks 2 and 4), so the search trades structure against
# tokens. Each entry: `compact_checkpoint`, the compact checkpoint whose structure the model
# takes (model.compact_checkpoint; None = the dense DynamicViT), and `checkpoint`, the trained
# composed weights that are scored. Produce them (the dense demo ViT first, which the UVC and
# DynamicViT configs start from; `make demo` writes it too):
#   python tools/train.py configs/vit/vit-tiny-p4_fashion-mnist.py \
#       --work-dir work_dirs/demo/vit-tiny-p4_fashion-mnist
#   # 'uvc0.5': UVC at FLOPs budget 0.5, then DynamicViT on top of it
#   python tools/train.py configs/uvc/uvc-vit-tiny-p4_stage1_fashion-mnist.py
#   python tools/train.py configs/uvc/uvc-vit-tiny-p4_stage2_fashion-mnist.py  # uvc_compact.pth
#   python tools/train.py configs/compose/dynamicvit-uvc-vit-tiny-p4_budget0.5_fashion-mnist.py
#   # 's2vite': S²ViTE, compacted, then DynamicViT on top of it
#   python tools/train.py configs/svite/s2vite-vit-tiny-p4_fashion-mnist.py
#   python tools/compact.py configs/svite/s2vite-vit-tiny-p4_fashion-mnist.py \
#       work_dirs/s2vite-vit-tiny-p4_fashion-mnist/epoch_1.pth \
#       --out work_dirs/s2vite-vit-tiny-p4_fashion-mnist/compact --method svite
#   python tools/train.py configs/compose/dynamicvit-s2vite-vit-tiny-p4_fashion-mnist.py
#   # 'dense': DynamicViT on the dense demo ViT
#   python tools/train.py configs/dynamicvit/dynamicvit-vit-tiny-p4_fashion-mnist.py \
#       --cfg-options load_from=work_dirs/demo/vit-tiny-p4_fashion-mnist/epoch_1.pth
# then search (CHECKPOINT is none: every entry names its own checkpoint):
#   python tools/search.py configs/compose/dynamicvit-compose_search_fashion-mnist.py none
# It writes work_dirs/dynamicvit-compose_search_fashion-mnist_search/search_best_*.py, which sets
# the chosen entry's model.compact_checkpoint and load_from and the keep ratios. A 2-rank run:
#   torchpack dist-run -np 2 python tools/search.py <this config> none --launcher mpi
_base_ = ['./dynamicvit-uvc-vit-tiny-p4_budget0.5_fashion-mnist.py']

search_cfg = dict(
    # latency window (ms) of the backbone at batch 4, 28x28 (tools/search.py --batch-size /
    # --img-size; the flags --max-latency / --min-latency override it). The values are an
    # example for a 2-core CPU: measure your models first (tools/analysis_tools/
    # measure_latency.py) and put the window between the fastest and the slowest entry.
    max_latency=4.0,
    min_latency=0.0,
    # a small search for a CPU: 4 x 16 feasible draws at most 400 draws (SparseViT: 100 / 25,
    # 10,000 draws)
    population_size=16,
    parents=4,
    mutation_prob=0.2,
    max_draws=400,
    iterations=4,
    # keep ratios (of the 49 patch tokens) a stage may take; the smallest keeps int(49 * 0.3)
    # = 14 tokens (every candidate must keep >= 1: at least 0.0205)
    candidates=[1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3],
    structures=[
        dict(name='uvc0.5',
             compact_checkpoint='work_dirs/uvc-vit-tiny-p4_stage2_fashion-mnist/'
                                'uvc_compact.pth',
             checkpoint='work_dirs/dynamicvit-uvc-vit-tiny-p4_budget0.5_fashion-mnist/'
                        'epoch_1.pth'),
        dict(name='s2vite',
             compact_checkpoint='work_dirs/s2vite-vit-tiny-p4_fashion-mnist/compact/'
                                's2vite-vit-tiny-p4_fashion-mnist_compact.pth',
             checkpoint='work_dirs/dynamicvit-s2vite-vit-tiny-p4_fashion-mnist/epoch_1.pth'),
        dict(name='dense',
             compact_checkpoint=None,
             checkpoint='work_dirs/dynamicvit-vit-tiny-p4_fashion-mnist/epoch_1.pth'),
    ],
)
