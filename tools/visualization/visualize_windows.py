"""Draw the windows a SparseViT backbone keeps, per stage, over an image (MMEngine Visualizer).

    python tools/visualization/visualize_windows.py CONFIG [CHECKPOINT] IMAGE [--ratios JSON]
        [--img-size H [W]] [--out windows.png]

One panel per stage, side by side: the image as the network sees it (resized), pruned windows
darkened, kept windows outlined, for the first pruned W-MSA (unshifted) block of the stage (later
unshifted blocks keep a prefix of these windows; shifted blocks use their own, rolled, windows).
``--ratios`` overrides the config's ``model.backbone.window_ratios``, e.g.
``--ratios '[[0.7,0.7],[0,0],[0.2,0.2,0.4,0.4,0.5,0.5],[0,0]]'``.
"""
import argparse
import json
import os

from mmsparse.utils import build_model, load_config, run_cli
from mmsparse.utils.cli import DictAction, UserError, input_size


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config file path')
    parser.add_argument('paths', nargs='+', metavar='[CHECKPOINT] IMAGE',
                        help='an optional checkpoint, then the image')
    parser.add_argument('--ratios', help='window ratios as JSON (default: the config\'s)')
    parser.add_argument('--img-size', type=int, nargs='+', default=None,
                        help='resize the image to H [W] (default: 672)')
    parser.add_argument('--out', default='windows.png', help='PNG to write')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value pairs')
    args = parser.parse_args(argv)
    if len(args.paths) > 2:
        parser.error('give at most a CHECKPOINT and an IMAGE')
    args.checkpoint = args.paths[0] if len(args.paths) == 2 else None
    args.image = args.paths[-1]
    return args


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def stage_panels(image, input_hw, kept_windows, strides, window_size):
    """One RGB panel per stage: pruned windows darkened, kept ones outlined, with a caption.

    Args:
        image: (H, W, 3) RGB image as fed to the network (before padding).
        input_hw: (H', W') of the backbone input (the image padded by the data preprocessor).
        kept_windows: the backbone's ``kept_windows`` after a forward.
        strides: total stride of each stage's feature map.
        window_size: ws.
    """
    import numpy as np
    from mmengine.visualization import Visualizer

    h, w = image.shape[:2]
    panels = []
    for stage, (records, stride) in enumerate(zip(kept_windows, strides)):
        vis = Visualizer(image=image.copy())
        side = window_size * stride  # window side in input pixels
        rows = _ceil_div(_ceil_div(input_hw[0], stride), window_size)
        cols = _ceil_div(_ceil_div(input_hw[1], stride), window_size)
        record = next((r for r in records if r['shift'] == 0), None)
        if record is None:
            caption = f'stage {stage}: dense ({rows * cols}/{rows * cols} windows)'
            kept = set(range(rows * cols))
        else:
            kept = set(record['indices'][0].tolist())
            caption = (f"stage {stage} block {record['block']}: ratio {record['ratio']:g}, "
                       f"kept {len(kept)}/{record['num_windows']}")
        boxes = [[min((i % cols) * side, w), min((i // cols) * side, h),
                  min((i % cols + 1) * side, w), min((i // cols + 1) * side, h)]
                 for i in range(rows * cols)]
        pruned = [b for i, b in enumerate(boxes) if i not in kept]
        if pruned:
            vis.draw_bboxes(np.array(pruned, dtype=np.float32), edge_colors='black',
                            face_colors='black', alpha=0.6, line_widths=1)
        kept_boxes = [b for i, b in enumerate(boxes) if i in kept]
        if kept_boxes:
            vis.draw_bboxes(np.array(kept_boxes, dtype=np.float32), edge_colors='lime',
                            alpha=1.0, line_widths=2)
        vis.draw_texts(caption, np.array([4, 4]), colors='white', font_sizes=max(10, w // 40),
                       bboxes=dict(facecolor='black', alpha=0.7, pad=2))
        panels.append(vis.get_image())
    return np.concatenate(panels, axis=1)


def main() -> int:
    args = parse_args()
    if not os.path.isfile(args.image):
        raise UserError(f'image not found: {args.image}')
    import mmcv
    import torch

    cfg = load_config(args.config, args.cfg_options)
    model = build_model(cfg, args.checkpoint)
    backbone = model.backbone
    if not hasattr(backbone, 'record_kept_windows'):
        raise UserError(f'model.backbone.type: {type(backbone).__name__} has no windows to draw; '
                        f'use a config with mmsparse.SparseSwinTransformer '
                        f'(configs/sparsevit/)')
    if args.ratios:
        try:
            backbone.window_ratios = json.loads(args.ratios)
        except (json.JSONDecodeError, ValueError) as e:
            raise UserError(f'--ratios: {e}') from None
    size = input_size(cfg, args.img_size or [672], '--img-size')
    image = mmcv.imread(args.image, channel_order='rgb')
    image = mmcv.imresize(image, (size[1], size[0]))
    data = dict(inputs=[torch.from_numpy(image[..., ::-1].copy()).permute(2, 0, 1)],
                data_samples=None)  # BGR, as a loading pipeline gives it
    inputs = model.data_preprocessor(data, False)['inputs']
    backbone.record_kept_windows(True)
    with torch.no_grad():
        backbone(inputs)
    kept = backbone.kept_windows
    backbone.record_kept_windows(False)
    strides, total = [], 1
    for s in backbone.strides:
        total *= s
        strides.append(total)
    picture = stage_panels(image, tuple(inputs.shape[-2:]), kept, strides, backbone.window_size)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    mmcv.imwrite(picture[..., ::-1], args.out)
    print(f'ratios: {json.dumps([list(r) for r in backbone.window_ratios])}')
    for stage, records in enumerate(kept):
        text = ', '.join(f"block {r['block']}: {r['indices'].shape[1]}/{r['num_windows']}"
                         for r in records) or 'dense'
        print(f'stage {stage}: {text}')
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    run_cli(main)
