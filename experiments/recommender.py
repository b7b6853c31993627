"""Offline DPO for a recommender, the AMRS pattern (Chan et al. 2026), on a simulated world:
does DPO on world-model rollout pairs improve the *true* utility over behaviour cloning while
keeping diversity, and does a greedy utility maximizer collapse?

Runs src/dpokit/recipes/recommender.yaml (200 items, 20 of them never logged; 300 + 100
held-out users, 3,600 logged sessions; a world model; BC; 1,500 contexts x 8 rolled-out lists
-> best/worst pairs; DPO) and evaluates on 400 contexts of the held-out users (checked
disjoint from the training users), logged by the same logging policy as the training
sessions: its own lists, lists sampled from BC and from DPO, and greedy lists; in the world
model and in the simulator, per signal, and under the stress tests (a mode switch after the
context, a one-item history). Writes experiments/results/recommender.{md,json,png}.

    python experiments/recommender.py            # about a minute on 2 CPU cores
    python experiments/recommender.py --seeds 5  # and 4 more replicates: the intervals
    python experiments/recommender.py --replot   # table and figure from recommender.json

With ``--seeds N`` the whole pipeline (simulated world, logs, world model, BC, pairs, DPO,
evaluation) runs again for seeds 1..N-1; the tables show seed 0, the headline the mean over
the N seeds of each arm's true utility and of DPO - BC, with 95% t intervals
(``common.seed_interval``): a difference is a result only when its interval excludes 0.
"""

from __future__ import annotations

import dataclasses
import sys
import time

from common import (  # noqa: E402
    ROOT,
    check_disjoint,
    disjointness_line,
    headline,
    pyplot,
    results_dir,
    run_or_replot,
    save_table,
    seed_interval,
)

from dpokit.apps.amrs.run import load_recommender_recipe, run_recommender  # noqa: E402


def write(data: dict) -> None:
    arms = data["arms"]
    modes = list(next(iter(arms.values()))["true_utility_by_mode"])
    lines = ["# Offline DPO for a recommender (simulated listeners)", "",
             f"World model on held-out users: p(listen) expected calibration error "
             f"{data['ece']:.3f}; held-out loss {data['world'][0]['heldout_loss']:.3f} -> "
             f"{data['world'][-1]['heldout_loss']:.3f} over {len(data['world'])} epochs. "
             f"{data['pairs']} rollout pairs. {data['minutes']:.1f} minutes. "
             + disjointness_line(data["disjointness"]) + " The logging policy logged the "
             "training and the held-out sessions alike; it sees each user's true genre taste "
             "(plus noise of sd 0.3), item popularity and the mode's energy, never the "
             "session's history; BC and DPO see the session's mode, start state and its first "
             f"{data['settings']['context_length']} items with their responses, never the "
             "user.", "",
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
    signals = list(next(iter(arms.values()))["true_signals"])
    lines += ["", "Per signal, mean per recommended item: world model's prediction / simulated "
              "(rating: / 5, 0 when skipped):", "",
              "| arm | " + " | ".join(signals) + " |", "|---|" + "---|" * len(signals)]
    for name, a in arms.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{a['world_signals'][k]:+.3f} / {a['true_signals'][k]:+.3f}" for k in signals)
            + " |")
    tests = list(data["stress"])
    lines += ["", "Stress tests, true utility (world model's in brackets); new items: share of "
              f"recommended items among the {data['settings']['new_items']} never logged:", "",
              "| arm | held-out contexts | " + " | ".join(tests) + " | new items |",
              "|---|---|" + "---|" * len(tests) + "---|"]
    for name, a in arms.items():
        lines.append(f"| {name} | {a['true_utility']:+.3f} ({a['world_utility']:+.3f}) | "
                     + " | ".join(f"{data['stress'][t][name]['true_utility']:+.3f} "
                                  f"({data['stress'][t][name]['world_utility']:+.3f})"
                                  for t in tests) + f" | {a['new_items']:.3f} |")
    lines += seed_lines(data)
    save_table("recommender", lines)


def seed_lines(data: dict) -> list[str]:
    """The headline over seeds: each arm's true utility and DPO - BC, mean and interval."""
    seeds = data.get("seeds") or []
    if len(seeds) < 2:
        return ["", "One seed: no interval (run with --seeds 5)."]
    arms = list(seeds[0]["true_utility"])
    lines = ["", f"Over {len(seeds)} seeds (each a new world, logs, world model, BC, pairs and "
             f"DPO; 95% t intervals; seeds {', '.join(str(s['seed']) for s in seeds)}):", ""]
    for arm in arms:  # a level: its interval, no verdict (only a difference is tested)
        interval = seed_interval([s["true_utility"][arm] for s in seeds])
        lines.append(f"- true utility, {arm}: {interval.text()}")
    for a, b in (("DPO", "behaviour cloning"), ("DPO", "logging policy"),
                 ("greedy (world model)", "behaviour cloning")):
        lines.append("- " + headline(f"{a} - {b}", seed_interval(
            [s["true_utility"][a] - s["true_utility"][b] for s in seeds])))
    return lines


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


def _recipe(seed: int):
    recipe = load_recommender_recipe(str(ROOT / "src/dpokit/recipes/recommender.yaml"),
                                     {"recommender.seed": seed, "bc.seed": seed,
                                      "dpo.seed": seed} if seed else None)
    recipe.output_dir = ROOT / recipe.output_dir
    return recipe


def run() -> dict:
    started = time.perf_counter()
    recipe = _recipe(0)
    result = run_recommender(recipe)
    count = int(sys.argv[sys.argv.index("--seeds") + 1]) if "--seeds" in sys.argv else 1
    seeds = [{"seed": 0, "true_utility": {a: v["true_utility"] for a, v in result.arms.items()}}]
    for seed in range(1, count):
        other = run_recommender(_recipe(seed))
        check_disjoint("users", other.users["held_out"], other.users["train"])
        seeds.append({"seed": seed, "true_utility": {a: v["true_utility"]
                                                     for a, v in other.arms.items()}})
    checked = [check_disjoint("users", result.users["held_out"], result.users["train"])]
    return {"minutes": (time.perf_counter() - started) / 60, "ece": result.ece,
            "disjointness": checked, "stress": result.stress,
            "pairs": result.pairs, "world": result.world_history,
            "calibration": result.calibration, "arms": result.arms,
            "settings": dataclasses.asdict(recipe.settings), "seeds": seeds,
            "dpo_loss": [h.get("loss") for h in result.dpo_history]}


def main() -> None:
    data = run_or_replot("recommender", run)
    write(data)
    plot(data)


if __name__ == "__main__":
    main()
