"""The model registry: one TOML card per model (installed as ``wsi_atm.model_cards``)."""
