"""The GPU run's results in one JSON file and one Markdown table (bench/gpu_run.sh, step 4).

    python bench/gpu_summary.py OUT_DIR      # reads cuda_check.log, bench.json, memory.json

Writes ``OUT_DIR/gpu_summary.json`` and prints the Markdown table: each exactness check
(ok / FAIL), dpokit vs TRL per workload (s/step, tokens/s, peak GB, ratios), and the memory
of each strategy on one GPU. What is missing (a step that failed or timed out) is said so.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def summarize(out: Path) -> tuple[dict, str]:
    log = out / "cuda_check.log"
    checks = [line for line in log.read_text().splitlines()
              if line.startswith(("ok    ", "FAIL  "))] if log.is_file() else []
    bench, memory = _read_json(out / "bench.json"), _read_json(out / "memory.json")
    record = {"checks": checks, "bench": bench, "memory": memory}
    lines = ["## Exactness on the GPU", ""]
    lines += [f"- {c}" for c in checks] or ["- (cuda_check.log missing: the step failed)"]
    lines += ["", "## DPO: dpokit vs TRL", ""]
    if bench:
        hw = bench.get("hardware", {})
        device = hw.get("device", {})
        lines += [f"Hardware: {device.get('name')} ({device.get('capability')}, "
                  f"{device.get('memory_gb')} GiB), precision {hw.get('precision')}.", "",
                  "| workload | system | s/step | tokens/s | peak GB |", "|---|---|---|---|---|"]
        for name, systems in bench.items():
            if name == "hardware":
                continue
            for system, r in systems.items():
                lines.append(f"| {name} | {system} | {r['s_per_step']:.3f} | "
                             f"{r['tokens_per_s']:.0f} | {r['peak_gb']:.2f} |")
            d, t = systems.get("dpokit"), systems.get("trl")
            if d and t:
                lines.append(f"| {name} | dpokit / TRL | {t['s_per_step'] / d['s_per_step']:.2f}x"
                             f" throughput | | {d['peak_gb'] / t['peak_gb']:.2f}x memory |")
    else:
        lines.append("(bench.json missing: the step failed or timed out)")
    lines += ["", "## Strategies on one GPU", ""]
    if memory:
        lines.append("```")
        lines.append(json.dumps(memory, indent=1)[:3000])
        lines.append("```")
    else:
        lines.append("(memory.json missing)")
    return record, "\n".join(lines) + "\n"


def main() -> None:
    out = Path(sys.argv[1])
    record, table = summarize(out)
    (out / "gpu_summary.json").write_text(json.dumps(record, indent=1))
    print(table)


if __name__ == "__main__":
    main()
