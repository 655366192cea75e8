"""Side-by-side profiles of several models: FLOPs, parameters, latency and speed-up.

Used by ``make demo`` and ``benchmarks/``: the models' latencies are measured interleaved in one
run, and speed-ups are ratios against the first (reference) model of that same run.
"""
import json
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from torch import nn

from .flops import count_flops
from .latency import measure_latency, thread_info
from .model_parts import make_images, part_callable, part_module

__all__ = ['profile_models', 'markdown_table', 'write_report']


def profile_models(models: Mapping[str, nn.Module], img_size: Tuple[int, int], channels: int = 3,
                   part: str = 'model', batch_sizes: Sequence[int] = (1, 32), warmup: int = 10,
                   runs: int = 50, device: str = 'cpu') -> List[dict]:
    """FLOPs at batch 1, params, and latency at each batch size of every model, side by side.

    Returns:
        One dict per model, in order: ``name, gflops, mparams, latency_ms {bs: ms},
        speedup {bs: x}`` (speed-up of the model against the first one, same run).
    """
    rows = []
    one = make_images(1, img_size, channels, device=device)
    for name, model in models.items():
        model.eval()
        res = count_flops(part_module(model, part, one), (one, ))
        rows.append(dict(name=name, gflops=res.gflops, mparams=res.mparams, latency_ms={},
                         speedup={}))
    for bs in batch_sizes:
        images = make_images(bs, img_size, channels, device=device)
        fns = {name: part_callable(model, part, images) for name, model in models.items()}
        lat = measure_latency(fns, warmup=warmup, runs=runs)
        ref = lat[next(iter(models))].trimmed_mean_ms
        for row in rows:
            ms = lat[row['name']].trimmed_mean_ms
            row['latency_ms'][bs] = ms
            row['speedup'][bs] = ref / ms
    return rows


def markdown_table(rows: List[dict], extra: Optional[Sequence[Tuple[str, str, str]]] = None,
                   ) -> str:
    """A markdown table of :func:`profile_models` rows.

    Args:
        rows: the profile rows, possibly with extra keys (e.g. ``top1``).
        extra: ``(key, header, format)`` of extra columns placed after the name.
    """
    extra = list(extra or [])
    batch_sizes = list(rows[0]['latency_ms']) if rows else []
    headers = ['model'] + [h for _, h, _ in extra] + ['GFLOPs', 'params (M)']
    headers += [f'latency bs{bs} (ms)' for bs in batch_sizes]
    headers += [f'speed-up bs{bs}' for bs in batch_sizes]
    lines = ['| ' + ' | '.join(headers) + ' |', '|' + '---|' * len(headers)]
    for row in rows:
        cells = [row['name']]
        cells += [('-' if row.get(k) is None else format(row[k], fmt)) for k, _, fmt in extra]
        cells += [f"{row['gflops']:.4f}", f"{row['mparams']:.3f}"]
        cells += [f"{row['latency_ms'][bs]:.2f}" for bs in batch_sizes]
        cells += [f"{row['speedup'][bs]:.2f}x" for bs in batch_sizes]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def write_report(rows: List[dict], path_prefix: str, table: str,
                 meta: Optional[Dict] = None) -> None:
    """Write ``<prefix>.json`` (rows + threads/device) and ``<prefix>.md`` (the table)."""
    with open(f'{path_prefix}.json', 'w') as f:
        json.dump(dict(meta or {}, **thread_info(), rows=rows), f, indent=2)
    with open(f'{path_prefix}.md', 'w') as f:
        f.write(table + '\n')
