"""A slide's outputs: where they go and what would stop them (:mod:`~wsi_atm.outputs.paths`),
writing them all or none (:mod:`~wsi_atm.outputs.write`), and one writer per format: GeoJSON,
CSV, summary JSON, review picture, points JSON."""
