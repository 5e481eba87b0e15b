#!/usr/bin/env python
"""Stage 2 with Conditional Token Selection (CTS): compress correct CoTs. See `python CTS_data_get.py --help`."""

from tokenskip.core.cli import user_errors

if __name__ == "__main__":
    with user_errors():  # the stage is imported inside: a missing package is one line, not a traceback
        from tokenskip.stages.cts import main

        main()
