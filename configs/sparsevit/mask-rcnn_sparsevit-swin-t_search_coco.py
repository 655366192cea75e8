# SparseViT step 2, latency-constrained evolutionary search on the SAA model (the paper's protocol:
# Swin-T backbone latency at batch 4, 672x672; fitness = bbox mAP on COCO val2017):
#   torchpack dist-run -np 8 python tools/search.py \
#       configs/sparsevit/mask-rcnn_sparsevit-swin-t_search_coco.py work_dirs/<saa>/epoch_12.pth \
#       --max-latency 42 --min-latency 37
# The best window ratios are written to <work_dir>/search_best_*.py, a config to fine-tune with
# (step 3, like ..._cfg1/2/3_coco.py). Candidates: the SAA hook's ({0, 0.1, ..., 0.8}).
_base_ = ['./mask-rcnn_sparsevit-swin-t_saa_coco.py']

# The original's EvolveSearcher and budget (its tools/search.py): 10,000 draws in all (random phase,
# infeasible draws and repeats included; as many generations of 100 feasible draws as that allows),
# parents = the 25 best of the generation just drawn, mutation from a fresh sorted sample.
search_cfg = dict(population_size=100, parents=25, mutation_prob=0.1, max_draws=10000,
                  iterations=None, selection='population', mutation='sample', mutation_share=0.5,
                  seed=0, img_size=672, metric='coco/bbox_mAP')
