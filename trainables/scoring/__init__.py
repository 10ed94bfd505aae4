"""How a defended model is scored: robust accuracy per attack and group, intervals and paired
statistics, the gradient-masking checklist, and the final evaluation on the test split.

Imports from `attacks`, `defense` and `setting`."""
