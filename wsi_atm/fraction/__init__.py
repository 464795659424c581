"""The slide's atypical fraction: intervals (``stats``) and the estimators the card chooses
(``estimators``: raw share, Rogan–Gladen, Platt-calibrated mean)."""
