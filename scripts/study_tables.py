"""Markdown tables of docs/study.md from a study's store: clean and corruption accuracy / ECE per
method, sparsity and fine-tuning length, mean ± sd over seeds (n = seeds present). Corruption
columns only for seeds with every condition evaluated (``--conditions``, default 75 = 15 x 5);
mCE (Hendrycks & Dietterich) against the unpruned network of the same seed.

    python scripts/study_tables.py runs/study-r20 [--recipe ft-...]
"""
from __future__ import annotations

import argparse
import statistics as stats
from collections import defaultdict

from prunecal.eval.store import Store


def ms(xs: list[float], scale: float = 100.0) -> str:
    if not xs:
        return "–"
    m = stats.mean(xs) * scale
    s = stats.stdev(xs) * scale if len(xs) > 1 else 0.0
    return f"{m:.1f} ± {s:.1f} (n={len(xs)})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--recipe", help="only this fine-tuning recipe (besides one-shot)")
    ap.add_argument("--conditions", type=int, default=75, help="corruption x severity count")
    a = ap.parse_args()
    with Store(f"{a.out}/results.sqlite") as st:
        units = [u for u in st.units(st.latest_config_hash()) if u["backend"] == "csr"]
    if a.recipe:
        units = [u for u in units if u["finetune_recipe"] in ("none", a.recipe)]
    clean: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    corr: dict[tuple, dict[int, dict[str, list]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for u in units:
        net = (u["method"], u["sparsity"], u["finetune_epochs"])
        if u["corruption"] == "clean":
            for k in ("accuracy", "ece", "ece_ts"):
                clean[net][k].append(u[k])
        else:
            c = corr[net][u["seed"]]
            c["accuracy"].append(u["accuracy"])
            c["ece"].append(u["ece"])
            c["ece_ts"].append(u["ece_ts"])
            c["cond"].append((u["corruption"], u["severity"]))
    corr = {net: {seed: v for seed, v in seeds.items() if len(set(v["cond"])) == a.conditions}
            for net, seeds in corr.items()}
    base = corr.get(("none", 0.0, 0), {})

    def mce(v: dict, b: dict) -> float:
        err = defaultdict(float)
        berr = defaultdict(float)
        for (c, _), acc in zip(v["cond"], v["accuracy"]):
            err[c] += 1 - acc
        for (c, _), acc in zip(b["cond"], b["accuracy"]):
            berr[c] += 1 - acc
        return stats.mean(err[c] / berr[c] for c in err)
    print("| method | sparsity | fine-tuning | clean acc % | clean ECE % | ECE after TS % | "
          "corruption acc % | corruption ECE % | corruption ECE after TS % | mCE % |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for net in sorted(set(clean) | set(corr), key=lambda n: (n[0] != "none", n[0], n[1], n[2])):
        c = clean.get(net, {})
        per_seed = corr.get(net, {})
        cacc = [stats.mean(v["accuracy"]) for v in per_seed.values()]
        cece = [stats.mean(v["ece"]) for v in per_seed.values()]
        cece_ts = [stats.mean(v["ece_ts"]) for v in per_seed.values()]
        mces = [mce(v, base[seed]) for seed, v in per_seed.items() if seed in base]
        ft = "one-shot" if net[2] == 0 else f"{net[2]} ep"
        print(f"| {net[0]} | {net[1]:g} | {ft} | {ms(c.get('accuracy', []))} | {ms(c.get('ece', []))} | "
              f"{ms(c.get('ece_ts', []))} | {ms(cacc)} | {ms(cece)} | {ms(cece_ts)} | {ms(mces)} |")


if __name__ == "__main__":
    main()
