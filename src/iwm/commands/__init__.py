"""The command line's sub-commands, one module per group: ``evaluate`` (iwm eval), ``figures``
(iwm viz), ``leverage`` (iwm leverage) and ``studies`` (iwm study), and ``options``, what they share.
Each module parses its arguments and calls the measuring code below it; no metric, study or figure
holds argparse."""
