"""Longitudinal datasets and bundled real pharmacokinetic data (see ``SOURCES.md``)."""

from .glucose import load_glucose_sim
from .longitudinal import LongitudinalDataset, Subject, load_indometh, load_phenobarb, load_theoph, read_csv

__all__ = ["LongitudinalDataset", "Subject", "load_theoph", "load_indometh", "load_phenobarb", "read_csv", "load_glucose_sim"]
