"""The embedded demo: simulator, phantoms, bundled structures and scoring against the truth.

Production code never imports this package."""
