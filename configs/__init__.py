"""The YAML presets (one folder per stage) and small CLIP model JSONs, installed as package data."""
