"""Registered hooks, optimizer-wrapper constructors and loops: importing registers them."""
