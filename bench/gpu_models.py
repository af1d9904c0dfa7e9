"""What gpu_session.py's stopped runs left, turned into the files styleforge ships.

The lease ended before some runs' last step; their checkpoints (every 500 steps, brought back
without optimizer state where they were too large) hold the weights at that step. This writes
them as `fast train` / `fast train-decoders` would have at the end: a float16 model file with
the run's config, seconds, step and last losses (plus the loss CSV/PNG), or one decoder file
per level.

    python bench/gpu_models.py model RUN.pth.ckpt OUT.pth STYLE_NAME
    python bench/gpu_models.py decoders decoders.ckpt OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from styleforge.style.fast.decoder_train import Reconstruction
from styleforge.style.fast.decoders import decoder_name, save_decoder
from styleforge.style.fast.loop import running_averages, write_history
from styleforge.style.fast.model import load_model, parameter_count, read_record, save_model


def model_from_checkpoint(ckpt: str, out: str, style: str) -> None:
    net, rec = load_model(ckpt)
    last = rec["history"][-1]
    training = {**rec["config"], "parameters": parameter_count(net), "seconds": round(last["seconds"], 1),
                "precision": "bf16", "skipped_files": len(rec.get("skipped", [])), "stopped_at_step": rec["step"],
                "final_losses": {k: round(v, 6) for k, v in running_averages(rec["history"]).items()}}
    save_model(net, out, style, training, half=True)
    write_history(rec["history"], out)
    print(f"{out}: step {rec['step']} of {rec['config']['steps']}, {training['seconds']} s")


def decoders_from_checkpoint(ckpt: str, out_dir: str) -> None:
    rec = read_record(ckpt)
    cfg, last, running = rec["config"], rec["history"][-1], running_averages(rec["history"])
    model = Reconstruction(cfg["levels"], cfg["width"])
    model.load_state_dict({k: v.float() for k, v in rec["model"].items()})
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for lv in cfg["levels"]:
        training = {**cfg, "parameters": parameter_count(model.decoders[lv]), "seconds": round(last["seconds"], 1),
                    "device": "cuda", "precision": "bf16", "final_loss": round(running[lv], 6),
                    "stopped_at_step": rec["step"]}
        path = save_decoder(model.decoders[lv], Path(out_dir) / decoder_name(lv), training)
        print(f"{path}: step {rec['step']} of {cfg['steps']}, loss {running[lv]:.4f}")


if __name__ == "__main__":
    {"model": model_from_checkpoint, "decoders": decoders_from_checkpoint}[sys.argv[1]](*sys.argv[2:])
