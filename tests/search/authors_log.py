"""Render an egnas-replay JSON run as the `Searchlog.txt` the authors' code would have written.

Used to test the raw-log parser without shipping the authors' logs: the line formats, the non-candidate
"MODEL DETAILS" blocks between phases and numpy's wrapping of long arrays are reproduced.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np

START = datetime(2024, 2, 12, 18, 44, 42)


def _arr(values: list[int]) -> str:
    return str(np.array(values))  # numpy wraps at 75 characters, like the authors' logs


def render(run: dict) -> str:
    lines: list[str] = []
    n = [0]

    def log(msg: str) -> None:
        n[0] += 1
        for i, part in enumerate(msg.split("\n")):
            stamp = (START + timedelta(milliseconds=250 * n[0])).strftime("%Y-%m-%d %H:%M:%S,%f")[:-3] + " "
            lines.append((stamp if i == 0 else "") + part)

    log("GPU Device = 1")
    log(f"Arguments = {run['args']}")
    log("#" * 77)
    log("INITIALIZING DEPTH AND WIDTH SEARCH...")
    phase = None
    markers = {"depth": "RUNNING DEPTH SEARCH FIRST...", "width": "RUNNING WIDTH SEARCH NOW...",
               "ops": "RUNNING OPERATION SEARCH...", "kernels": "RUNNING KERNEL SEARCH..."}
    for cand in run["candidates"]:
        if cand["phase"] != phase:
            if phase == "width":  # the end-of-macro block the authors print without training anything
                log("END OF MACRO SEARCH...")
                log("MODEL DETAILS")
                log(f"Model Depth {cand['depth']} Model Width 999")
                log(f"Model Layers {_arr(cand['ops'])} Model Kernels {_arr(cand['kernels'])}")
                log("Total number of epochs 77.000000")
                log("Model Parameters = 9.999999MB")
            phase = cand["phase"]
            log(markers[phase])
        log("MODEL DETAILS" if phase in ("depth", "width", "kernels") else "NEXT MODEL DETAILS")
        log(f"Model Depth {cand['depth']} Model Width {cand['width']}")
        log(f"Model Layers {_arr(cand['ops'])} Model Kernels {_arr(cand['kernels'])}")
        label = "Training epochs" if len(lines) < 10 else "Total number of epochs"
        log(f"{label} {cand['epochs']:f}")
        log(f"Model Parameters = {cand['params_m']:f}MB")
        log("Training Model...")
        for e, (t, v) in enumerate(zip(cand["train_curve"], cand["val_curve"])):
            log(f"epoch {e} lr 2.500000e-02")
            log(f"train_acc {t:f}")
            log(f"valid_acc {v:f}")
        log(f"Best Training Accuracy {cand['best_train']:f}")
        log(f"Best Validation Accuracy {cand['best_val']:f}")
        log("Test Loss: 1.000000\n")
        log("\nTest Accuracy (Overall): 50.000000% (5000/10000)")
    final = run["final"]
    log(f"Discovered Final Depth {final['macro_depth']}")
    log(f"Discovered Final Width {final['macro_width']}")
    log(f"Discovered Final Epochs {final['macro_epochs']}")
    log("END OF SEARCH...")
    log("FINAL DISCOVERED ARCHITECTURE DETAILS:")
    log(f"Model Depth {final['macro_depth']} Model Width {final['micro_width']}")
    log(f"Discovered Final Epochs {final['macro_epochs']}")
    log(f"Model Layers {_arr(final['ops'])} Model Kernels {_arr(final['kernels'])}")
    log("Total Search Time: 12345s")
    return "\n".join(lines) + "\n"
