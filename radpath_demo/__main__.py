"""Write the synthetic demo cohort (CTs, masks, patients/clinical/truth sheets).

    python -m radpath_demo --config config/config.yaml [--out-dir DIR]
        [--n-patients N] [--seed S]

Defaults come from the config's `demo` section and `seed`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

from radpath_demo.cohort import SlideSettings, generate_cohort


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml", help="workflow config (YAML)")
    parser.add_argument("--out-dir", help="overrides demo.out_dir")
    parser.add_argument("--n-patients", type=int, help="overrides demo.n_patients")
    parser.add_argument("--seed", type=int, help="overrides seed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with open(args.config, encoding="utf-8") as handle:
        config = yaml.safe_load(handle) or {}
    demo = config.get("demo") or {}
    out_dir = args.out_dir or demo.get("out_dir", "demo_data")
    n_patients = args.n_patients if args.n_patients is not None else demo.get("n_patients", 40)
    seed = args.seed if args.seed is not None else config.get("seed", 42)
    started = time.perf_counter()
    slides = (SlideSettings(fraction_with_slides=demo.get("slide_fraction", 0.6))
              if demo.get("slides", True) else None)
    paths = generate_cohort(out_dir, n_patients, demo.get("n_scanners", 3), seed, slides=slides)
    print(
        f"demo cohort: {n_patients} patients (seed {seed}) in {out_dir} "
        f"({time.perf_counter() - started:.1f} s): {paths['patients']}, {paths['clinical']}"
    )
    n_pretrain = demo.get("pretrain_patients", 0)
    if n_pretrain:
        # Another synthetic cohort, its own patients (IDs G001, ...) and seed, whose outcome
        # depends on the lesion as the demo's does: deep_ct.pretrain starts from it.
        started = time.perf_counter()
        pretrain = generate_cohort(Path(out_dir) / "pretrain", n_pretrain,
                                   demo.get("n_scanners", 3), seed + 1, id_prefix="G")
        print(f"deep CT pretraining cohort: {n_pretrain} patients in "
              f"{pretrain['patients'].parent} ({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
