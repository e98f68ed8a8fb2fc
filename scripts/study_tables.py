"""Markdown tables of docs/study.md from a study's store: clean and corruption accuracy / ECE per
method, sparsity and fine-tuning length, mean ± sd over seeds (n = seeds present).

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
            c["n"].append(1)
    print("| method | sparsity | fine-tuning | clean acc % | clean ECE % | ECE after TS % | "
          "corruption acc % | corruption ECE % | conditions |")
    print("|---|---|---|---|---|---|---|---|---|")
    for net in sorted(set(clean) | set(corr), key=lambda n: (n[0] != "none", n[0], n[1], n[2])):
        c = clean.get(net, {})
        per_seed = corr.get(net, {})
        cacc = [stats.mean(v["accuracy"]) for v in per_seed.values()]
        cece = [stats.mean(v["ece"]) for v in per_seed.values()]
        ncond = sorted({len(v["n"]) for v in per_seed.values()})
        ft = "one-shot" if net[2] == 0 else f"{net[2]} ep"
        print(f"| {net[0]} | {net[1]:g} | {ft} | {ms(c.get('accuracy', []))} | {ms(c.get('ece', []))} | "
              f"{ms(c.get('ece_ts', []))} | {ms(cacc)} | {ms(cece)} | {'/'.join(map(str, ncond)) or '–'} |")


if __name__ == "__main__":
    main()
