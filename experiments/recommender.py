"""Offline DPO for a recommender, the AMRS pattern (Chan et al. 2026), on a simulated world:
does DPO on world-model rollout pairs improve the *true* utility over behaviour cloning while
keeping diversity, and does a greedy utility maximizer collapse?

Runs src/dpokit/recipes/recommender.yaml (200 items, 300 + 100 held-out users, 3,600 logged
sessions; a world model; BC; 1,500 contexts x 8 rolled-out lists -> best/worst pairs; DPO)
and evaluates on 400 contexts of the held-out users: the logging policy's own lists, lists
sampled from BC and from DPO, and greedy lists; in the world model and in the simulator.
Writes experiments/results/recommender.{md,json,png}.

    python experiments/recommender.py            # about 10 minutes on 2 CPU cores
    python experiments/recommender.py --replot   # table and figure from recommender.json
"""

from __future__ import annotations

import dataclasses
import time

from common import ROOT, pyplot, results_dir, run_or_replot, save_table  # noqa: E402

from dpokit.apps.amrs.run import load_recommender_recipe, run_recommender  # noqa: E402


def write(data: dict) -> None:
    arms = data["arms"]
    modes = list(next(iter(arms.values()))["true_utility_by_mode"])
    lines = ["# Offline DPO for a recommender (simulated listeners)", "",
             f"World model on held-out users: p(listen) expected calibration error "
             f"{data['ece']:.3f}; held-out loss {data['world'][0]['heldout_loss']:.3f} -> "
             f"{data['world'][-1]['heldout_loss']:.3f} over {len(data['world'])} epochs. "
             f"{data['pairs']} rollout pairs. {data['minutes']:.1f} minutes.", "",
             "| arm | true utility | world-model utility | " + " | ".join(
                 f"true: {m}" for m in modes) + " | coverage | item entropy | intra-list "
             "distance | lists with a repeat | KL to BC (nats/list) |",
             "|---|---|---|" + "---|" * len(modes) + "---|---|---|---|---|"]
    for name, a in arms.items():
        kl = "-" if a["kl_to_reference"] is None else f"{a['kl_to_reference']:.2f}"
        lines.append(f"| {name} | {a['true_utility']:+.3f} | {a['world_utility']:+.3f} | "
                     + " | ".join(f"{a['true_utility_by_mode'].get(m, float('nan')):+.3f}"
                                  for m in modes)
                     + f" | {a['coverage']:.3f} | {a['entropy']:.3f} | "
                     f"{a['intra_list_distance']:.3f} | {a['repeats']:.2f} | {kl} |")
    save_table("recommender", lines)


def plot(data: dict) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    rel = data["calibration"]
    axes[0].plot([0, 1], [0, 1], color="grey", lw=0.8)
    axes[0].plot([r["predicted"] for r in rel], [r["observed"] for r in rel], marker="o")
    axes[0].set_title(f"world model calibration, held-out users (ECE {data['ece']:.3f})",
                      fontsize=10)
    axes[0].set_xlabel("predicted p(listen)")
    axes[0].set_ylabel("observed listen rate")
    names = list(data["arms"])
    x = range(len(names))
    true = [data["arms"][n]["true_utility"] for n in names]
    world = [data["arms"][n]["world_utility"] for n in names]
    axes[1].bar([i - 0.2 for i in x], world, 0.4, label="world model")
    axes[1].bar([i + 0.2 for i in x], true, 0.4, label="true simulator")
    axes[1].set_xticks(list(x), [n.replace(" (", "\n(") for n in names], fontsize=8)
    axes[1].set_title("mean utility per item", fontsize=10)
    axes[1].legend(fontsize=8)
    for key, marker in (("coverage", "o"), ("entropy", "s"), ("intra_list_distance", "^")):
        axes[2].plot(list(x), [data["arms"][n][key] for n in names], marker=marker, label=key)
    axes[2].set_xticks(list(x), [n.replace(" (", "\n(") for n in names], fontsize=8)
    axes[2].set_title("diversity", fontsize=10)
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(results_dir() / "recommender.png", dpi=120)


def run() -> dict:
    started = time.perf_counter()
    recipe = load_recommender_recipe(str(ROOT / "src/dpokit/recipes/recommender.yaml"))
    recipe.output_dir = ROOT / recipe.output_dir
    result = run_recommender(recipe)
    return {"minutes": (time.perf_counter() - started) / 60, "ece": result.ece,
            "pairs": result.pairs, "world": result.world_history,
            "calibration": result.calibration, "arms": result.arms,
            "settings": dataclasses.asdict(recipe.settings),
            "dpo_loss": [h.get("loss") for h in result.dpo_history]}


def main() -> None:
    data = run_or_replot("recommender", run)
    write(data)
    plot(data)


if __name__ == "__main__":
    main()
