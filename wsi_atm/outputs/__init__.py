"""Writers of classify outputs: GeoJSON, CSV, summary JSON, review picture."""
