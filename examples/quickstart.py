"""Quickstart: DKT's Python API on the 8×8 digits that ship inside scikit-learn.

Two agents learn two experiences each in this process (as `dkt simulate` does), then the
run comes back as tidy rows: one per agent × experience. Runs in seconds on a CPU:

    python examples/quickstart.py
"""

from __future__ import annotations

import dkt


def main() -> None:
    # disjoint: each agent sees its own classes, so the peer teaches it classes it never saw
    config = dkt.ExperimentConfig(agents=2, experiences=2, epochs=3, assignment="disjoint")
    result = dkt.simulate(config)

    print("agent  experience  classes          acc cl  acc st  avg acc cl  transfer st")
    for row in result.to_records():  # one dict per agent × experience
        transfer = "n/a" if row["transfer_st"] is None else f"{100 * row['transfer_st']:.1f}"
        classes = ",".join(map(str, row["classes"]))
        print(
            f"{row['agent']:>5}  {row['experience']:>10}  {classes:<15}  "
            f"{100 * row['acc_cl']:>6.1f}  {100 * row['acc_st']:>6.1f}  "
            f"{100 * row['avg_acc_cl']:>10.1f}  {transfer:>11}"
        )
    for summary in result.to_records("agent"):  # one dict per agent, after its last experience
        print(f"agent {summary['agent']}: average accuracy (cl head) "
              f"{100 * summary['avg_acc_cl']:.1f}%")  # fmt: skip
    try:
        frame = result.to_frame()  # the same rows as a pandas DataFrame
    except ImportError:
        print("pandas is not installed: pip install pandas for result.to_frame()")
    else:
        print(f"to_frame(): {frame.shape[0]} rows × {frame.shape[1]} columns")


if __name__ == "__main__":
    main()
