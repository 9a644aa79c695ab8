"""How fast one sliding-window batch goes through the network on the CPU, and where the time goes, as JSON.

The network is the cpu-demo segmentation model's shape (SwinUNETR, feature size 12, 14 outputs, 64³
windows, inference mode, random weights: the op mix does not depend on them). Three attention routes on
the same weights and input, timed in the same run (median of ``--repeats`` forward passes each):

- ``monai_default``: MONAI's default attention (the baseline recipe's),
- ``monai_sdpa``: MONAI's SDPA path (``use_flash_attention=True``),
- ``asa_cached``: ASA-CT's fast path, SDPA with the bias built once per window layout
  (:mod:`models.inference.window_attention`) and channels-last convolution weights
  (:func:`models.inference.predict.conv_layout`) with channels-last instance norm, in one stream of
  ``--threads`` threads;
- ``asa_cached_streams``: the same, as ``asa segment`` runs it on CPU: ``CPU_STREAMS`` threads of
  ``threads / CPU_STREAMS`` intra-op threads, each with ``--batch`` windows (time per ``--batch`` windows);
- ``asa_cached_streams_default_layout``: the same with PyTorch's default (channels-first) weights, the
  route before channels-last;
- ``asa_cached_streams_pytorch_norm``: the same with PyTorch's instance norm, which copies channels-last
  tensors to channels-first (the route before :mod:`models.inference.channels_last_norm`);
- ``asa_cached_streams_all_rows``: the same with MONAI's blocks, which compute attention for the padding's
  queries too (the route before :class:`models.inference.window_attention.PaddingAwareSwinBlock`);
- ``asa_cached_bf16``, ``asa_cached_streams_bf16``: the same two under bf16 autocast, as ``asa segment
  --bf16`` runs them (only on a CPU with native bf16, AMX or AVX512-BF16: elsewhere it is emulated).

For ``asa_cached`` (and ``asa_cached_bf16``) the operators' self-times (torch.profiler) are summed into a
few groups, as shares.

    python bench/network_profile.py [--threads 2] [--batch 2] [--repeats 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from jsonout import emit_json
from monai.networks.nets import SwinUNETR, swin_unetr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.inference.channels_last_norm import enable_channels_last_norm
from models.inference.predict import CPU_STREAMS, conv_layout, stream_windows
from models.inference.segmenter import cpu_has_native_bf16
from models.inference.window_attention import PaddingAwareSwinBlock, enable_fast_attention

GROUPS = {  # exact operator names
    "attention (SDPA)": ("aten::_scaled_dot_product_flash_attention_for_cpu",),
    "3D convolution, oneDNN": ("aten::mkldnn_convolution",),
    "3D convolution, slow fallback": ("aten::slow_conv3d_forward", "aten::slow_conv_transpose3d"),
    "elementwise add (residuals, attention bias + mask)": ("aten::add", "aten::add_"),
    "copies and reshapes (window partition, roll)": ("aten::copy_", "aten::cat"),
    "shifted-window mask building": ("aten::masked_fill_", "aten::index", "aten::ne", "aten::eq", "aten::sub"),
    "normalisation": ("aten::native_batch_norm", "aten::native_layer_norm", "aten::sum", "aten::addcmul"),
    "linear layers": ("aten::addmm", "aten::mm", "aten::bmm"),
}


def _median_forward(net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        net(x)  # warm-up (and, for the cached route, the one-off bias build)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _in_streams(net: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        with stream_windows(net, CPU_STREAMS) as forward:
            return forward(x)

    return run


def _in_bf16(net: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``net`` under bf16 autocast, entered in the calling thread (autocast is per thread), fp32 out."""

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return net(x).float()

    return run


def _shares(net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> dict:
    with torch.inference_mode(), torch.profiler.profile() as prof:
        net(x)
    events = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in events)
    shares = {name: sum(t for k, t in events if k in names) / total for name, names in GROUPS.items()}
    shares["other"] = 1.0 - sum(shares.values())
    return {
        "shares": {k: round(v, 3) for k, v in shares.items()},
        "top_ops": [{"op": k, "share": round(t / total, 3)} for k, t in sorted(events, key=lambda e: -e[1])[:10]],
    }


def main(threads: int, batch: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    monai_sdpa = SwinUNETR(in_channels=1, out_channels=14, feature_size=12, use_flash_attention=True).eval()
    monai_default = copy.deepcopy(monai_sdpa)
    enable_fast_attention(monai_default, False)
    asa_default_layout = copy.deepcopy(monai_sdpa)
    enable_fast_attention(asa_default_layout, True)
    asa = copy.deepcopy(asa_default_layout).to(memory_format=conv_layout(torch.device("cpu"), fast_path=True))
    pytorch_norm = copy.deepcopy(asa)  # PyTorch's instance norm on channels-last tensors, the route before
    enable_channels_last_norm(asa, True)
    x = torch.rand(batch, 1, 64, 64, 64)
    times = {
        name: _median_forward(net, x, repeats)
        for name, net in (("monai_default", monai_default), ("monai_sdpa", monai_sdpa), ("asa_cached", asa))
    }
    x_streams = torch.rand(batch * CPU_STREAMS, 1, 64, 64, 64)
    times["asa_cached_streams"] = _median_forward(_in_streams(asa), x_streams, repeats) / CPU_STREAMS
    times["asa_cached_streams_default_layout"] = (
        _median_forward(_in_streams(asa_default_layout), x_streams, repeats) / CPU_STREAMS
    )
    times["asa_cached_streams_pytorch_norm"] = (
        _median_forward(_in_streams(pytorch_norm), x_streams, repeats) / CPU_STREAMS
    )
    all_rows = copy.deepcopy(asa)  # attention for the padding's queries too, as before PaddingAwareSwinBlock
    for module in all_rows.modules():
        if isinstance(module, PaddingAwareSwinBlock):
            module.__class__ = swin_unetr.SwinTransformerBlock
    times["asa_cached_streams_all_rows"] = _median_forward(_in_streams(all_rows), x_streams, repeats) / CPU_STREAMS
    bf16: dict = {}
    if cpu_has_native_bf16():
        times["asa_cached_bf16"] = _median_forward(_in_bf16(asa), x, repeats)
        times["asa_cached_streams_bf16"] = _median_forward(_in_streams(_in_bf16(asa)), x_streams, repeats) / CPU_STREAMS
        with torch.inference_mode():
            ref, low = asa(x), _in_bf16(asa)(x)
        bf16 = {
            "speedup_bf16_vs_fp32_streams": round(times["asa_cached_streams"] / times["asa_cached_streams_bf16"], 3),
            "bf16_argmax_agreement_random_weights": float((ref.argmax(1) == low.argmax(1)).float().mean()),
            "asa_cached_bf16_profile": _shares(_in_bf16(asa), x),
        }
    with torch.inference_mode():
        max_diff = float((asa(x) - monai_sdpa(x)).abs().max())
    return {
        "threads": threads,
        "batch": batch,
        "repeats": repeats,
        "forward_s": {k: round(v, 4) for k, v in times.items()},
        "speedup_vs_monai_sdpa": round(times["monai_sdpa"] / times["asa_cached"], 3),
        "speedup_vs_monai_default": round(times["monai_default"] / times["asa_cached"], 3),
        "streams": CPU_STREAMS,
        "speedup_streams_vs_one_stream": round(times["asa_cached"] / times["asa_cached_streams"], 3),
        "speedup_channels_last_vs_default_layout": round(
            times["asa_cached_streams_default_layout"] / times["asa_cached_streams"], 3
        ),
        "speedup_channels_last_norm_vs_pytorch_norm": round(
            times["asa_cached_streams_pytorch_norm"] / times["asa_cached_streams"], 3
        ),
        "speedup_real_rows_vs_all_rows": round(times["asa_cached_streams_all_rows"] / times["asa_cached_streams"], 3),
        "max_abs_diff_vs_monai_sdpa": max_diff,
        "asa_cached_profile": _shares(asa, x),
        "native_bf16": cpu_has_native_bf16(),
        **bf16,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2, help="windows per forward pass (asa segment's CPU batch)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    emit_json(main(args.threads, args.batch, args.repeats), args.out)
