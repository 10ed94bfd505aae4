"""The setting a recipe is trained and scored in: data sets, the checked setup (data facts,
architecture, threat model, attacks that can run there) and what every trial shares (data,
teacher, target, transfer sets).

Imports from `attacks` and `defense`; never from `scoring`."""
