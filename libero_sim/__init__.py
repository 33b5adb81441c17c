"""LIBERO on CPU or GPU for WorldVLA: headless set-up and the evaluation protocol (`env`), a
scripted privileged-state expert (`expert`), and LIBERO-format HDF5 demonstrations (`demos`).

Importing this package configures LIBERO and the OpenGL back end before robosuite is imported.
"""

from . import env  # noqa: F401  (runs the set-up at import)
