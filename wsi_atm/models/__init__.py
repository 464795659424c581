"""The model layer: cards (``card``, ``registry``, ``cards/``), networks built from them
(``backbone``, ``nets``, ``adapters``, ``hub``, ``package_weights``), their weight files
(``weight_files``, ``loading``) and the crops' preprocessing (``preprocess``)."""
