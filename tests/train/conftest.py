"""Lets the trainer tests import their tiny models (tests/ has no packages)."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
