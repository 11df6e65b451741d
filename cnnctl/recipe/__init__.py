"""The recipe of a run: what to train and how, as data — never the code that builds or runs it.

``options`` declares every option once; ``config`` is TrainConfig (the resolved options, what config.json
holds); ``config_file`` reads ``--config`` files; ``resume`` holds the rules that read a saved run's document;
``class_weights`` parses a ``--class-weights`` file; ``optimizers``, ``schedules`` and ``loggers`` are registries
of entries (name, defaults, description, builder reference) that the engine reads. Nothing here imports the
engine, data, models, checkpoint or cli, and every cnnctl import sits at the top of its module.
"""
