"""ASA-CT's ML core: CT input, data sets, ASA pretraining (and later finetuning and inference).

Nothing here knows about web code: worker/ and backend/ call into this package.
"""

__version__ = "0.1.0"
