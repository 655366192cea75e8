"""Registered mmsparse models: importing this package registers every method's modules."""
