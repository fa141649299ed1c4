"""Two sites with their own data, written into a test's folder: site 0 an .npz with
classes 0-6 (7 classes), site 1 a folder of class-named PNG images with classes 4-9 (6)
and a manifest; a public unlabeled probe folder and a public labeled evaluation .npz, all
from scikit-learn's digits (8×8), made unique per row by a little noise so a scan for
a site's rows cannot match a public input by chance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

NAMES = [f"digit-{d}" for d in range(10)]


@dataclass
class Sites:
    classes_file: Path
    site0: Path  # .npz
    site1: Path  # folder
    probe: Path  # folder of unlabeled PNGs
    eval_set: Path  # .npz
    private_rows: list[bytes]  # every training image of both sites, as uint8 bytes

    def flags(self) -> list[str]:
        return [
            "--classes", str(self.classes_file), "--input-shape", "1,8,8",
            "--probe-from", str(self.probe), "--eval-from", str(self.eval_set),
            "--agents", "2", "--experiences", "2", "--probe-size", "60",
            "--agent-data", f"0={self.site0}", "--agent-data", f"1={self.site1}",
        ]  # fmt: skip


def write_sites(folder: Path, seed: int = 0) -> Sites:
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    digits = load_digits()
    images = np.clip(digits.images * 15 + rng.integers(0, 15, digits.images.shape), 0, 255)
    images = images.astype(np.uint8)
    labels = digits.target
    order = rng.permutation(len(labels))
    site0_rows, site1_rows, probe_rows, eval_rows = np.array_split(order, [500, 1000, 1200])
    folder.mkdir(parents=True, exist_ok=True)
    classes_file = folder / "classes.txt"
    classes_file.write_text("# the run's class space\n" + "\n".join(NAMES) + "\n")

    keep0 = site0_rows[labels[site0_rows] <= 6]
    site0 = folder / "site0" / "train.npz"
    site0.parent.mkdir()
    np.savez(site0, x=images[keep0], y=np.array([NAMES[c] for c in labels[keep0]]))

    keep1 = site1_rows[labels[site1_rows] >= 4]
    site1 = folder / "site1"
    for i in keep1:
        target = site1 / NAMES[labels[i]]
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i], mode="L").save(target / f"{i}.png")
    (site1 / "experiences.toml").write_text(
        'experiences = [["digit-4", "digit-5", "digit-6"], ["digit-7", "digit-8", "digit-9"]]\n'
    )

    probe = folder / "public" / "unlabeled"
    probe.mkdir(parents=True)
    for i in probe_rows:
        Image.fromarray(images[i], mode="L").save(probe / f"{i}.png")
    eval_set = folder / "public" / "test.npz"
    np.savez(eval_set, x=images[eval_rows], y=labels[eval_rows], classes=np.array(NAMES))
    private = [images[i].tobytes() for i in np.concatenate([keep0, keep1])]
    return Sites(classes_file, site0, site1, probe, eval_set, private)
