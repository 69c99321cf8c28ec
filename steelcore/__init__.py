"""Contracts shared by producers, workers, dashboard and training.

Kept small on purpose: settings, Severstal conventions, the frame message, RLE,
the Kaggle CSV format, the database schema and the networks. Nothing here starts
a service or talks to one.
"""
