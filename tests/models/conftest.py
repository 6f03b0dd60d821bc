"""Lets the model tests (and tests/test_generate.py) import hf_tiny (tests/ has no packages)."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
