"""The experiments' configs: one file per family, `get_config(preset)`, importing nothing heavy."""

import importlib
import importlib.util
import pathlib

CONFIGS = pathlib.Path(__file__).resolve().parent


def config_module(path: pathlib.Path):
    """A config file as a module: experiments.configs.NAME when it is one of ours, else loaded
    from its path (a user's own config file)."""
    path = pathlib.Path(path).resolve()
    if path.parent == CONFIGS:
        return importlib.import_module(f"experiments.configs.{path.stem}")
    spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
