# The search on the three real VOC sample images, on CPU in minutes: the test / demo version of
# mask-rcnn_sparsevit-swin-t_search_coco.py (small population, 224x224 latency input).
#   torchpack dist-run -np 2 python tools/search.py \
#       configs/sparsevit/mask-rcnn_sparsevit-swin-t_search_voc-sample.py none \
#       --max-latency 850 --min-latency 650 --latency-table --warmup 1 --runs 3
# (`none`: the config's initial weights, so the mAP is ~0; pass an SAA checkpoint to rank by mAP.
# The window is for 2 ranks sharing 2 busy CPU cores: dense ~1.1 s per batch of 4 there; pick
# yours from the table's base / the latencies the log shows.)
_base_ = ['./mask-rcnn_sparsevit-swin-t_saa_voc-sample.py']

search_cfg = dict(population_size=6, parents=2, mutation_prob=0.1, iterations=10, seed=0,
                  img_size=224, metric='coco/bbox_mAP')
