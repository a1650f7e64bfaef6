"""Writes tests/fixtures/dvclive/lightning: a Lightning Trainer logging through dvclive's DVCLiveLogger and a
TensorBoardLogger at once (targets move at global step 60; a log every 5 steps). DVCLiveLogger puts DVCLive's step
at the trainer's global step, so the folder reads as the TensorBoard log (tests/io/test_dvclive_log.py).

    v/bin/pip install dvclive lightning torch==2.13.0      # dvclive 3.49.1, lightning 2.6.6 made it
    v/bin/python tools/runlab/make_dvclive_lightning_fixture.py       # writes to ./ : run it in the fixture folder
"""

from dvclive.lightning import DVCLiveLogger
from lightning.pytorch.loggers import TensorBoardLogger
from lightning_toy import fit_shifted


def main() -> None:
    fit_shifted(
        [DVCLiveLogger(dir="dvclive", save_dvc_exp=False), TensorBoardLogger(".", name="tb")],
        tag="train/loss",
        hparams={"lr": 1e-2},
    )


if __name__ == "__main__":
    main()
