"""Masking: which output columns derive from sensitive ones (lineage), maskers, and value detectors."""
