"""``python -m phasetrain`` is the ``phasetrain`` command (torchrun launches it this way)."""

from phasetrain.cli import main

raise SystemExit(main())
