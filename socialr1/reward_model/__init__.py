"""The SIP content reward model: what it reads (`inputs`), preference pairs (`pairs`), and its
pairwise training (`trainer`, run by `train.py reward-model`)."""
