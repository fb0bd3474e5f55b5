import os
import sys
import pathlib

# Tests run on the CPU, deterministically, whatever machine they are on.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
