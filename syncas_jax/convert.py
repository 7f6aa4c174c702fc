"""`python -m syncas_jax.convert`: the reference-checkpoint converter under the name the README uses.

Same as `python -m syncas_jax.nets` (`syncas_jax/nets/__main__.py`).
"""

import runpy

if __name__ == "__main__":
    runpy.run_module("syncas_jax.nets", run_name="__main__", alter_sys=True)
