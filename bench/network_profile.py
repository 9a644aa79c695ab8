"""Where one sliding window's forward pass spends its time on the CPU (torch.profiler), as JSON.

The network is the cpu-demo segmentation model's shape (SwinUNETR, feature size 12, 14 outputs, one 64³
window, SDPA attention, inference mode, random weights: the op mix does not depend on them). Operator
self-times are summed into a few groups, as shares of the total.

    python bench/network_profile.py [--threads 1] [--out bench/results/network_profile_cpu.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from jsonout import emit_json
from monai.networks.nets import SwinUNETR

GROUPS = {  # exact operator names
    "attention (SDPA)": ("aten::_scaled_dot_product_flash_attention_for_cpu",),
    "3D convolution, oneDNN": ("aten::mkldnn_convolution",),
    "3D convolution, slow fallback": ("aten::slow_conv3d_forward", "aten::slow_conv_transpose3d"),
    "elementwise add (residuals, attention bias + mask)": ("aten::add", "aten::add_"),
    "copies and reshapes (window partition, roll)": ("aten::copy_", "aten::cat"),
    "shifted-window mask building": ("aten::masked_fill_", "aten::index", "aten::ne", "aten::eq", "aten::sub"),
    "normalisation": ("aten::native_batch_norm", "aten::native_layer_norm"),
    "linear layers": ("aten::addmm", "aten::mm", "aten::bmm"),
}


def main(threads: int) -> dict:
    torch.set_num_threads(threads)
    net = SwinUNETR(in_channels=1, out_channels=14, feature_size=12, use_flash_attention=True).eval()
    x = torch.rand(1, 1, 64, 64, 64)
    with torch.inference_mode():
        net(x)  # warm-up
        with torch.profiler.profile() as prof:
            net(x)
    events = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in events)
    shares = {name: sum(t for k, t in events if k in names) / total for name, names in GROUPS.items()}
    shares["other"] = 1.0 - sum(shares.values())
    return {
        "threads": threads,
        "forward_s": total / 1e6,
        "shares": {k: round(v, 3) for k, v in shares.items()},
        "top_ops": [{"op": k, "share": round(t / total, 3)} for k, t in sorted(events, key=lambda e: -e[1])[:10]],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    emit_json(main(args.threads), args.out)
