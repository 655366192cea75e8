"""Pure tensor functions of the methods: torch only, no mm* import, no module state.

Each method's ops live in their own module here and are imported by name
(``from mmsparse.ops.tokens import ...``).
"""
