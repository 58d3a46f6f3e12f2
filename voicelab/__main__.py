"""Command line: ``python -m voicelab doctor | broker | build-image | dlq | bench`` (see :mod:`voicelab.cli`)."""

from .cli import main

raise SystemExit(main())
