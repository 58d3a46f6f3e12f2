"""Command line: ``python -m voicelab doctor | broker | build-image``."""

from .cli import main

raise SystemExit(main())
