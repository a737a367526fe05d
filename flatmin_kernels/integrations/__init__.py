"""Trainer integrations for SAM, GAM and NSO (each module's docstring has its recipe).

* ``flatmin_kernels.integrations.hf``: ``FlatminTrainer``, a Hugging Face ``Trainer`` (needs
  ``transformers`` and ``accelerate``).
* ``flatmin_kernels.integrations.lightning``: ``FlatminPrecision`` (16-mixed) and
  ``FlatminCallback`` (checks at fit start) for Lightning (needs ``lightning``).

Nothing is imported here, so ``import flatmin_kernels`` never pulls in a trainer library.
"""
