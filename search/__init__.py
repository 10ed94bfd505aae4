"""The distributed search driver: `python -m search.run --space mid`.

Depends on `spaces` and `trainables`; never imported by them.
"""
