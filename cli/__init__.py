"""The ``fitgate`` command line (cli.main): fine-tune, export, and manage registered models from a shell."""
