"""`python -m syncas_jax.preprocess`: the data stage's CLI under the name the README uses.

Same as `python -m syncas_jax.data` (`syncas_jax/data/__main__.py`).
"""

import runpy

if __name__ == "__main__":
    runpy.run_module("syncas_jax.data", run_name="__main__", alter_sys=True)
