"""Float32 master weights vs bfloat16 weights when every weight trains (a VLA from random weights), on the same
batches: the A/B behind `model.weights_dtype` (vla.model_source.weights_dtype).

    python scripts/bench_master_weights.py --frames_dir outputs/cpu_demos/video_0_1 \
        --tokenizer ../shared/tokenizers/llama2 --preset micro --steps 600 --batch_size 32

Two copies of one randomly initialised model train side by side: one keeps float32 weights, one stores them in
bfloat16 (what training on a GPU did before float32 masters). Both compute under bf16 autocast (CPU or CUDA), get the
same augmented batches from a video export (scripts/export_video_frames.py) and the same AdamW + warm-up + cosine
schedule, so only the precision the weights are stored in differs. Prints a table every --log_steps: loss and action
token accuracy of each (means over the last --log_steps steps), and the fraction of norm gains still exactly 1.0 (their
initial value: a bfloat16 gain of 1.0 cannot take an AdamW step smaller than 2^-9).
"""

from __future__ import annotations

import argparse
import copy
import time
from functools import partial

import numpy as np
import torch

from vla.checkpoint import load_tokenizer
from vla.data import make_dataset
from vla.data_config import DataConfig
from vla.model import build_vla
from vla.model_config import VLAConfig
from vla.optim import OptimConfig, learning_rate_at, make_optimizer
from vla.prompt import collate


def untrained_gain_fraction(model: torch.nn.Module) -> float:
    """The fraction of normalization-layer gains exactly 1.0."""
    gains = [p.detach() for n, p in model.named_parameters() if "norm" in n and n.endswith("weight")]
    return float(sum(int((g == 1).sum()) for g in gains) / sum(g.numel() for g in gains))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames_dir", required=True, help="a video export (scripts/export_video_frames.py)")
    parser.add_argument("--tokenizer", required=True, help="directory with Llama-2's tokenizer.model")
    parser.add_argument("--preset", default="micro", choices=["tiny", "micro", "small", "small256"])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    parser.add_argument("--image_aug", type=int, default=1, help="1: the recipe's crop + colour augmentation; 0: none")
    parser.add_argument("--log_steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    base = build_vla(VLAConfig.preset(args.preset), load_tokenizer(args.tokenizer), device=device, dtype=torch.float32)
    models = {"float32 masters": base, "bfloat16 weights": copy.deepcopy(base).to(torch.bfloat16)}
    optim = OptimConfig(batch_size=args.batch_size, learning_rate=args.learning_rate, lr_schedule="cosine",
                        warmup_steps=args.steps // 10, max_steps=args.steps, max_grad_norm=1.0)  # fmt: skip
    optimizers = {name: make_optimizer(optim, model.parameters()) for name, model in models.items()}
    dataset = make_dataset(DataConfig(source="video_frames", frames_dir=args.frames_dir, image_aug=bool(args.image_aug)),
                           base.sequence_builder, base.image_processor, device=device)  # fmt: skip
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=0,
                                         collate_fn=partial(collate, pad_token_id=base.config.pad_token_id))  # fmt: skip
    batches = iter(loader)
    for model in models.values():
        model.train()
    history = {name: [] for name in models}
    header = " | ".join(f"{name}: loss / acc. / gains at 1.0" for name in models)
    print(f"{args.preset}, batch {args.batch_size}, lr {args.learning_rate}, {device}\n| step | lr | {header} |")
    start = time.perf_counter()
    for step in range(args.steps):
        batch = {k: v.to(device) for k, v in next(batches).items()}
        lr = learning_rate_at(optim, step)
        for name, model in models.items():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss, metrics = model(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), optim.max_grad_norm)
            for group in optimizers[name].param_groups:
                group["lr"] = lr
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            history[name].append((loss.item(), float(metrics["action_accuracy"])))
        if (step + 1) % args.log_steps == 0 or step + 1 == args.steps:
            cells = []
            for name, model in models.items():
                loss, acc = np.mean(history[name][-args.log_steps :], axis=0)
                cells.append(f"{loss:.3f} / {acc:.3f} / {untrained_gain_fraction(model):.3f}")
            print(f"| {step + 1} | {lr:.2e} | {' | '.join(cells)} |", flush=True)
    print(f"{args.steps} steps in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
