"""The phantom study (`python -m syncas_jax.study`): does the contrastive loss help, at a fixed budget?"""
