"""``accelerate launch train/main.py ...``: the training command by file path (the same as ``-m train``; needs the
project installed, as ``make install`` and the Docker image do). See train.loop."""

from train.loop import main

if __name__ == "__main__":
    raise SystemExit(main())
