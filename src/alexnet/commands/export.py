"""`alexnet export`: a checkpoint as safetensors, ONNX, a torch.export program or TorchScript, checked against
PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="write a checkpoint as safetensors, ONNX, a torch.export program (.pt2) or TorchScript",
        description="safetensors: the weights, the input statistics and (metadata) the config and classes. "
                    "ONNX, export (.pt2) and TorchScript: the network with its input normalisation inside. "
                    "Input 'crops': uint8 (N, crop, crop, 3) RGB, channels last, the centre crop of an image scaled to "
                    "S x S as `prepare` does (S=256, crop=224 for the paper); the mean is subtracted inside. "
                    "Output 'logits': float32 (N, classes), before the softmax. The batch size is free. The "
                    "file is checked (ONNX with onnxruntime) against PyTorch on random crops and only "
                    "then written: the largest difference of the logits is printed and must stay below "
                    "1e-4 (1e-4 of the largest logit when logits exceed 1).")
    p.add_argument("checkpoint", type=Path, metavar="CKPT")
    p.add_argument("--format", required=True, choices=["safetensors", "onnx", "export", "torchscript"],
                   help="export: torch.export's program (.pt2, load with torch.export.load); torchscript is "
                        "deprecated in PyTorch and kept for runtimes that still need it")
    p.add_argument("--onnx-exporter", choices=["dynamo", "torchscript"], default="dynamo",
                   help="dynamo: PyTorch's current exporter (default); torchscript: the deprecated one, which "
                        "writes ONNX's own LRN operator")
    p.add_argument("-o", "--out", type=Path,
                   help="output file (default: the checkpoint's name with .safetensors, .onnx, .pt2 or "
                        ".torchscript.pt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar over the export and its check (none either off a terminal)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from alexnet.files import check_output
    from alexnet.tools.export import FORMATS, export_onnx, export_program, export_safetensors, export_torchscript
    from alexnet.tools.inference import load_model

    out: Path = args.out or args.checkpoint.with_name(args.checkpoint.stem + FORMATS[args.format])
    check_output(out, "-o", args.overwrite, [args.checkpoint])
    model, cfg, info = load_model(args.checkpoint, "cpu")
    progress = not args.no_progress and sys.stderr.isatty()
    if args.format == "safetensors":
        export_safetensors(model, cfg, info, out)
        print(f"wrote {out} (weights, input statistics; config and classes in the metadata)")
    elif args.format == "onnx":
        agreement = export_onnx(model, cfg, info, out, args.onnx_exporter, progress)
        print(f"onnxruntime vs PyTorch on random crops: {agreement.describe()}")
        print(f"wrote {out} (input 'crops': uint8 N x {cfg.data.crop} x {cfg.data.crop} x 3; output 'logits')")
    elif args.format == "export":
        agreement = export_program(model, cfg, info, out, progress)
        print(f"torch.export program vs eager on random crops: {agreement.describe()}")
        print(f"wrote {out} (torch.export.load(path).module(): input uint8 N x {cfg.data.crop} x {cfg.data.crop} "
              "x 3; output logits)")
    else:
        agreement = export_torchscript(model, cfg, info, out, progress)
        print(f"TorchScript vs eager on random crops: {agreement.describe()}")
        print(f"wrote {out} (input uint8 N x {cfg.data.crop} x {cfg.data.crop} x 3; output logits)")
    return 0
