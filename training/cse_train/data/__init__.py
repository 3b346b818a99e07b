"""Datasets: synthetic RGB-D videos, Wild6D, REAL275."""
