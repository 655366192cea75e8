"""The GPU evidence kit: prepare.sh (here), run.sh (on the GPU machine), bench.py."""
