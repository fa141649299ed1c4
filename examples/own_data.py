"""Sites with their own data, through DKT's Python API.

Writes two tiny sites into a temporary folder, from scikit-learn's 8×8 digits: site 0 an
.npz with x (images) and y (class names) holding digits 0-6, site 1 a folder of
class-named PNG folders holding digits 4-9, with an experiences.toml naming its two
experiences; and the public data every agent may see: unlabeled probe images and a
labeled evaluation set. Then both agents learn their own data in this process and the
run's rows are printed. See docs/how-to/own-data.md.

    python examples/own_data.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

import dkt

NAMES = [f"digit-{d}" for d in range(10)]


def write_sites(folder: Path) -> dict[str, Path]:
    """The two sites and the public probe and evaluation sets; returns their paths."""
    digits = load_digits()
    images = (digits.images * 255 / 16).astype(np.uint8)
    labels = digits.target
    rows = np.random.default_rng(0).permutation(len(labels))
    site0_rows, site1_rows, probe_rows, eval_rows = np.array_split(rows, [600, 1200, 1400])

    keep = site0_rows[labels[site0_rows] <= 6]
    site0 = folder / "site0" / "train.npz"
    site0.parent.mkdir(parents=True)
    np.savez(site0, x=images[keep], y=np.array([NAMES[c] for c in labels[keep]]))

    site1 = folder / "site1"
    for i in site1_rows[labels[site1_rows] >= 4]:
        (site1 / NAMES[labels[i]]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i], mode="L").save(site1 / NAMES[labels[i]] / f"{i}.png")
    (site1 / "experiences.toml").write_text(
        'experiences = [["digit-4", "digit-5", "digit-6"], ["digit-7", "digit-8", "digit-9"]]\n'
    )

    probe = folder / "public" / "probe"
    probe.mkdir(parents=True)
    for i in probe_rows:
        Image.fromarray(images[i], mode="L").save(probe / f"{i}.png")
    eval_set = folder / "public" / "test.npz"
    np.savez(eval_set, x=images[eval_rows], y=labels[eval_rows], classes=np.array(NAMES))
    return {"site0": site0, "site1": site1, "probe": probe, "eval": eval_set}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_sites(Path(tmp))
        config = dkt.ExperimentConfig(
            class_names=NAMES,  # the run's class space; each site's names map onto it
            input_shape="1,8,8",
            probe_from=str(paths["probe"]),  # public, unlabeled: what agents predict on
            eval_from=str(paths["eval"]),  # public, labeled: where transfer is measured
            agents=2,
            experiences=2,
            epochs=3,
            probe_size=100,
        )
        result = dkt.simulate(
            config, local={0: paths["site0"], 1: dkt.LocalSource.of(paths["site1"])}
        )

    print("agent  experience  classes                  acc all cl  transfer st")
    for row in result.to_records():
        classes = ",".join(NAMES[c].removeprefix("digit-") for c in row["classes"])
        transfer = "n/a" if row["transfer_st"] is None else f"{100 * row['transfer_st']:.1f}"
        print(f"{row['agent']:>5}  {row['experience']:>10}  {classes:<23}  "
              f"{100 * row['acc_all_cl']:>10.1f}  {transfer:>11}")  # fmt: skip
    print(f"agent data: {result.extra['agent_data']}")


if __name__ == "__main__":
    main()
