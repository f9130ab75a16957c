"""Studies that train a grid of runs with the shipped configs and measure them into a results
page: ``world_model`` (the paper's Tables 1-2), ``leverage`` (Table 8, Figures 4-5),
``recipe`` (short CPU runs, one change each) and ``reference`` (the long reference models).
Runs are shared through :mod:`.grid`, so a run two studies name is trained once. Their command
lines are in :mod:`iwm.commands.studies`."""
