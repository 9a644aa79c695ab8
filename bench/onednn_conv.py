"""One sliding window through the network with batch-1 3D convolutions on oneDNN against PyTorch's choice, as JSON.

The network is the cpu-demo segmentation model's shape (SwinUNETR, feature size 12, 14 outputs, 64³
windows, inference mode, random weights), with ASA-CT's fast attention and channels-last weights as
``asa segment`` runs it. ``--threads`` intra-op threads (1: what each of the two window streams gets on a
2-core CPU). For each batch size, the forward with :func:`models.inference.onednn_conv.enable_onednn_convolutions`
off and on alternate, ``--repeats`` times each; medians, their ratio and the largest output difference.

    python bench/onednn_conv.py [--threads 1] [--repeats 7] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from jsonout import emit_json
from monai.networks.nets import SwinUNETR

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.inference.onednn_conv import enable_onednn_convolutions  # noqa: E402
from models.inference.predict import conv_layout  # noqa: E402
from models.inference.window_attention import enable_fast_attention  # noqa: E402


def main(threads: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = SwinUNETR(in_channels=1, out_channels=14, feature_size=12, use_flash_attention=True).eval()
    enable_fast_attention(net, True)
    net.to(memory_format=conv_layout(torch.device("cpu"), fast_path=True))
    result: dict = {"threads": threads, "repeats": repeats, "batches": {}}
    for batch in (1, 2):
        x = torch.rand(batch, 1, 64, 64, 64)
        times: dict[bool, list[float]] = {False: [], True: []}
        outputs = {}
        with torch.inference_mode():
            for on in (False, True):  # warm-up, and the outputs to compare
                enable_onednn_convolutions(net, on)
                outputs[on] = net(x)
            for _ in range(repeats):
                for on in (False, True):
                    enable_onednn_convolutions(net, on)
                    t0 = time.perf_counter()
                    net(x)
                    times[on].append(time.perf_counter() - t0)
        pytorch, onednn = statistics.median(times[False]), statistics.median(times[True])
        result["batches"][str(batch)] = {
            "pytorch_choice_s": round(pytorch, 4),
            "onednn_switch_s": round(onednn, 4),
            "speedup": round(pytorch / onednn, 3),
            "max_abs_diff": float((outputs[True] - outputs[False]).abs().max()),
        }
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    emit_json(main(args.threads, args.repeats), args.out)
