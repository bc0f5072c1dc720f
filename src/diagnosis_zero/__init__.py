"""Diagnosis-Zero: R1-Zero style reinforcement learning for rare-disease diagnosis.

This module is imported by verl's custom-reward loader, by threads, and by the CLI, so it
must stay light: absolute imports only and nothing heavy (torch, transformers) at import time.
"""

__version__ = "0.1.0"
