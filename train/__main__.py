"""``python -m train`` / ``accelerate launch -m train``: see train.loop."""

from train.loop import main

raise SystemExit(main())
