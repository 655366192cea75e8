# SViTE+-Small keeping 70 % of the patch tokens (137 + class token = the original's 138).
_base_ = ['./svite-plus-deit-small_tokens0.9_8xb64_in1k.py']

model = dict(backbone=dict(token_keep=0.7))
