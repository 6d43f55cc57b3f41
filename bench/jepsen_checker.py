"""Time the Jepsen-style checker (tests/helpers/jepsen) on simulated linearizable histories.

    .venv/bin/python bench/jepsen_checker.py --ops 10000 --processes 16 --info-rate 0.03

Prints, per seed, each key's verdict, the configurations searched and the seconds taken.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.jepsen.linearizability import DEFAULT_BUDGET, check_linearizability
from tests.helpers.jepsen.simulation import SimulationPlan, simulate_history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=1)
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--stretch", type=float, default=8.0,
                        help="how far an op's interval reaches from its point, in ops")
    parser.add_argument("--info-rate", type=float, default=0.03)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=DEFAULT_BUDGET)
    arguments = parser.parse_args()
    plan = SimulationPlan(ops=arguments.ops, keys=arguments.keys,
                          processes=arguments.processes, stretch=arguments.stretch,
                          info_rate=arguments.info_rate)
    for seed in range(arguments.seeds):
        history = simulate_history(random.Random(seed), plan)
        started = time.perf_counter()
        verdicts = check_linearizability(history, budget=arguments.budget)
        seconds = time.perf_counter() - started
        counts = ", ".join(f"{n} {o.value}" for o, n in sorted(
            history.outcome_counts().items(), key=lambda item: item[0].value))
        print(f"seed {seed}: {len(history)} ops ({counts}), {seconds:.2f} s")
        for key, verdict in verdicts.items():
            print(f"  {key}: {verdict.verdict.value}, {verdict.configurations} configurations")


if __name__ == "__main__":
    main()
